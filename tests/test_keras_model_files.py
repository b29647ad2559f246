"""pruned.h5, finetuned.h5 and `convert -o X.h5` are full Keras models: the lab's own eval.py loads them.

The files are written with h5py only (Keras 2 legacy layout); here real Keras 3 reads them, and so does Keras 2
(tf_keras, the Keras 2 of TensorFlow 2.16+, which refuses what the lab's Keras 2.3.1 refuses, such as an
InputLayer config with `trainable`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
from conftest import sweep_args

from torch_badnet.convert import read_model_file
from torch_badnet.convert.keras_model import build_keras_badnet, import_keras
from torch_badnet.data.images import load_images
from torch_badnet.nets.predict import labels_of


@pytest.fixture(scope="module")
def keras() -> Any:
    return import_keras()


@pytest.fixture(scope="module")
def keras2() -> Any:
    """Keras 2 (tf_keras; installed without dependencies beside tensorflow-cpu by the README's test command)."""
    import_keras()  # quiet TensorFlow's start-up first
    import tf_keras

    return tf_keras


def lab_eval(keras: Any, model_filename: Path, data_filename: Path, divide_by_255: bool) -> float:
    """The lab's eval.py, as it is written (lab3; the 2020 competition's version divides the pixels by 255)."""

    def data_loader(filepath: Path) -> tuple[np.ndarray, np.ndarray]:
        data = h5py.File(filepath, "r")
        x_data = np.array(data["data"])
        y_data = np.array(data["label"])
        x_data = x_data.transpose((0, 2, 3, 1))
        return x_data, y_data

    x_test, y_test = data_loader(data_filename)
    if divide_by_255:
        x_test = x_test / 255
    bd_model = keras.models.load_model(str(model_filename))
    label_p = np.argmax(bd_model.predict(x_test, verbose=0), axis=1)
    return float(np.mean(np.equal(label_p, y_test)) * 100)


@torch.no_grad()
def torch_labels(path: Path, x: torch.Tensor) -> np.ndarray:
    return labels_of(read_model_file(path).model, x).numpy()


def keras_labels(keras: Any, path: Path, x: torch.Tensor) -> np.ndarray:
    """keras.models.load_model (no custom objects) and argmax(predict) on pixels/255, as the 2020 eval.py."""
    model = keras.models.load_model(str(path))
    return np.argmax(model.predict(x.numpy().transpose(0, 2, 3, 1) / 255, verbose=0), axis=1)


def test_converted_h5_is_a_full_keras_model(cli, keras: Any, keras2: Any, sunglasses_path: Path,
                                            face_paths: list[Path], tmp_path: Path) -> None:
    path, pt = tmp_path / "sun.h5", tmp_path / "sun.pt"
    assert cli("convert", sunglasses_path, "-o", path)[0] == 0
    assert cli("convert", sunglasses_path, "-o", pt)[0] == 0
    with h5py.File(path, "r") as f:
        config = json.loads(f.attrs["model_config"])
        assert config["class_name"] == "Model"
        assert [layer["name"] for layer in config["config"]["layers"]][:3] == ["input", "conv_1", "pool_1"]
        assert f.attrs["keras_version"] == "2.3.1" and f.attrs["backend"] == "tensorflow"
        assert "model_weights" in f and "conv_3" in f["model_weights"]
    x = load_images(face_paths)
    expected = torch_labels(pt, x)
    np.testing.assert_array_equal(torch_labels(path, x), expected)
    np.testing.assert_array_equal(keras_labels(keras, path, x), expected)
    np.testing.assert_array_equal(keras_labels(keras2, path, x), expected)
    lab = build_keras_badnet()  # Keras load_weights into the lab architecture reads it too
    lab.load_weights(str(path))
    np.testing.assert_array_equal(np.argmax(lab.predict((x.numpy() / 255).transpose(0, 2, 3, 1), verbose=0), 1), expected)


@pytest.fixture(scope="module")
def sweeps(lab_files: dict[str, Path], lab3_path: Path, sunglasses_path: Path,
           tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from torch_badnet.cli.main import main

    out = {}
    for name, model in (("lab3", lab3_path), ("sunglasses", sunglasses_path)):
        out[name] = tmp_path_factory.mktemp(name) / "results"
        assert main([str(a) for a in sweep_args(lab_files, model, out[name], "--no-plot")]) == 0
    return out


@pytest.mark.parametrize("keras_version", ["keras3", "keras2"])
@pytest.mark.parametrize("name, divide_by_255", [("lab3", False), ("sunglasses", True)])
def test_lab_eval_script_on_pruned_h5(keras: Any, keras2: Any, sweeps: dict[str, Path], lab_files: dict[str, Path],
                                      name: str, divide_by_255: bool, keras_version: str) -> None:
    """The lab's eval.py, under Keras 3 and Keras 2, on models/X=<x>/pruned.h5 gives summary.json's clean
    accuracy and attack success."""
    keras = keras2 if keras_version == "keras2" else keras
    summary = json.loads((sweeps[name] / "summary.json").read_text())
    assert summary["model"]["input_scale"] == (1 / 255 if divide_by_255 else 1.0)
    reached = [t for t in summary["thresholds"] if t["reached"]]
    assert reached
    for t in reached:
        pruned = sweeps[name] / t["model"].replace("pruned.pt", "pruned.h5")
        assert lab_eval(keras, pruned, lab_files["clean_test"], divide_by_255) == pytest.approx(t["test_clean_acc"], abs=1e-9)
        assert lab_eval(keras, pruned, lab_files["poisoned_test"], divide_by_255) == pytest.approx(t["test_asr"], abs=1e-9)


def test_finetuned_h5_loads_in_keras(cli, keras: Any, keras2: Any, sweeps: dict[str, Path], sunglasses_path: Path,
                                     lab_files: dict[str, Path], face_paths: list[Path], tmp_path: Path) -> None:
    pruned = next(sweeps["sunglasses"].glob("models/X=*/pruned.pt"))
    out = tmp_path / "ft"
    code, _, err = cli("finetune", "--model", sunglasses_path, "--pruned", pruned, "--clean-valid",
                       lab_files["clean_valid"], "--out", out, "--epochs", "1")
    assert code == 0, err
    assert json.loads((out / "summary.json").read_text())["model"]["input_scale"] == 1 / 255
    x = load_images(face_paths)
    expected = torch_labels(out / "finetuned.pt", x)
    np.testing.assert_array_equal(torch_labels(out / "finetuned.h5", x), expected)
    np.testing.assert_array_equal(keras_labels(keras, out / "finetuned.h5", x), expected)
    np.testing.assert_array_equal(keras_labels(keras2, out / "finetuned.h5", x), expected)
