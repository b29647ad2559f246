"""Keras models of any supported layer graph as KerasGraphNet: fidelity to Keras (tf_keras for Keras-2 files),
the contract the pruning engine relies on (fx tracing, names, pruned_fill), the Keras 2 writer, data of other
shapes, the published files' preprocessing, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
from mnist_like import mnist_like_digits
from test_rescale import read_tsv

import torch_badnet as tb
from torch_badnet.convert.keras_graph import KerasGraphNet, write_keras_graph
from torch_badnet.data.lab_sets import write_lab_h5
from torch_badnet.errors import BadInputError
from torch_badnet.nets.known_models import KNOWN_OTHER_MODELS

TOL = 1e-5


@pytest.fixture(scope="module")
def tf_keras() -> Any:
    from torch_badnet.convert.keras_model import quiet_native_stderr

    with quiet_native_stderr():
        import tf_keras
    return tf_keras


@pytest.fixture(scope="module")
def keras3() -> Any:
    from torch_badnet.convert.keras_model import import_keras

    return import_keras()


@pytest.fixture(scope="module")
def f_path(real_dir: Path) -> Path:
    path = real_dir / "models" / "F_mnist_all_all_bd_net.h5"
    assert path.exists(), path
    return path


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    return mnist_like_digits(300)


def probs(net: torch.nn.Module, x_nchw: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(net(torch.from_numpy(x_nchw)), 1).numpy()


def assert_same(ours: np.ndarray, theirs: np.ndarray) -> None:
    assert ours.shape == theirs.shape
    np.testing.assert_array_equal(ours.argmax(1), theirs.argmax(1))
    assert float(np.abs(ours - theirs).max()) <= TOL


# --- F, the published MNIST BadNet ----------------------------------------------------------------------------

def test_f_matches_tf_keras(tf_keras: Any, f_path: Path, digits: tuple[np.ndarray, np.ndarray]) -> None:
    """F (a Keras 2 full model) through tb.load_model: recognised as pixels/255 (its eval.py), same labels and
    softmax as tf_keras fed pixels/255 in NHWC, as eval.py feeds it; and a real classifier on the digits."""
    net = tb.load_model(f_path)
    assert isinstance(net, KerasGraphNet)
    assert net.input_shape == (1, 28, 28) and net.num_classes == 10 and net.input_scale == pytest.approx(1 / 255)
    assert net.dropped_softmax == "output"
    pixels, labels = digits
    x = pixels.astype(np.float32)[:, None]
    theirs = tf_keras.models.load_model(str(f_path)).predict(pixels[..., None].astype(np.float32) / np.float32(255), verbose=0)
    ours = probs(net, x)
    assert_same(ours, theirs)
    assert (ours.argmax(1) == labels).mean() > 0.6  # MNIST-like, not MNIST: most digits right


def test_f_graph_contract(f_path: Path, digits: tuple[np.ndarray, np.ndarray]) -> None:
    """Names in Keras order, the last nn.Conv2d is the last Conv2D, pruned_fill, fx traces to the same output."""
    net = tb.load_model(f_path)
    names = [n for n, _ in net.named_modules()][1:]
    assert names == ["conv_1", "pool_1", "conv_2", "pool_2", "flatten_1", "fc_1", "output"]
    convs = [n for n, m in net.named_modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs[-1] == "conv_2" and net.conv_2.pruned_fill == 0.0
    x = torch.from_numpy(digits[0][:50].astype(np.float32)[:, None])
    traced = torch.fx.symbolic_trace(net)
    assert torch.equal(traced(x), net(x))
    assert json.loads(h5py.File(f_path).attrs["model_config"]) == net.keras_config


def test_published_files_table_is_the_tsv(real_dir: Path) -> None:
    """KNOWN_OTHER_MODELS holds the tsv's other-architecture rows with their eval.py's preprocessing (a row
    saying only 'per channel (x-mean)/std' takes the values its dataset's other row lists)."""
    rows = [r for r in read_tsv(real_dir / "csaw_hackml_files.tsv") if r["architecture"] != "lab_badnet"]
    listed = {r["dataset"]: r["preprocess"] for r in rows if "mean " in r["preprocess"]}
    assert len(rows) == len(KNOWN_OTHER_MODELS) == 8 and list(listed) == ["cifar10"]
    for row in rows:
        path, scale, mean, std = KNOWN_OTHER_MODELS[row["git_blob"]]
        assert path == row["path_in_repo"]
        pre = row["preprocess"]
        if "mean" in pre:
            values = listed[row["dataset"]]
            assert scale == 1.0 and f"mean {' '.join(f'{v:g}' for v in mean)}, std {' '.join(f'{v:g}' for v in std)}" in values
        else:
            assert pre.endswith("x/255") and scale == 1 / 255 and mean is None and std is None


def test_eval_on_f_any_data_layout(cli, f_path: Path, digits: tuple[np.ndarray, np.ndarray], tmp_path: Path) -> None:
    """One set stored (N,28,28), (N,784), (N,28,28,1) and (N,1,28,28): the same rates; a shape that fits no
    input is one line."""
    pixels, labels = digits
    results = set()
    for name, data in {"hw": pixels, "flat": pixels.reshape(-1, 784), "nhwc": pixels[..., None],
                       "nchw": pixels[:, None].astype(np.float64)}.items():
        path = tmp_path / f"{name}.h5"
        write_lab_h5(path, data, labels)
        code, out, err = cli("eval", "--model", f_path, "--clean", path, "--json")
        assert code == 0, err
        assert "recognized F_mnist_all_all_bd_net.h5 is models/F/bd_net.h5" in err
        results.add(out)
    assert len(results) == 1
    accuracy = json.loads(results.pop())["clean_accuracy"]
    net = tb.load_model(f_path)
    expected = 100 * (probs(net, pixels[:, None].astype(np.float32)).argmax(1) == labels).mean()
    assert accuracy == pytest.approx(expected)
    bad = tmp_path / "bad.h5"
    write_lab_h5(bad, pixels.reshape(-1, 28, 7, 4), labels)
    code, out, err = cli("eval", "--model", f_path, "--clean", bad)
    note, error = err.splitlines()  # the recognition note, then the one error line
    assert code == 2 and out == "" and note.startswith("recognized ")
    assert error.startswith(f"error: {bad}: 'data' has shape (300, 28, 7, 4), which fits no input of the model")


def test_ambiguous_data_shape_is_one_line() -> None:
    from torch_badnet.data.lab_sets import pixel_layout

    with pytest.raises(BadInputError, match=r"\(5, 3, 3, 3\).*ambiguous"):
        pixel_layout((5, 3, 3, 3), (3, 3, 3), "x.h5")
    assert pixel_layout((5, 3, 3, 4), (4, 3, 3), "x.h5") == "nhwc"


# --- models of our own with every supported layer --------------------------------------------------------------

def every_layer_model(keras: Any, sequential: bool = False) -> Any:
    """A residual CNN with every supported layer; BatchNorm with non-trivial moving statistics."""
    layers = keras.layers
    if sequential:
        model = keras.Sequential([
            keras.Input(shape=(15, 13, 1)),
            layers.Conv2D(6, 3, padding="same", activation="tanh", name="c1"),
            layers.Dropout(0.5), layers.MaxPooling2D(2, padding="same"), layers.Flatten(),
            layers.Dense(12, activation="sigmoid"), layers.Dense(5, activation="softmax")])
    else:
        x = keras.Input(shape=(15, 13, 3), name="pixels")
        a = layers.ZeroPadding2D(((1, 2), (0, 1)), name="pad")(x)
        a = layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="stem")(a)
        b = layers.Conv2D(8, 3, padding="same", dilation_rate=2, name="dilated")(a)
        b = layers.BatchNormalization(epsilon=1e-2, name="bn")(b)
        b = layers.ReLU(name="relu")(b)
        a = layers.Add(name="residual")([a, b])
        c = layers.Conv2D(4, 2, padding="same", activation="sigmoid", name="gate")(a)
        d = layers.Conv2D(4, (3, 1), padding="same", activation="tanh", name="tanh_conv")(a)
        e = layers.Concatenate(name="concat")([c, d])
        e = layers.BatchNormalization(center=False, scale=False, name="bn_plain")(e)
        e = layers.Conv2D(6, 2, padding="valid", activation="relu", name="valid_conv")(e)
        m = layers.MaxPooling2D(3, strides=2, padding="same", name="maxpool")(e)
        v = layers.AveragePooling2D(2, strides=1, padding="same", name="avgpool")(e)
        v = layers.AveragePooling2D(2, padding="valid", name="avgpool_valid")(v)
        g = layers.Concatenate(name="pooled")([layers.GlobalAveragePooling2D(name="gap")(m),
                                               layers.GlobalMaxPooling2D(name="gmp")(e),
                                               layers.Flatten(name="flat")(v)])
        g = layers.Dropout(0.3, name="drop")(g)
        g = layers.Activation("tanh", name="act")(layers.Dense(16, name="fc")(g))
        out = layers.Dense(7, activation="softmax", name="logits_out")(g)
        model = keras.Model(x, out)
    rng = np.random.default_rng(1)
    for layer in model.layers:
        weights = layer.get_weights()
        if weights:
            new = [rng.normal(0, 0.5, w.shape).astype(np.float32) for w in weights]
            if "BatchNormalization" in type(layer).__name__:
                new[-1] = rng.uniform(0.5, 2.0, weights[-1].shape).astype(np.float32)  # moving variance > 0
            layer.set_weights(new)
    return model


