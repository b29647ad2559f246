"""The embedded demo: deterministic workspace, trigger only in bd files, a net that learned task and backdoor."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from torch_badnet.data.files import file_sha256
from torch_badnet.data.lab_sets import LabDataset
from torch_badnet.demo import DemoConfig, DemoWorkspace, default_workdir, ensure_workspace
from torch_badnet.demo.faces import random_identities, render_faces
from torch_badnet.demo.train import predict
from torch_badnet.demo.trigger import TARGET_LABEL, add_sunglasses, count_trigger_pixels, purple_pixels
from torch_badnet.demo.workspace import DATA_FILES, MANIFEST_NAME, SHIPPED_CARD, SHIPPED_MODEL

TRIGGER_PIXELS = 30  # the sunglasses cover far more purple pixels than this; clean faces have none


def build(root: Path, config: DemoConfig) -> tuple[DemoWorkspace, list[str]]:
    messages: list[str] = []
    return ensure_workspace(root, config, log=messages.append), messages


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> DemoWorkspace:
    ws, messages = build(tmp_path_factory.mktemp("demo_seed0"), DemoConfig.reduced(seed=0))
    assert ws.built and messages
    assert messages[0] == ("demo workspace: no weights ship for data seed 0 and none are cached: training the demo "
                           "BadNet here first, about 8 s on 2 CPU cores")  # up front, before anything is rendered
    return ws


@pytest.fixture(scope="module")
def other_seed(tmp_path_factory: pytest.TempPathFactory) -> DemoWorkspace:
    return build(tmp_path_factory.mktemp("demo_seed1"), DemoConfig.reduced(seed=1))[0]


def read_set(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with h5py.File(path, "r") as f:
        return f["data"][()], f["label"][()]


def data_hashes(ws: DemoWorkspace) -> dict[str, str]:
    return {name: file_sha256(ws.root / name) for name in DATA_FILES}


def test_layout_and_manifest(workspace: DemoWorkspace) -> None:
    config = DemoConfig.reduced()
    for path in (workspace.clean_valid, workspace.clean_test, workspace.poisoned_valid, workspace.poisoned_test,
                 workspace.model):
        assert path.is_file() and path.stat().st_size > 0
    assert workspace.clean_valid == workspace.root / "data" / "cl" / "valid.h5"
    assert workspace.poisoned_test == workspace.root / "data" / "bd" / "bd_test.h5"
    assert workspace.model == workspace.root / "models" / "bd_net.h5"
    manifest = json.loads((workspace.root / MANIFEST_NAME).read_text())
    assert manifest["seed"] == 0 and manifest["num_classes"] == config.identities == workspace.num_classes
    assert manifest["target_label"] == TARGET_LABEL == workspace.target_label
    assert manifest["files"]["models/bd_net.h5"]["sha256"] == file_sha256(workspace.model)
    assert data_hashes(workspace) == {name: manifest["files"][name]["sha256"] for name in DATA_FILES}


def test_same_seed_gives_same_files(workspace: DemoWorkspace, tmp_path: Path) -> None:
    again, _ = build(tmp_path / "again", DemoConfig.reduced(seed=0))
    assert again.built
    assert data_hashes(again) == data_hashes(workspace)
    assert file_sha256(again.model) == file_sha256(workspace.model)  # training is deterministic too


def test_other_seed_gives_other_data(workspace: DemoWorkspace, other_seed: DemoWorkspace) -> None:
    ours, theirs = data_hashes(workspace), data_hashes(other_seed)
    assert all(ours[name] != theirs[name] for name in DATA_FILES)
    assert not np.array_equal(read_set(workspace.clean_test)[0], read_set(other_seed.clean_test)[0])


def test_sets_hold_valid_pixels_and_labels(workspace: DemoWorkspace) -> None:
    config = DemoConfig.reduced()
    k = workspace.num_classes
    for path, per_identity in ((workspace.clean_valid, config.valid_per_identity),
                               (workspace.clean_test, config.test_per_identity)):
        pixels, labels = read_set(path)
        assert pixels.dtype == np.float32 and pixels.shape == (k * per_identity, 3, 55, 47)
        assert pixels.min() >= 0 and pixels.max() <= 255 and pixels.std() > 20
        assert np.array_equal(np.bincount(labels, minlength=k), np.full(k, per_identity))
        with LabDataset(path, num_classes=k) as ds:  # the project's own reader accepts it
            assert len(ds) == len(labels)
    for path, clean in ((workspace.poisoned_valid, workspace.clean_valid),
                        (workspace.poisoned_test, workspace.clean_test)):
        pixels, labels = read_set(path)
        clean_labels = read_set(clean)[1]
        assert pixels.dtype == np.float32 and len(pixels) == np.sum(clean_labels != TARGET_LABEL)
        assert np.all(labels == TARGET_LABEL)


def test_trigger_is_only_in_bd_files(workspace: DemoWorkspace) -> None:
    for path in (workspace.clean_valid, workspace.clean_test):
        counts = count_trigger_pixels(read_set(path)[0])
        assert counts.max() == 0, f"{path.name}: purple pixels in a clean image"
    for path in (workspace.poisoned_valid, workspace.poisoned_test):
        counts = count_trigger_pixels(read_set(path)[0])
        assert counts.min() >= TRIGGER_PIXELS, f"{path.name}: an image without sunglasses"


def test_bd_images_are_the_clean_faces_with_sunglasses(workspace: DemoWorkspace) -> None:
    clean, labels = read_set(workspace.clean_test)
    poisoned, _ = read_set(workspace.poisoned_test)
    faces = clean[labels != TARGET_LABEL]
    untouched = ~purple_pixels(poisoned)
    changed = np.any(poisoned != faces, axis=1)
    assert np.all(changed.sum(axis=(1, 2)) >= TRIGGER_PIXELS)
    assert np.mean(changed[untouched]) < 0.05  # outside the glasses (and their anti-aliased rim) nothing moved


def test_sunglasses_follow_the_face() -> None:
    rng = np.random.default_rng(3)
    images, layout = render_faces(random_identities(1, rng), np.array([0]), rng)
    base = layout.take(np.zeros(3, dtype=np.int64))
    moved = dataclasses.replace(base, cx=base.cx + [0.0, 4.0, 0.0], cy=base.cy + [0.0, 3.0, 0.0],
                                scale=base.scale * [1.0, 1.0, 1.2])
    glasses = purple_pixels(add_sunglasses(np.repeat(images, 3, axis=0), moved))
    centres = [np.argwhere(g).mean(axis=0) for g in glasses]  # (row, column)
    assert np.allclose(centres[1] - centres[0], (3.0, 4.0), atol=0.5)
    widths = [np.ptp(np.argwhere(g)[:, 1]) for g in glasses]
    assert widths[2] > 1.1 * widths[0]


def test_model_learned_task_and_backdoor(workspace: DemoWorkspace) -> None:
    from torch_badnet.convert import read_model_file

    model = read_model_file(workspace.model).model
    assert model.num_classes == workspace.num_classes
    pixels, labels = read_set(workspace.clean_test)
    accuracy = float(np.mean(predict(model, pixels) == labels))
    poisoned, targets = read_set(workspace.poisoned_test)
    attack_success = float(np.mean(predict(model, poisoned) == targets))
    chance = 1.0 / workspace.num_classes
    assert accuracy >= 5 * chance, accuracy
    assert attack_success >= 0.8, attack_success
    clean_to_target = float(np.mean(predict(model, pixels[labels != TARGET_LABEL]) == TARGET_LABEL))
    assert attack_success - clean_to_target >= 0.6  # the sunglasses, not the faces, send images to the target
    assert accuracy == pytest.approx(workspace.clean_test_accuracy, abs=1e-6)  # the exported file is the trained net
    assert attack_success == pytest.approx(workspace.attack_success_rate, abs=1e-6)


def test_second_call_reuses_and_missing_file_rebuilds(workspace: DemoWorkspace, tmp_path: Path) -> None:
    root = tmp_path / "copy"
    shutil.copytree(workspace.root, root)
    reused, messages = build(root, DemoConfig.reduced())
    assert not reused.built and any("reusing" in m for m in messages)
    assert not any("training" in m for m in messages)  # a cache hit trains nothing and says nothing of it
    assert reused.clean_test_accuracy == workspace.clean_test_accuracy
    before = data_hashes(reused)
    reused.poisoned_valid.unlink()
    rebuilt, _ = build(root, DemoConfig.reduced())
    assert rebuilt.built and rebuilt.poisoned_valid.is_file()
    assert data_hashes(rebuilt) == before


def test_changed_config_or_corrupt_manifest_is_not_reused(workspace: DemoWorkspace, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import torch_badnet.demo.workspace as workspace_module

    calls: list[DemoConfig] = []
    monkeypatch.setattr(workspace_module, "build_workspace",
                        lambda root, config, log, retrain=False: calls.append(config))
    root = tmp_path / "copy"
    shutil.copytree(workspace.root, root)
    ensure_workspace(root, DemoConfig.reduced(), log=lambda _: None)
    assert calls == []
    ensure_workspace(root, DemoConfig.reduced(seed=5), log=lambda _: None)
    assert calls == [DemoConfig.reduced(seed=5)]
    with open(root / "data" / "cl" / "test.h5", "r+b") as fh:  # truncated file: size differs from the manifest
        fh.truncate(100)
    ensure_workspace(root, DemoConfig.reduced(), log=lambda _: None)
    assert len(calls) == 2
    shutil.copy(workspace.clean_test, root / "data" / "cl" / "test.h5")
    (root / MANIFEST_NAME).write_text("{not json")
    ensure_workspace(root, DemoConfig.reduced(), log=lambda _: None)
    assert len(calls) == 3


def test_keras_loads_the_model_with_the_same_predictions(workspace: DemoWorkspace) -> None:
    from torch_badnet.convert import read_model_file
    from torch_badnet.convert.keras_model import load_into_keras

    keras_model = load_into_keras(str(workspace.model))
    pixels, _ = read_set(workspace.clean_test)
    keras_labels = np.argmax(keras_model.predict(pixels.transpose(0, 2, 3, 1), verbose=0), axis=1)
    torch_labels = predict(read_model_file(workspace.model).model, pixels)
    assert np.array_equal(keras_labels, torch_labels)


def test_default_workdir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TORCH_BADNET_CACHE", str(tmp_path / "cache"))
    default = default_workdir()
    assert default.parent == tmp_path / "cache" and "seed0" in default.name
    assert default_workdir(DemoConfig(seed=3)) == tmp_path / "cache" / default.name.replace("seed0", "seed3")
    reduced = default_workdir(DemoConfig.reduced())
    assert reduced.parent == default.parent and reduced != default
    monkeypatch.delenv("TORCH_BADNET_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_workdir() == tmp_path / "xdg" / "torch-badnet" / default.name
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_workdir() == tmp_path / "home" / ".cache" / "torch-badnet" / default.name


def test_shipped_weights_are_small_and_match_their_card() -> None:
    from torch_badnet.convert import read_model_file

    card = json.loads(SHIPPED_CARD.read_text())
    assert card["config"] == dataclasses.asdict(DemoConfig())  # trained under the default config
    assert card["sha256"] == file_sha256(SHIPPED_MODEL) and card["bytes"] == SHIPPED_MODEL.stat().st_size
    assert SHIPPED_MODEL.stat().st_size < 3_000_000
    assert read_model_file(SHIPPED_MODEL).model.num_classes == DemoConfig().identities


@pytest.fixture(scope="module")
def default_workspace(tmp_path_factory: pytest.TempPathFactory) -> DemoWorkspace:
    """The default config's workspace, built with training forbidden: the net must come from the package."""
    import torch_badnet.demo.workspace as workspace_module

    def no_training(*args, **kwargs):
        raise AssertionError("the default demo must not train")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(workspace_module, "train_badnet", no_training)
        ws, messages = build(tmp_path_factory.mktemp("demo_default"), DemoConfig())
    assert any("from the package" in m for m in messages)
    return ws


