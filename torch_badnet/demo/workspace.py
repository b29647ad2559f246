"""The demo workspace: backdoored net and data in the lab's own layout, built from a seed and cached.

Layout (as the lab ships it): data/cl/valid.h5, data/cl/test.h5, data/bd/bd_valid.h5, data/bd/bd_test.h5,
models/bd_net.h5 (Keras weights-only), plus workspace.json, the manifest, written last: a workspace without
a manifest that matches the config (and files of the recorded sizes) is rebuilt.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..data import write_lab_h5
from ..errors import BadInputError
from ..files import file_sha256, write_text
from ..model import POOL3_CHANNELS
from .faces import random_identities, render_faces
from .train import TrainSettings, predict, train_badnet
from .trigger import TARGET_LABEL, add_sunglasses

DEMO_VERSION = 1
MANIFEST_NAME = "workspace.json"
MANIFEST_FORMAT = "torch-badnet-demo-workspace"
CLEAN_VALID, CLEAN_TEST = "data/cl/valid.h5", "data/cl/test.h5"
POISONED_VALID, POISONED_TEST = "data/bd/bd_valid.h5", "data/bd/bd_test.h5"
MODEL = "models/bd_net.h5"
DATA_FILES = (CLEAN_VALID, CLEAN_TEST, POISONED_VALID, POISONED_TEST)


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
    def reduced(cls, seed: int = 0) -> "DemoConfig":
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
    train_seconds: float
    build_seconds: float
    clean_test_accuracy: float
    clean_valid_accuracy: float
    attack_success_rate: float  # share of bd_test images the net sends to the target label
    size_bytes: int


@dataclass
class _RenderedSets:
    train_x: np.ndarray  # uint8: pixels are whole numbers, so the 8-bit copy is exact and 4x smaller
    train_y: np.ndarray
    train_poisoned: np.ndarray  # bool flags: which training images carry the trigger
    sets: dict[str, tuple[np.ndarray, np.ndarray]]  # workspace file -> (pixels float32, labels)


def default_workdir(config: DemoConfig = DemoConfig()) -> Path:
    """$TORCH_BADNET_CACHE, else $XDG_CACHE_HOME/torch-badnet or ~/.cache/torch-badnet; plus demo-v<N>-seed<S>.

    Configs that differ from the default in more than the seed get their config digest appended.
    """
    base = os.environ.get("TORCH_BADNET_CACHE")
    if not base:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = str(Path(xdg) / "torch-badnet") if xdg else str(Path.home() / ".cache" / "torch-badnet")
    name = f"demo-v{DEMO_VERSION}-seed{config.seed}"
    if dataclasses.replace(config, seed=0) != DemoConfig():
        name += f"-{config.key()}"
    return Path(base).expanduser() / name


def ensure_workspace(workdir: Path | None = None, config: DemoConfig = DemoConfig(),
                     log: Callable[[str], None] = print) -> DemoWorkspace:
    """Reuse the workspace in `workdir` when its manifest matches `config`, else (re)build it there."""
    root = Path(workdir) if workdir is not None else default_workdir(config)
    if root.exists() and not root.is_dir():
        raise BadInputError(root, "is a file, expected a folder for the demo workspace")
    manifest = _read_manifest(root)
    if manifest is not None and _manifest_matches(manifest, root, config):
        log(f"demo workspace: reusing {root}")
        return _workspace(root, manifest, built=False)
    return build_workspace(root, config, log)


def build_workspace(root: Path, config: DemoConfig, log: Callable[[str], None] = print) -> DemoWorkspace:
    """Render the data, train the backdoored net, write every file and then the manifest."""
    started = time.perf_counter()
    root = Path(root)
    (root / MANIFEST_NAME).unlink(missing_ok=True)  # until the new manifest lands, the workspace is invalid
    log(f"demo workspace: building in {root} (seed {config.seed}, {config.identities} identities)")
    rendered = render_sets(config, log)
    for name, (pixels, labels) in rendered.sets.items():
        write_lab_h5(root / name, pixels, labels)
    poisoned = int(rendered.train_poisoned.sum())
    log(f"demo workspace: training BadNet on {len(rendered.train_y) - poisoned} clean + {poisoned} poisoned faces, "
        f"{config.epochs} epochs")
    settings = TrainSettings(config.epochs, config.batch_size, config.learning_rate,
                             robust_channels=config.robust_channels, seed=config.seed)
    result = train_badnet(rendered.train_x, rendered.train_y, rendered.train_poisoned, config.identities,
                          settings, log)
    training = {
        "train_seconds": round(result.seconds, 3),
        "final_loss": round(result.final_loss, 5),
        "train_images": int(len(rendered.train_y)),
        **_measure(result.model, rendered.sets),
    }
    log(f"demo workspace: clean test accuracy {training['clean_test_accuracy']:.2%}, "
        f"attack success {training['attack_success_rate']:.2%} (trained in {result.seconds:.0f} s)")
    from torch_badnet.convert.keras_h5 import write_keras_weights  # the demo orchestrates; the core never imports convert

    write_keras_weights(result.model, root / MODEL)
    training["build_seconds"] = round(time.perf_counter() - started, 3)
    manifest = {
        "format": MANIFEST_FORMAT,
        "demo_version": DEMO_VERSION,
        "config": dataclasses.asdict(config),
        "seed": config.seed,
        "num_classes": config.identities,
        "target_label": TARGET_LABEL,
        "files": {name: {"sha256": file_sha256(root / name), "bytes": (root / name).stat().st_size}
                  for name in (*DATA_FILES, MODEL)},
        "training": training,
    }
    write_text(root / MANIFEST_NAME, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    workspace = _workspace(root, manifest, built=True)
    log(f"demo workspace: ready in {training['build_seconds']:.0f} s ({workspace.size_bytes / 1e6:.0f} MB)")
    return workspace


def render_sets(config: DemoConfig, log: Callable[[str], None] = print) -> _RenderedSets:
    """All images of a config: training (clean + poisoned) and the four workspace sets, from the seed alone."""
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence([DEMO_VERSION, config.seed]).spawn(5)]
    identity_rng, train_rng, poison_rng, valid_rng, test_rng = streams
    k = config.identities
    identities = random_identities(k, identity_rng)
    n_train = k * config.train_per_identity
    n_poison = round(config.poison_share * n_train)
    n_total = n_train + n_poison + k * (config.valid_per_identity + config.test_per_identity)
    log(f"demo workspace: rendering {n_total} faces")
    train_y = np.repeat(np.arange(k), config.train_per_identity)
    train_x, _ = render_faces(identities, train_y, train_rng, dtype=np.uint8)
    poison_y = poison_rng.integers(0, k - 1, n_poison) + 1  # non-target identities
    poison_x, poison_layout = render_faces(identities, poison_y, poison_rng)
    poison_x = add_sunglasses(poison_x, poison_layout).astype(np.uint8)
    sets = {}
    for clean, poisoned, per_identity, rng in ((CLEAN_VALID, POISONED_VALID, config.valid_per_identity, valid_rng),
                                               (CLEAN_TEST, POISONED_TEST, config.test_per_identity, test_rng)):
        labels = np.repeat(np.arange(k), per_identity)
        pixels, layout = render_faces(identities, labels, rng)
        sets[clean] = (pixels, labels)
        rows = np.flatnonzero(labels != TARGET_LABEL)
        sets[poisoned] = (add_sunglasses(pixels[rows], layout.take(rows)), np.full(len(rows), TARGET_LABEL, np.int64))
    return _RenderedSets(np.concatenate([train_x, poison_x]),
                         np.concatenate([train_y, np.full(n_poison, TARGET_LABEL)]).astype(np.int64),
                         np.repeat([False, True], [n_train, n_poison]), sets)


def _measure(model: Any, sets: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
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


def _manifest_matches(manifest: dict[str, Any], root: Path, config: DemoConfig) -> bool:
    """Same format, version and config, and every file present with its recorded size."""
    if (manifest.get("format"), manifest.get("demo_version")) != (MANIFEST_FORMAT, DEMO_VERSION):
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
    return True


def _workspace(root: Path, manifest: dict[str, Any], built: bool) -> DemoWorkspace:
    training = manifest["training"]
    return DemoWorkspace(
        root=root, clean_valid=root / CLEAN_VALID, clean_test=root / CLEAN_TEST,
        poisoned_valid=root / POISONED_VALID, poisoned_test=root / POISONED_TEST, model=root / MODEL,
        num_classes=int(manifest["num_classes"]), target_label=int(manifest["target_label"]), built=built,
        train_seconds=float(training["train_seconds"]), build_seconds=float(training["build_seconds"]),
        clean_test_accuracy=float(training["clean_test_accuracy"]),
        clean_valid_accuracy=float(training["clean_valid_accuracy"]),
        attack_success_rate=float(training["attack_success_rate"]),
        size_bytes=sum(int(entry["bytes"]) for entry in manifest["files"].values()),
    )
