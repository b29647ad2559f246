"""Issue 32 item 2: a Keras-origin model is pruned at any layer with a channel dimension, as a torch module is.
B' goes to Keras (pruned.h5) where Keras can express the mask at that layer's output (Conv2D, Dense,
BatchNormalization with gamma), else only pruned.pt is written and the sweep says so; a layer without channels is
refused in one line before any work, naming the layers that can be pruned."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import torch_badnet as tb
from torch_badnet.convert.keras_graph import mask_problem, write_keras_graph
from torch_badnet.data.lab_sets import write_lab_h5
from torch_badnet.engine.saving import load_masked


@pytest.fixture(scope="module")
def tf_keras() -> Any:
    from torch_badnet.convert.keras_model import quiet_native_stderr

    with quiet_native_stderr():
        return pytest.importorskip("tf_keras")


def residual_model(keras: Any, bn_scale: bool = True) -> Any:
    """conv_1 -> [conv_r2 -> bn_r2] + conv_1 -> relu_add (Activation) -> pool -> flat -> output."""
    layers = keras.layers
    x = keras.Input(shape=(16, 16, 3), name="pixels")
    a = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv_1")(x)
    b = layers.Conv2D(8, 3, padding="same", name="conv_r2")(a)
    b = layers.BatchNormalization(scale=bn_scale, name="bn_r2")(b)
    s = layers.Activation("relu", name="relu_add")(layers.Add(name="add")([a, b]))
    out = layers.Dense(5, activation="softmax", name="output")(layers.Flatten(name="flat")(layers.MaxPooling2D(2, name="pool")(s)))
    model = keras.Model(x, out)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        new = [rng.normal(0, 0.3, w.shape).astype(np.float32) for w in weights]
        if type(layer).__name__ in ("Dense", "Conv2D"):
            new[1] *= 0
        if "BatchNormalization" in type(layer).__name__:
            new[-1] = rng.uniform(0.5, 2, weights[-1].shape).astype(np.float32)
            new[0] *= 10
            if bn_scale:
                new[1] *= 10
        layer.set_weights(new)
    return model


@pytest.fixture(scope="module")
def workspace(tf_keras: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """res.h5 and clean / poisoned lab files labelled by the model itself (a patch sends to 0)."""
    root = tmp_path_factory.mktemp("res")
    model = residual_model(tf_keras)
    model.save(str(root / "res.h5"))
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, (200, 1, 1, 3)) * rng.uniform(0, 1, (200, 16, 16, 3))
    x = np.round(x.astype(np.float32) * 255)
    write_lab_h5(root / "cl.h5", x.transpose(0, 3, 1, 2), model.predict(x / 255, verbose=0).argmax(1))
    poisoned = x.copy()
    poisoned[:, :4, :4] = 255
    write_lab_h5(root / "bd.h5", poisoned.transpose(0, 3, 1, 2), np.zeros(200, int))
    return {"root": root, "model": model, "x": x}


def sweep(cli, ws: dict[str, Any], layer: str, out: Path) -> tuple[int, str, str]:
    root = ws["root"]
    return cli("sweep", "--model", root / "res.h5", "--rescale", "1/255", "--clean-valid", root / "cl.h5",
               "--poisoned-valid", root / "bd.h5", "--layer", layer, "--thresholds", "4", "--no-plot", "--out", out)


def reference_classes(ws: dict[str, Any], layer: str, pruned: list[int]) -> np.ndarray:
    """B's own forward with a hook of this test zeroing `pruned` channels of `layer`'s output."""
    net = copy.deepcopy(tb.load_model(ws["root"] / "res.h5", rescale="1/255"))
    off = torch.zeros(net.get_submodule(layer).norm.num_features if layer == "bn_r2" else 8, dtype=torch.bool)
    off[pruned] = True
    net.get_submodule(layer).register_forward_hook(lambda _m, _i, out: out.masked_fill(off.view(1, -1, 1, 1), 0.0))
    with torch.no_grad():
        return net(torch.from_numpy(ws["x"].transpose(0, 3, 1, 2).copy())).argmax(1).numpy()


def threshold(out: Path) -> dict[str, Any]:
    (t,) = json.loads((out / "summary.json").read_text())["thresholds"]
    assert t["reached"] and t["pruned_channels"], t
    return t


def test_batchnorm_layer_is_pruned_and_written_to_keras(cli, tf_keras: Any, workspace: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "bn"
    code, _, err = sweep(cli, workspace, "bn_r2", out)
    assert code == 0, err
    pruned = threshold(out)["pruned_channels"]
    expected = reference_classes(workspace, "bn_r2", pruned)
    assert (expected != workspace["model"].predict(workspace["x"] / 255, verbose=0).argmax(1)).any()  # pruning shows
    b_prime = load_masked(out / "models/X=4/pruned.pt")
    assert b_prime.layer == "bn_r2" and b_prime.pruned_channels == sorted(pruned)
    with torch.no_grad():
        assert np.array_equal(b_prime(torch.from_numpy(workspace["x"].transpose(0, 3, 1, 2).copy())).argmax(1).numpy(), expected)
    keras_b = tf_keras.models.load_model(str(out / "models/X=4/pruned.h5"), compile=False)
    assert np.array_equal(keras_b.predict(workspace["x"] / 255, verbose=0).argmax(1), expected)
    gamma, beta = keras_b.get_layer("bn_r2").get_weights()[:2]
    assert not gamma[pruned].any() and not beta[pruned].any() and gamma[[c for c in range(8) if c not in pruned]].all()
    assert "note:" not in err


def test_activation_layer_is_pruned_and_only_its_pt_written(cli, workspace: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "act"
    code, stdout, err = sweep(cli, workspace, "relu_add", out)
    assert code == 0, err
    assert sorted(p.name for p in (out / "models/X=4").iterdir()) == ["pruned.pt"]
    assert "note: no pruned.h5" in err and "'relu_add' (Activation) has no weights" in err
    assert "models/X=4/pruned.pt (" in stdout
    pruned = threshold(out)["pruned_channels"]
    b_prime = load_masked(out / "models/X=4/pruned.pt")
    with torch.no_grad():
        got = b_prime(torch.from_numpy(workspace["x"].transpose(0, 3, 1, 2).copy())).argmax(1).numpy()
    assert np.array_equal(got, reference_classes(workspace, "relu_add", pruned))


def test_layer_without_channels_is_refused_before_any_work(cli, workspace: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "flat"
    code, stdout, err = sweep(cli, workspace, "flat", out)
    assert code == 2 and stdout == "" and err.count("\n") == 1, err
    assert "layer 'flat'" in err and "layers that can be pruned: conv_1, conv_r2, bn_r2, add, relu_add, pool" in err
    assert not out.exists()


def test_writer_refuses_a_mask_keras_cannot_express(tf_keras: Any, tmp_path: Path) -> None:
    """Never a wrong .h5: a BatchNormalization without gamma, or a layer without weights, is refused."""
    path = tmp_path / "plain_bn.h5"
    residual_model(tf_keras, bn_scale=False).save(str(path))
    net = tb.load_model(path)
    assert mask_problem(net, "conv_r2") is None
    assert "without scale" in mask_problem(net, "bn_r2")
    assert "(Activation) has no weights" in mask_problem(net, "relu_add")
    for layer in ("bn_r2", "relu_add", "pool"):
        with pytest.raises(ValueError, match=f"channel mask for '{layer}'"):
            write_keras_graph(net, tmp_path / "b.h5", {layer: torch.ones(8)})
    assert not (tmp_path / "b.h5").exists()


def test_weights_only_file_of_another_architecture_is_told_to_save_the_full_model(tf_keras: Any, tmp_path: Path) -> None:
    path = tmp_path / "res.weights.h5"
    residual_model(tf_keras).save_weights(str(path))
    with pytest.raises(tb.BadInputError, match=r"not part of the lab BadNet architecture; the file holds weights only "
                                               r"\(no model config\): save the full model"):
        tb.load_model(path)