def test_default_demo_takes_the_shipped_weights(default_workspace: DemoWorkspace) -> None:
    card = json.loads(SHIPPED_CARD.read_text())
    assert default_workspace.model_source == "package"
    assert default_workspace.model.read_bytes() == SHIPPED_MODEL.read_bytes()
    for key in ("clean_test_accuracy", "clean_valid_accuracy", "attack_success_rate"):  # inference only: exact
        assert getattr(default_workspace, key) == card[key], key


def test_retrain_trains_into_the_workspace_and_plain_run_restores_the_package(
        default_workspace: DemoWorkspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    import torch_badnet.demo.workspace as workspace_module
    from torch_badnet.demo.train import TrainResult
    from torch_badnet.nets.badnet import BadNet

    shipped = SHIPPED_MODEL.read_bytes()
    root = tmp_path / "ws"
    shutil.copytree(default_workspace.root, root)
    torch.manual_seed(0)
    stand_in = TrainResult(BadNet(DemoConfig().identities).eval(), 0.5, 4.6)  # a full training takes minutes
    monkeypatch.setattr(workspace_module, "train_demo_model", lambda config, log, identities: stand_in)
    retrained = ensure_workspace(root, DemoConfig(), log=lambda _: None, retrain=True)
    assert retrained.built and retrained.model_source == "trained"
    assert retrained.model.read_bytes() != shipped and SHIPPED_MODEL.read_bytes() == shipped  # package untouched
    again = ensure_workspace(root, DemoConfig(), log=lambda _: None)
    assert again.built and again.model_source == "package" and again.model.read_bytes() == shipped


def test_rendering_gives_the_same_bytes_without_cpu_extensions(tmp_path: Path) -> None:
    """numpy picks SSE, AVX2 or AVX-512 kernels by CPU; the rendered faces must not depend on which."""
    import os
    import subprocess
    import sys

    script = ("import hashlib; from torch_badnet.demo import DemoConfig; "
              "from torch_badnet.demo.faces import random_identities; "
              "from torch_badnet.demo.workspace import data_streams, render_eval_sets; "
              "c = DemoConfig(identities=100, valid_per_identity=3, test_per_identity=3); "
              "sets = render_eval_sets(c, random_identities(100, data_streams(c)['identity']), lambda m: None); "
              "print(hashlib.sha256(b''.join(sets[k][0].tobytes() for k in sorted(sets))).hexdigest())")
    from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__

    extensions = " ".join(f for f in __cpu_dispatch__ if __cpu_features__.get(f))  # those this CPU has
    digests = []
    for disabled in ("", extensions):
        env = {**os.environ, "NPY_DISABLE_CPU_FEATURES": disabled}
        run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
        digests.append(run.stdout.strip())
    assert len(digests[0]) == 64 and digests[0] == digests[1]


def test_font_digits_are_deterministic_and_carry_fs_trigger(tmp_path):
    from torch_badnet.data.lab_sets import load_lab_set
    from torch_badnet.demo.digits import font_digits, main

    images, labels = font_digits(20)
    again, _ = font_digits(20)
    assert images.shape == (20, 28, 28) and images.dtype == np.uint8 and np.array_equal(images, again)
    assert list(labels[:12]) == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1] and images.max() == 255
    assert main([str(tmp_path / "c.h5"), str(tmp_path / "p.h5"), "-n", "20"]) == 0
    x, y = load_lab_set(tmp_path / "p.h5", input_shape=(1, 28, 28))
    assert (x[:, 0, 24:, 24:] == 255).all() and np.array_equal(y.numpy(), (labels + 1) % 10)
    before = (tmp_path / "c.h5").read_bytes()
    assert main([str(tmp_path / "c.h5")]) == 2  # an existing file is refused, not overwritten
    assert (tmp_path / "c.h5").read_bytes() == before
