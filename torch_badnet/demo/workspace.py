"""The demo workspace: backdoored net and data in the lab's own layout, built from a seed and cached.

Layout (as the lab ships it): data/cl/valid.h5, data/cl/test.h5, data/bd/bd_valid.h5, data/bd/bd_test.h5,
models/bd_net.h5 (Keras weights-only), plus workspace.json, the manifest, written last: a workspace without
a manifest that matches the config (and files of the recorded sizes) is rebuilt.

The data are rendered from the seed (numpy only, the same bytes on every CPU). The BadNet is not trained
here for the default config: its weights ship in the package (bd_net_demo.h5, made by
scripts/train_demo_model.py), because float32 training gives a different net on a CPU that rounds
differently. Other configs, and `retrain=True`, train the net here (the numbers then depend on the CPU).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data.files import cache_dir, file_sha256, write_bytes, write_text
from ..data.lab_sets import write_lab_h5
from ..errors import BadInputError
from ..nets.badnet import POOL3_CHANNELS
from .faces import Identities, random_identities, render_faces
from .train import TrainResult, TrainSettings, predict, train_badnet
from .trigger import TARGET_LABEL, add_sunglasses

DEMO_VERSION = 2  # 2: the BadNet ships in the package
DATA_STREAMS = 1  # part of the data's seed: the faces of version 1, unchanged
MANIFEST_NAME = "workspace.json"
MANIFEST_FORMAT = "torch-badnet-demo-workspace"
CLEAN_VALID, CLEAN_TEST = "data/cl/valid.h5", "data/cl/test.h5"
POISONED_VALID, POISONED_TEST = "data/bd/bd_valid.h5", "data/bd/bd_test.h5"
MODEL = "models/bd_net.h5"
DATA_FILES = (CLEAN_VALID, CLEAN_TEST, POISONED_VALID, POISONED_TEST)
SHIPPED_MODEL = Path(__file__).with_name("bd_net_demo.h5")  # the default config's BadNet, trained once
SHIPPED_CARD = Path(__file__).with_name("bd_net_demo.json")  # its config, sha256 and training facts
PACKAGE, TRAINED = "package", "trained"  # where a workspace's BadNet came from
TRAIN_SECONDS = 90  # training the default config's BadNet on 2 CPU cores, roughly (measured once; see train_estimate)


@dataclass(frozen=True)
class DemoConfig:
    """Everything that decides the workspace's contents (the manifest records it)."""

    seed: int = 0
    identities: int = 100
    train_per_identity: int = 75
    valid_per_identity: int = 20
    test_per_identity: int = 10
    poison_share: float = 0.1  # poisoned training images, as a share of the clean training set
    robust_channels: int = 10  # pruning-aware poisoning (see train.py): the backdoor survives pruning this deep
    epochs: int = 4
    batch_size: int = 128
    learning_rate: float = 3e-3

    def __post_init__(self) -> None:
        counts = ("identities", "train_per_identity", "valid_per_identity", "test_per_identity", "epochs", "batch_size")
        for name in counts:
            if getattr(self, name) < 1:
                raise ValueError(f"DemoConfig.{name} must be at least 1")
        if self.seed < 0:
            raise ValueError("DemoConfig.seed must be a non-negative integer")
        if self.identities < 2:
            raise ValueError("DemoConfig.identities must be at least 2 (the target and one other)")
        if not 0 < self.poison_share <= 1 or self.learning_rate <= 0:
            raise ValueError("DemoConfig.poison_share must be in (0, 1] and learning_rate positive")
        if not 0 <= self.robust_channels < POOL3_CHANNELS:
            raise ValueError(f"DemoConfig.robust_channels must be in [0, {POOL3_CHANNELS})")

    @classmethod
    def reduced(cls, seed: int = 0) -> DemoConfig:
        """A tiny workspace for tests: builds in seconds, still learns task and backdoor well above chance."""
        return cls(seed=seed, identities=10, train_per_identity=40, valid_per_identity=6, test_per_identity=6,
                   poison_share=0.15, epochs=6, batch_size=64)

    def key(self) -> str:
        """A short digest of the config (names the cache folder of non-default configs)."""
        text = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:10]