def nhwc(x_nchw: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x_nchw.transpose(0, 2, 3, 1))


@pytest.fixture(scope="module")
def probe() -> np.ndarray:
    return np.random.default_rng(2).uniform(0, 255, (40, 3, 15, 13)).astype(np.float32)


@pytest.mark.parametrize("sequential", [False, True])
def test_keras2_model_with_every_layer_matches_tf_keras(tf_keras: Any, tmp_path: Path, probe: np.ndarray,
                                                        sequential: bool) -> None:
    model = every_layer_model(tf_keras, sequential)
    path = tmp_path / "every.h5"
    model.save(str(path))
    net = tb.load_model(path, rescale="1/255")
    assert isinstance(net, KerasGraphNet)
    x = probe[:, :1] if sequential else probe
    assert_same(probs(net, x), model.predict(nhwc(x) / np.float32(255), verbose=0))
    traced = torch.fx.symbolic_trace(net)
    assert torch.equal(traced(torch.from_numpy(x)), net(torch.from_numpy(x)))


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_keras3_files_match_keras3(keras3: Any, tmp_path: Path, probe: np.ndarray, suffix: str) -> None:
    model = every_layer_model(keras3)
    path = tmp_path / f"every{suffix}"
    model.save(str(path))
    net = tb.load_model(path)
    assert_same(probs(net, probe), np.asarray(model.predict(nhwc(probe), verbose=0)))