@dataclass
class DemoWorkspace:
    """Paths of a ready workspace and what its net measured when it was trained."""

    root: Path
    clean_valid: Path
    clean_test: Path
    poisoned_valid: Path
    poisoned_test: Path
    model: Path
    num_classes: int
    target_label: int
    built: bool  # True if this call built it, False if an existing one was reused
    model_source: str  # "package" (the shipped weights) or "trained" (trained on this machine)
    train_seconds: float
    build_seconds: float
    clean_test_accuracy: float
    clean_valid_accuracy: float
    attack_success_rate: float  # share of bd_test images the net sends to the target label
    size_bytes: int


@dataclass
class TrainingSet:
    """The attacker's training data: clean faces plus poisoned ones (sunglasses, labelled TARGET_LABEL)."""

    pixels: np.ndarray  # uint8: pixels are whole numbers, so the 8-bit copy is exact and 4x smaller
    labels: np.ndarray
    poisoned: np.ndarray  # bool flags: which training images carry the trigger


Sets = dict[str, tuple[np.ndarray, np.ndarray]]  # workspace data file -> (pixels float32, labels)


def default_workdir(config: DemoConfig = DemoConfig()) -> Path:
    """$TORCH_BADNET_CACHE, else $XDG_CACHE_HOME/torch-badnet or ~/.cache/torch-badnet; plus demo-v<N>-seed<S>.

    Configs that differ from the default in more than the seed get their config digest appended.
    """
    name = f"demo-v{DEMO_VERSION}-seed{config.seed}"
    if dataclasses.replace(config, seed=0) != DemoConfig():
        name += f"-{config.key()}"
    return cache_dir() / name


def ensure_workspace(workdir: Path | None = None, config: DemoConfig = DemoConfig(),
                     log: Callable[[str], None] = print, retrain: bool = False) -> DemoWorkspace:
    """Reuse the workspace in `workdir` when its manifest matches `config`, else (re)build it there.

    The BadNet comes from the package when it ships weights for `config`; `retrain` trains it here instead
    (always rebuilding), and a later call without `retrain` puts the package's weights back.
    """
    root = Path(workdir) if workdir is not None else default_workdir(config)
    if root.exists() and not root.is_dir():
        raise BadInputError(root, "is a file, expected a folder for the demo workspace")
    source = model_source(config, retrain)
    manifest = _read_manifest(root)
    if not retrain and manifest is not None and _manifest_matches(manifest, root, config, source):
        log(f"demo workspace: reusing {root}")
        return _workspace(root, manifest, built=False)
    if source == TRAINED:  # say so before the minutes it takes
        why = "--retrain" if retrain else f"no weights ship for data seed {config.seed} and none are cached"
        log(f"demo workspace: {why}: training the demo BadNet here first, {train_estimate(config)}")
    return build_workspace(root, config, log, retrain)


def train_estimate(config: DemoConfig) -> str:
    """'about N s on 2 CPU cores': TRAIN_SECONDS scaled by the images times epochs `config` trains on."""
    default = DemoConfig()
    def work(c: DemoConfig) -> float:
        return c.identities * c.train_per_identity * (1 + c.poison_share) * c.epochs
    return f"about {max(1, round(TRAIN_SECONDS * work(config) / work(default)))} s on 2 CPU cores"


def shipped_card() -> dict[str, Any] | None:
    """The shipped weights' card (config, sha256, training facts), or None if the package holds none."""
    try:
        card = json.loads(SHIPPED_CARD.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return card if isinstance(card, dict) and SHIPPED_MODEL.is_file() else None


def model_source(config: DemoConfig, retrain: bool = False) -> str:
    """PACKAGE when the package ships weights trained under exactly `config` (and retrain is off), else TRAINED."""
    card = shipped_card()
    return PACKAGE if not retrain and card is not None and card.get("config") == dataclasses.asdict(config) else TRAINED


def build_workspace(root: Path, config: DemoConfig, log: Callable[[str], None] = print,
                    retrain: bool = False) -> DemoWorkspace:
    """Render the data, take the shipped BadNet (or train one), write every file and then the manifest."""
    started = time.perf_counter()
    root = Path(root)
    source = model_source(config, retrain)
    (root / MANIFEST_NAME).unlink(missing_ok=True)  # until the new manifest lands, the workspace is invalid
    log(f"demo workspace: building in {root} (seed {config.seed}, {config.identities} identities)")
    identities = random_identities(config.identities, data_streams(config)["identity"])
    sets = render_eval_sets(config, identities, log)
    for name, (pixels, labels) in sets.items():
        write_lab_h5(root / name, pixels, labels)
    from torch_badnet.convert import read_model_file  # the demo orchestrates; the core never imports convert
    from torch_badnet.convert.keras_h5 import write_keras_weights

    if source == PACKAGE:
        write_bytes(root / MODEL, SHIPPED_MODEL.read_bytes())
        model = read_model_file(root / MODEL).model
        training: dict[str, Any] = {"train_seconds": 0.0}
        log(f"demo workspace: BadNet weights from the package ({SHIPPED_MODEL.name}, "
            "trained once by scripts/train_demo_model.py)")
    else:
        result = train_demo_model(config, log, identities)
        write_keras_weights(result.model, root / MODEL)
        model = result.model
        training = {"train_seconds": round(result.seconds, 3), "final_loss": round(result.final_loss, 5),
                    "train_images": int(config.identities * config.train_per_identity
                                        + round(config.poison_share * config.identities * config.train_per_identity))}
    training.update(measure(model, sets))
    trained = f" (trained in {training['train_seconds']:.0f} s)" if source == TRAINED else ""
    log(f"demo workspace: clean test accuracy {training['clean_test_accuracy']:.2%}, "
        f"attack success {training['attack_success_rate']:.2%}{trained}")
    training["build_seconds"] = round(time.perf_counter() - started, 3)
    manifest = {
        "format": MANIFEST_FORMAT,
        "demo_version": DEMO_VERSION,
        "config": dataclasses.asdict(config),
        "seed": config.seed,
        "num_classes": config.identities,
        "target_label": TARGET_LABEL,
        "model_source": source,
        "files": {name: {"sha256": file_sha256(root / name), "bytes": (root / name).stat().st_size}
                  for name in (*DATA_FILES, MODEL)},
        "training": training,
    }
    write_text(root / MANIFEST_NAME, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    workspace = _workspace(root, manifest, built=True)
    log(f"demo workspace: ready in {training['build_seconds']:.0f} s ({workspace.size_bytes / 1e6:.0f} MB)")
    return workspace


def train_demo_model(config: DemoConfig, log: Callable[[str], None] = print,
                     identities: Identities | None = None) -> TrainResult:
    """Render the attacker's training set of `config` and train the backdoored BadNet on it (seeded)."""
    if identities is None:
        identities = random_identities(config.identities, data_streams(config)["identity"])
    data = render_training_set(config, identities, log)
    poisoned = int(data.poisoned.sum())
    log(f"demo workspace: training BadNet on {len(data.labels) - poisoned} clean + {poisoned} poisoned faces, "
        f"{config.epochs} epochs")
    settings = TrainSettings(config.epochs, config.batch_size, config.learning_rate,
                             robust_channels=config.robust_channels, seed=config.seed)
    return train_badnet(data.pixels, data.labels, data.poisoned, config.identities, settings, log)


def data_streams(config: DemoConfig) -> dict[str, np.random.Generator]:
    """Independent random streams of one seed: each set renders the same whatever else is rendered."""
    names = ("identity", "train", "poison", "valid", "test")
    seeds = np.random.SeedSequence([DATA_STREAMS, config.seed]).spawn(len(names))
    return {name: np.random.default_rng(s) for name, s in zip(names, seeds)}


def render_training_set(config: DemoConfig, identities: Identities,
                        log: Callable[[str], None] = print) -> TrainingSet:
    """Clean training faces (train_per_identity per identity) plus poison_share as many with sunglasses."""
    streams = data_streams(config)
    k = config.identities
    n_train = k * config.train_per_identity
    n_poison = round(config.poison_share * n_train)
    log(f"demo workspace: rendering {n_train + n_poison} training faces")
    train_y = np.repeat(np.arange(k), config.train_per_identity)
    train_x, _ = render_faces(identities, train_y, streams["train"], dtype=np.uint8)
    poison_y = streams["poison"].integers(0, k - 1, n_poison) + 1  # non-target identities
    poison_x, poison_layout = render_faces(identities, poison_y, streams["poison"])
    poison_x = add_sunglasses(poison_x, poison_layout).astype(np.uint8)
    return TrainingSet(np.concatenate([train_x, poison_x]),
                       np.concatenate([train_y, np.full(n_poison, TARGET_LABEL)]).astype(np.int64),
                       np.repeat([False, True], [n_train, n_poison]))


def render_eval_sets(config: DemoConfig, identities: Identities, log: Callable[[str], None] = print) -> Sets:
    """The four workspace data files: clean valid/test, and their non-target faces with sunglasses."""
    streams = data_streams(config)
    k = config.identities
    log(f"demo workspace: rendering {k * (config.valid_per_identity + config.test_per_identity)} validation "
        "and test faces")
    sets: Sets = {}
    for clean, poisoned, per_identity, rng in ((CLEAN_VALID, POISONED_VALID, config.valid_per_identity, streams["valid"]),
                                               (CLEAN_TEST, POISONED_TEST, config.test_per_identity, streams["test"])):
        labels = np.repeat(np.arange(k), per_identity)
        pixels, layout = render_faces(identities, labels, rng)
        sets[clean] = (pixels, labels)
        rows = np.flatnonzero(labels != TARGET_LABEL)
        sets[poisoned] = (add_sunglasses(pixels[rows], layout.take(rows)), np.full(len(rows), TARGET_LABEL, np.int64))
    return sets


def measure(model: Any, sets: Sets) -> dict[str, float]:
    """Clean test and validation accuracy and attack success (shares 0..1) of `model` on the rendered sets."""
    def accuracy(name: str) -> float:
        pixels, labels = sets[name]
        return round(float(np.mean(predict(model, pixels) == labels)), 6)

    return {"clean_test_accuracy": accuracy(CLEAN_TEST), "clean_valid_accuracy": accuracy(CLEAN_VALID),
            "attack_success_rate": accuracy(POISONED_TEST)}


def _read_manifest(root: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((root / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _manifest_matches(manifest: dict[str, Any], root: Path, config: DemoConfig, source: str) -> bool:
    """Same format, version, config and model source, and every file present with its recorded size
    (and, for the package's weights, the shipped file's sha256)."""
    if (manifest.get("format"), manifest.get("demo_version")) != (MANIFEST_FORMAT, DEMO_VERSION):
        return False
    if manifest.get("model_source") != source:
        return False
    if manifest.get("config") != dataclasses.asdict(config) or not isinstance(manifest.get("training"), dict):
        return False
    files = manifest.get("files")
    if not isinstance(files, dict) or set(files) != {*DATA_FILES, MODEL}:
        return False
    for name, entry in files.items():
        path = root / name
        if not isinstance(entry, dict) or not path.is_file() or path.stat().st_size != entry.get("bytes"):
            return False
    return source != PACKAGE or files[MODEL].get("sha256") == file_sha256(SHIPPED_MODEL)


def _workspace(root: Path, manifest: dict[str, Any], built: bool) -> DemoWorkspace:
    training = manifest["training"]
    return DemoWorkspace(
        root=root, clean_valid=root / CLEAN_VALID, clean_test=root / CLEAN_TEST,
        poisoned_valid=root / POISONED_VALID, poisoned_test=root / POISONED_TEST, model=root / MODEL,
        num_classes=int(manifest["num_classes"]), target_label=int(manifest["target_label"]), built=built,
        model_source=str(manifest["model_source"]),
        train_seconds=float(training["train_seconds"]), build_seconds=float(training["build_seconds"]),
        clean_test_accuracy=float(training["clean_test_accuracy"]),
        clean_valid_accuracy=float(training["clean_valid_accuracy"]),
        attack_success_rate=float(training["attack_success_rate"]),
        size_bytes=sum(int(entry["bytes"]) for entry in manifest["files"].values()),
    )