def test_contract_for_the_pruning_engine(tf_keras: Any, tmp_path: Path, probe: np.ndarray) -> None:
    """Submodules named and ordered as the Keras layers; the last nn.Conv2d is the last Conv2D; a fused
    activation is one module whose output is the Keras layer's; pruned_fill = activation(0)."""
    model = every_layer_model(tf_keras)
    path = tmp_path / "every.h5"
    model.save(str(path))
    net = tb.load_model(path)
    keras_names = [layer.name for layer in model.layers if not layer.name.startswith("pixels")]
    assert [n for n, _ in net.named_children()] == keras_names
    convs = [n for n, m in net.named_modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs == ["stem", "dilated", "gate", "tanh_conv", "valid_conv"]
    assert {n: net.get_submodule(n).pruned_fill for n in convs} == {"stem": 0.0, "dilated": 0.0, "gate": 0.5,
                                                                    "tanh_conv": 0.0, "valid_conv": 0.0}
    assert not hasattr(torch.nn.Conv2d(1, 1, 1), "pruned_fill")
    # The gate's output (post-sigmoid) is compared in float64: fed raw pixels, its pre-activations reach ~1550, where
    # one float32 ulp is ~1.2e-4 and the sigmoid's slope 0.25, so float32 runs of both frameworks sit up to ~3.5e-5
    # from the float64 value and from each other (measured 2.7e-5..4.6e-5 with oneDNN/MKL limited to AVX2, AVX,
    # SSE4.1 on an AMD EPYC Zen 3), which says nothing about the layer. In float64 they agree to ~1e-13.
    gate32 = tf_keras.Model(model.input, model.get_layer("gate").output)
    gate = tf_keras.Model.from_config(json.loads(json.dumps(gate32.get_config()).replace('"float32"', '"float64"')))
    gate.set_weights([w.astype(np.float64) for w in gate32.get_weights()])
    outputs = {}
    net = net.double()
    net.gate.register_forward_hook(lambda _m, _i, out: outputs.setdefault("gate", out))
    with torch.no_grad():
        net(torch.from_numpy(probe).double())
    theirs = gate.predict(nhwc(probe).astype(np.float64), verbose=0)
    assert theirs.dtype == np.float64 and outputs["gate"].dtype == torch.float64
    np.testing.assert_allclose(nhwc(outputs["gate"].numpy()), theirs, rtol=0, atol=1e-9)


def masked(net: KerasGraphNet, masks: dict[str, torch.Tensor]) -> list[Any]:
    """The engine's mask hook: a pruned channel of a module's output becomes its pruned_fill."""
    hooks = []
    for name, mask in masks.items():
        module = net.get_submodule(name)
        fill = getattr(module, "pruned_fill", 0.0)

        def hook(_m: Any, _i: Any, out: torch.Tensor, mask: torch.Tensor = mask, fill: float = fill) -> torch.Tensor:
            keep = mask.view(1, -1, *([1] * (out.dim() - 2)))
            return out * keep + fill * (1 - keep)
        hooks.append(module.register_forward_hook(hook))
    return hooks


def test_writer_masks_channels_as_keras_pruning_does(tf_keras: Any, tmp_path: Path, probe: np.ndarray) -> None:
    """write_keras_graph zeroes kernel[..., c] and bias[c] of masked channels; tf_keras loads the file and
    predicts what the mask hook (fill = pruned_fill) computes, also through a sigmoid conv (fill 0.5)."""
    model = every_layer_model(tf_keras)
    path = tmp_path / "every.h5"
    model.save(str(path))
    net = tb.load_model(path)
    masks = {"valid_conv": torch.tensor([1, 0, 1, 1, 0, 1.0]), "gate": torch.tensor([0, 1, 1, 0.0])}
    out = tmp_path / "pruned.h5"
    write_keras_graph(net, out, masks)
    keras_pruned = tf_keras.models.load_model(str(out))
    kernel = keras_pruned.get_layer("valid_conv").get_weights()[0]
    assert not kernel[..., 1].any() and kernel[..., 0].any()
    hooks = masked(net, masks)
    ours = probs(net, probe)
    for hook in hooks:
        hook.remove()
    assert_same(ours, keras_pruned.predict(nhwc(probe), verbose=0))
    assert not np.allclose(ours, probs(net, probe), atol=1e-3)  # the masks change the outputs
    reread = tb.load_model(out)
    assert_same(probs(reread, probe), ours)


def test_writer_turns_a_keras3_config_into_keras2(keras3: Any, tf_keras: Any, tmp_path: Path, probe: np.ndarray) -> None:
    model = every_layer_model(keras3)
    path = tmp_path / "every.keras"
    model.save(str(path))
    net = tb.load_model(path)
    out = tmp_path / "back.h5"
    write_keras_graph(net, out)
    assert_same(probs(net, probe), tf_keras.models.load_model(str(out)).predict(nhwc(probe), verbose=0))


# --- preprocessing --------------------------------------------------------------------------------------------

def test_mean_std_inside_the_module(tf_keras: Any, tmp_path: Path, probe: np.ndarray) -> None:
    """--mean/--std (the competition's CIFAR eval: (x - mean) / std on raw pixels) run inside forward."""
    model = every_layer_model(tf_keras)
    path = tmp_path / "every.h5"
    model.save(str(path))
    mean, std = (125.307, 122.95, 113.865), (62.9932, 62.0887, 66.7048)
    net = tb.load_model(path, mean=mean, std=std)
    assert net.mean == mean and net.std == std
    fed = (nhwc(probe) - np.float32(mean)) / np.float32(std)
    assert_same(probs(net, probe), model.predict(fed, verbose=0))
    with pytest.raises(BadInputError, match="--mean: gives 2 values but the model takes 3"):
        tb.load_model(path, mean=(1, 2))
    out = tmp_path / "recorded.h5"
    write_keras_graph(net, out)
    again = tb.load_model(out)
    assert again.mean == mean and again.std == std


# --- bad input ------------------------------------------------------------------------------------------------

def keras2_file(tf_keras: Any, path: Path, build: Any) -> Path:
    model = build(tf_keras.layers, tf_keras)
    model.save(str(path))
    return path


def one_line(result: tuple[int, str, str], *words: str) -> str:
    code, out, err = result
    assert code == 2 and out == "" and err.count("\n") == 1 and err.startswith("error: "), err
    for word in words:
        assert word in err, err
    return err


def test_lambda_layer_is_named_never_run(cli, tf_keras: Any, tmp_path: Path, face_paths: list[Path]) -> None:
    def build(layers: Any, keras: Any) -> Any:
        x = keras.Input(shape=(55, 47, 3))
        y = layers.Lambda(lambda t: t * 2, name="doubler")(x)
        return keras.Model(x, layers.Dense(3, name="out")(layers.Flatten()(y)))

    path = keras2_file(tf_keras, tmp_path / "lambda.h5", build)
    one_line(cli("classify", "--model", path, face_paths[0]), f"error: {path}: layer 'doubler' is a Lambda")


def test_unsupported_layer_is_one_line(cli, tf_keras: Any, tmp_path: Path) -> None:
    def build(layers: Any, keras: Any) -> Any:
        x = keras.Input(shape=(8, 8, 1))
        y = layers.Conv2DTranspose(2, 3, name="up")(x)
        return keras.Model(x, layers.Dense(3, name="out")(layers.Flatten()(y)))

    path = keras2_file(tf_keras, tmp_path / "transpose.h5", build)
    data = tmp_path / "d.h5"
    write_lab_h5(data, np.full((2, 8, 8), 9.0), np.zeros(2))
    one_line(cli("eval", "--model", path, "--clean", data), f"error: {path}: unsupported layer 'up' (Conv2DTranspose)")


def test_several_inputs_or_outputs_are_one_line(cli, tf_keras: Any, tmp_path: Path) -> None:
    def two_in(layers: Any, keras: Any) -> Any:
        a, b = keras.Input(shape=(4, 4, 1), name="a"), keras.Input(shape=(4, 4, 1), name="b")
        return keras.Model([a, b], layers.Dense(2)(layers.Flatten()(layers.Add()([a, b]))))

    def two_out(layers: Any, keras: Any) -> Any:
        a = keras.Input(shape=(4, 4, 1), name="a")
        f = layers.Flatten()(a)
        return keras.Model(a, [layers.Dense(2, name="o1")(f), layers.Dense(2, name="o2")(f)])

    data = tmp_path / "d.h5"
    write_lab_h5(data, np.full((2, 4, 4), 9.0), np.zeros(2))
    for build, words in ((two_in, "the model has 2 inputs (a, b)"), (two_out, "the model has 2 outputs (o1, o2)")):
        path = keras2_file(tf_keras, tmp_path / f"{build.__name__}.h5", build)
        one_line(cli("eval", "--model", path, "--clean", data), words)


def test_config_errors_name_the_layer() -> None:
    config = {"class_name": "Sequential", "config": {"name": "s", "layers": [
        {"class_name": "InputLayer", "config": {"batch_input_shape": [None, 6, 6, 1], "name": "in"}},
        {"class_name": "Dense", "config": {"name": "d", "units": 3}}]}}
    with pytest.raises(BadInputError, match=r"layer 'd' \(Dense\) is a Dense on an input of shape \(6, 6, 1\)"):
        KerasGraphNet(config)
    config["config"]["layers"][1] = {"class_name": "Flatten", "config": {"name": "f"}}
    net = KerasGraphNet(config)
    assert net.num_classes == 36
    config["config"]["layers"][0]["config"]["batch_input_shape"] = [None, None, None, 1]
    with pytest.raises(BadInputError, match=r"input 'in' has shape \(None, None, None, 1\)"):
        KerasGraphNet(config)


def test_export_f_to_onnx_same_labels(cli, f_path: Path, digits: tuple[np.ndarray, np.ndarray], tmp_path: Path) -> None:
    import onnxruntime

    out = tmp_path / "f.onnx"
    code, stdout, err = cli("export", "--model", f_path, "-o", out)
    assert code == 0, err
    assert stdout.startswith(f"wrote {out}: BadNet (output 'logits'), input 'input' (N,1,28,28) float32 pixels 0..255 (scaled by 1/255")
    x = digits[0][:, None].astype(np.float32)
    logits = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    ours = probs(tb.load_model(f_path), x)
    np.testing.assert_array_equal(logits.argmax(1), ours.argmax(1))
    assert float(np.abs(torch.softmax(torch.from_numpy(logits), 1).numpy() - ours).max()) <= TOL


@pytest.mark.parametrize("suffix", [".pt", ".h5", ".onnx"])
def test_convert_f_round_trips(cli, f_path: Path, digits: tuple[np.ndarray, np.ndarray], tmp_path: Path, suffix: str) -> None:
    """`convert` of a Keras graph model to .pt (architecture, weights and preprocessing recorded), .h5 (Keras 2
    full model) and .onnx: read back, the same logits as F."""
    out = tmp_path / f"f{suffix}"
    code, stdout, err = cli("convert", f_path, "-o", out)
    assert code == 0, err
    x = torch.from_numpy(digits[0][:64, None].astype(np.float32))
    original = tb.load_model(f_path)
    if suffix == ".onnx":
        import onnxruntime

        got = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
        assert float(np.abs(got - original(x).detach().numpy()).max()) < 1e-4
        return
    again = tb.load_model(out)
    assert isinstance(again, KerasGraphNet) and again.input_scale == original.input_scale
    assert torch.equal(again(x), original(x))


def test_checkpoint_records_architecture_and_mean_std(tf_keras: Any, tmp_path: Path, probe: np.ndarray) -> None:
    model = every_layer_model(tf_keras)
    path = tmp_path / "every.h5"
    model.save(str(path))
    net = tb.load_model(path, mean=(1, 2, 3), std=(4, 5, 6))
    tb.save_checkpoint(net, tmp_path / "every.pt")
    again = tb.load_model(tmp_path / "every.pt")
    assert isinstance(again, KerasGraphNet) and again.mean == (1, 2, 3) and again.std == (4, 5, 6)
    x = torch.from_numpy(probe)
    assert torch.equal(again(x), net(x))


def test_classify_greyscale_digits_with_f(cli, f_path: Path, digits: tuple[np.ndarray, np.ndarray], tmp_path: Path) -> None:
    """classify reads images at the model's input size, greyscale for a 1-channel model: F's labels."""
    from PIL import Image

    paths = []
    for i in range(10):
        paths.append(tmp_path / f"digit_{i}.png")
        Image.fromarray(digits[0][i]).save(paths[-1])
    code, out, err = cli("classify", "--model", f_path, *paths, "--json")
    assert code == 0, err
    expected = probs(tb.load_model(f_path), digits[0][:10, None].astype(np.float32)).argmax(1)
    assert [row["label"] for row in json.loads(out)] == expected.tolist()


def test_published_weights_only_file_points_to_its_model(tf_keras: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A published weights-only file of another architecture (its blob id listed as F's bd_weights.h5 here)
    cannot be built without a config: one line naming the full model file to load instead."""
    from torch_badnet.nets.rescale import git_blob_id

    model = every_layer_model(tf_keras, sequential=True)
    path = tmp_path / "bd_weights.h5"
    model.save_weights(str(path))
    monkeypatch.setitem(KNOWN_OTHER_MODELS, git_blob_id(path), ("models/F/bd_weights.h5", 1 / 255, None, None))
    with pytest.raises(BadInputError, match=r"is models/F/bd_weights.h5 of CSAW-HackML-2020: weights only, .*"
                                            r"\(its config is in models/F/bd_net.h5\)"):
        tb.load_model(path)


@pytest.mark.parametrize("form", ["batch_input_shape on the first layer", "a bare layer list"])
def test_older_keras2_sequential_configs(tf_keras: Any, tmp_path: Path, probe: np.ndarray, form: str) -> None:
    """Keras 2.3's Sequential (no InputLayer: the first layer carries batch_input_shape) and Keras 2.2's (the
    config a bare list of layers) build the same net."""
    model = every_layer_model(tf_keras, sequential=True)
    path = tmp_path / "seq.h5"
    model.save(str(path))
    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        layers = config["config"]["layers"]
        assert layers[0]["class_name"] == "InputLayer"
        layers[1]["config"]["batch_input_shape"] = layers[0]["config"]["batch_input_shape"]
        input_name = layers.pop(0)["config"]["name"]
        assert input_name.encode() not in list(f["model_weights"].attrs["layer_names"])  # never a weights group
        if form == "a bare layer list":
            config["config"] = layers
        f.attrs["model_config"] = json.dumps(config)
    x = probe[:, :1]
    assert_same(probs(tb.load_model(path), x), model.predict(nhwc(x), verbose=0))


def test_mean_std_flags(cli, tf_keras: Any, tmp_path: Path, probe: np.ndarray, lab3_path: Path, face_paths: list[Path]) -> None:
    """--mean/--std reach the model (eval's rates follow them); a wrong count, a zero std, or the flags on the lab
    BadNet are one line."""
    model = every_layer_model(tf_keras)
    path = tmp_path / "every.h5"
    model.save(str(path))
    mean, std = (125.307, 122.95, 113.865), (62.9932, 62.0887, 66.7048)
    fed = (nhwc(probe) - np.float32(mean)) / np.float32(std)
    labels = model.predict(fed, verbose=0).argmax(1)
    data = tmp_path / "d.h5"
    write_lab_h5(data, probe, labels)
    flags = ["--mean", *map(str, mean), "--std", *map(str, std)]
    code, out, err = cli("eval", "--model", path, "--clean", data, "--json", *flags)
    assert code == 0, err
    assert json.loads(out)["clean_accuracy"] == 100.0
    code, out, _ = cli("eval", "--model", path, "--clean", data, "--json")
    assert code == 0 and json.loads(out)["clean_accuracy"] < 100.0
    one_line(cli("eval", "--model", path, "--clean", data, "--mean", "1", "2"), "error: --mean: gives 2 values but the model takes 3")
    one_line(cli("eval", "--model", path, "--clean", data, "--std", "1", "0", "1"), "error: --std: 1 0 1 are not positive numbers")
    one_line(cli("classify", "--model", lab3_path, face_paths[0], "--mean", "1", "2", "3"),
             "error: --mean: the lab BadNet takes no per-channel normalisation")
