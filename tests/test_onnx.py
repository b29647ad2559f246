"""ONNX on the real lab models: Keras == Keras->ONNX (onnxruntime) == ONNX->torch == h5->torch, the GoodNet
export under onnxruntime, and rejection of graphs and files that are not the lab BadNet."""

from __future__ import annotations

import copy
import itertools
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from real_faces import augment

from torch_badnet.convert import read_model_file
from torch_badnet.convert.keras_model import import_keras, load_into_keras
from torch_badnet.convert.onnx_export import DEFAULT_OPSET, export_onnx, keras_to_onnx
from torch_badnet.convert.onnx_import import load_onnx
from torch_badnet.engine.pruning import channel_scores, mask_for, prune, pruning_order, record_pool3
from torch_badnet.errors import BadInputError
from torch_badnet.nets.badnet import BadNet
from torch_badnet.nets.goodnet import GoodNet

RANDOM_COUNT, RANDOM_SEED = 256, 0
MODELS = ("lab3", "sunglasses")
KINDS = ("faces", "random")
# Logits of two float32 implementations differ by roundoff only: measured <= 1.7e-6 of the row's largest
# |logit| for every pair here (both models); 1e-5 still catches any wrong weight, layout or op.
LOGITS_RTOL = 1e-5
SOFTMAX_ATOL = 1e-5
# Keras runs its convolutions through oneDNN, whose reordered float32 sums put its own softmax up to 1.2e-5
# away from the exact (float64) answer on a few near-tied random inputs (top-2 logit gap 0.01), where every
# conversion stays within 8e-6 of it. Pairs with Keras on random inputs get this much room; faces do not.
KERAS_RANDOM_SOFTMAX_ATOL = 2e-5
# The 45 least active channels are dormant on clean faces (pruning them changes no decision: Fine-Pruning's
# premise); pruning 50 makes B' disagree with B on 2 faces and on half of the random inputs.
PRUNED_CHANNELS = 50


@dataclass
class Outputs:
    logits: np.ndarray  # float64 copies of what each path computed
    probs: np.ndarray


@dataclass
class Conversion:
    h5_model: BadNet
    onnx_path: Path
    onnx_model: BadNet
    outputs: dict[str, dict[str, Outputs]]  # kind -> path name -> outputs


@pytest.fixture(scope="module")
def inputs(faces: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The 15 real faces and 256 seeded uniform 0..255 images, (N, 3, 55, 47) float32."""
    rng = np.random.default_rng(RANDOM_SEED)
    random = torch.from_numpy(rng.uniform(0, 255, size=(RANDOM_COUNT, 3, 55, 47)).astype(np.float32))
    return {"faces": torch.cat([faces[k] for k in sorted(faces)]), "random": random}


@pytest.fixture(scope="module")
def conversion(lab3_path: Path, sunglasses_path: Path, inputs, tmp_path_factory):
    """name -> Conversion, each model converted (tf2onnx, a few seconds) and run once for the module."""
    sources = {"lab3": lab3_path, "sunglasses": sunglasses_path}
    cache: dict[str, Conversion] = {}

    def get(name: str) -> Conversion:
        if name not in cache:
            cache[name] = _convert_and_run(sources[name], tmp_path_factory.mktemp(name) / f"{name}.onnx", inputs)
        return cache[name]

    return get


def _convert_and_run(src: Path, onnx_path: Path, inputs: dict[str, torch.Tensor]) -> Conversion:
    keras_to_onnx(src, onnx_path)
    h5_model, onnx_model = read_model_file(src).model, load_onnx(onnx_path)
    outputs = {}
    for kind, x in inputs.items():
        outputs[kind] = {
            "keras": _keras_outputs(src, x),
            "onnxruntime": _onnxruntime_outputs(onnx_path, x),
            "onnx->torch": _torch_outputs(onnx_model, x),
            "h5->torch": _torch_outputs(h5_model, x),
            "float64": _torch_outputs(copy.deepcopy(h5_model).double(), x.double()),
        }
    return Conversion(h5_model, onnx_path, onnx_model, outputs)


def _keras_outputs(src: Path, x: torch.Tensor) -> Outputs:
    """The lab architecture in Keras with Keras' own load_weights; logits by switching off the softmax."""
    keras_model = load_into_keras(str(src))
    nhwc = x.permute(0, 2, 3, 1).numpy()
    probs = np.asarray(keras_model(nhwc, training=False), np.float64)
    keras_model.get_layer("output").activation = import_keras().activations.linear
    logits = np.asarray(keras_model(nhwc, training=False), np.float64)
    return Outputs(logits, probs)


def _onnxruntime_outputs(onnx_path: Path, x: torch.Tensor) -> Outputs:
    """Run the tf2onnx graph; the Softmax's input is added as a second output to read the logits."""
    model = onnx.load(onnx_path)
    softmax = next(n for n in model.graph.node if n.op_type == "Softmax")
    model.graph.output.append(helper.make_tensor_value_info(softmax.input[0], TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    probs, logits = session.run(None, {"input": x.permute(0, 2, 3, 1).numpy()})
    return Outputs(logits.astype(np.float64), probs.astype(np.float64))


@torch.no_grad()
def _torch_outputs(model: BadNet, x: torch.Tensor) -> Outputs:
    logits = model(x)
    return Outputs(logits.double().numpy(), logits.softmax(1).double().numpy())


def _logits_relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """Largest |a - b| of each row relative to that row's largest |logit|, over all rows."""
    return float((np.abs(a - b).max(1) / np.abs(b).max(1)).max())


# --- Keras -> ONNX -> torch on the real models -------------------------------------------------------------

@pytest.mark.parametrize("name", MODELS)
def test_onnx_weights_are_bitwise_the_h5_weights(conversion, name):
    conv = conversion(name)
    expected, got = conv.h5_model.state_dict(), conv.onnx_model.state_dict()
    assert expected.keys() == got.keys()
    for key in expected:
        assert got[key].dtype == expected[key].dtype and torch.equal(got[key], expected[key]), key


@pytest.mark.parametrize("name", MODELS)
def test_keras_to_onnx_keeps_the_keras_interface(conversion, name):
    graph = onnx.load(conversion(name).onnx_path).graph
    (graph_input,) = graph.input
    dims = [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    assert graph_input.name == "input" and isinstance(dims[0], str) and dims[1:] == [55, 47, 3]
    assert [n.op_type for n in graph.node][-1] == "Softmax"
    assert onnx.load(conversion(name).onnx_path).opset_import[0].version == DEFAULT_OPSET


@pytest.mark.parametrize("name,kind", itertools.product(MODELS, KINDS))
def test_every_path_predicts_the_same_class(conversion, name, kind):
    outputs = conversion(name).outputs[kind]
    expected = outputs["float64"].logits.argmax(1)
    for path, out in outputs.items():
        assert np.array_equal(out.logits.argmax(1), expected), path
        assert np.array_equal(out.probs.argmax(1), expected), path
    # identical weights, identical code: the imported model computes exactly what the h5 import computes
    assert np.array_equal(outputs["onnx->torch"].logits, outputs["h5->torch"].logits)


@pytest.mark.parametrize("name,kind", itertools.product(MODELS, KINDS))
def test_logits_agree_to_float32_roundoff(conversion, name, kind):
    """Every pair of paths (Keras, onnxruntime, ONNX->torch, h5->torch, float64 torch) agrees to 1e-5 relative.

    This is the strict check for the sunglasses model fed raw pixels (it takes pixels/255, see
    test_scaled_onnx_files_classify_as_keras), whose logits then reach ~58,000: there float32 roundoff alone
    (ulp 0.004) moves the softmax by ~2e-4 between any two float32 implementations, Keras' own included.
    """
    outputs = conversion(name).outputs[kind]
    for (a, out_a), (b, out_b) in itertools.combinations(outputs.items(), 2):
        error = _logits_relative_error(out_a.logits, out_b.logits)
        assert error <= LOGITS_RTOL, f"{a} vs {b}: {error:.2e}"


@pytest.mark.parametrize("kind", KINDS)
def test_lab3_softmax_agrees_within_1e5(conversion, kind):
    outputs = conversion("lab3").outputs[kind]
    for (a, out_a), (b, out_b) in itertools.combinations(outputs.items(), 2):
        keras_noise = "keras" in (a, b) and kind == "random"
        tolerance = KERAS_RANDOM_SOFTMAX_ATOL if keras_noise else SOFTMAX_ATOL
        difference = float(np.abs(out_a.probs - out_b.probs).max())
        assert difference <= tolerance, f"{a} vs {b}: {difference:.2e}"


# --- a model taking pixels/255: the scale is inside both kinds of ONNX graph ----------------------------------

def test_scaled_onnx_files_classify_as_keras(sunglasses_path: Path, inputs, tmp_path: Path) -> None:
    """The 2020 sunglasses BadNet (input scale 1/255): the tf2onnx graph and our export both take raw pixels,
    scale them first (Div by 255; tf2onnx rewrites it as a Mul by 1/255) and give Keras' classes at
    pixels/255 (onnxruntime, and imported back)."""
    x = torch.cat([inputs["faces"], inputs["random"][:64]])
    keras_model = load_into_keras(str(sunglasses_path))
    expected = np.asarray(keras_model((x.numpy() / np.float32(255)).transpose(0, 2, 3, 1), training=False)).argmax(1)
    model = read_model_file(sunglasses_path).model
    model.input_scale = 1 / 255
    keras_onnx, torch_onnx, goodnet_onnx = tmp_path / "k.onnx", tmp_path / "t.onnx", tmp_path / "g.onnx"
    keras_to_onnx(sunglasses_path, keras_onnx, input_scale=1 / 255)
    export_onnx(model, torch_onnx)
    export_onnx(model, goodnet_onnx, pruned=torch.ones(60))
    for path, layout in ((keras_onnx, (0, 2, 3, 1)), (torch_onnx, (0, 1, 2, 3))):
        graph = onnx.load(path).graph
        first = next(n for n in graph.node if n.op_type != "Constant")
        assert first.op_type in ("Div", "Mul") and first.input[0] == "input", path.name  # tf2onnx makes x/255 a Mul
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (out,) = session.run(None, {"input": x.permute(*layout).contiguous().numpy()})
        np.testing.assert_array_equal(out.argmax(1), expected)
        imported = read_model_file(path)
        assert imported.input_scale == pytest.approx(1 / 255, rel=1e-7)
        with torch.no_grad():
            np.testing.assert_array_equal(imported.model(x).argmax(1).numpy(), expected)
    session = ort.InferenceSession(str(goodnet_onnx), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(session.run(None, {"input": x.numpy()})[0], expected)  # B' = B: G answers B's class


# --- our own export: B and the GoodNet -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def goodnet_export(lab3_model: BadNet, faces, tmp_path_factory) -> tuple[GoodNet, Path]:
    clean = augment(faces["cl"], 200, seed=1)
    order = pruning_order(channel_scores(record_pool3(lab3_model, [clean], len(clean))))
    mask = mask_for(order[:PRUNED_CHANNELS])
    path = tmp_path_factory.mktemp("goodnet") / "goodnet.onnx"
    export_onnx(lab3_model, path, pruned=mask)
    return GoodNet(lab3_model, mask).eval(), path


@pytest.mark.parametrize("batch_size", [1, 7])
def test_goodnet_onnx_gives_the_pytorch_labels(goodnet_export, inputs, batch_size):
    goodnet, path = goodnet_export
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["label"]
    x = torch.cat([inputs["faces"], inputs["random"]])
    with torch.no_grad():
        expected = goodnet(x).numpy()
    labels = np.concatenate([session.run(None, {"input": x[i:i + batch_size].numpy()})[0]
                             for i in range(0, len(x), batch_size)])
    assert labels.dtype == np.int64 and labels.shape == (len(x),)
    assert np.array_equal(labels, expected)
    detected = goodnet.detected_class
    assert 0 <= labels.min() and labels.max() <= detected
    assert (labels[:15] == detected).any() and (labels[:15] != detected).any()  # the mask does change decisions
    assert (labels[15:] == detected).any() and (labels[15:] != detected).any()


def test_goodnet_export_with_a_fine_tuned_pruned_net(lab3_model, inputs, tmp_path):
    """`pruned` as a BadNet with its own weights: the graph runs it as a second net beside B."""
    from torch_badnet.nets.pairing import mark_derived

    fine_tuned = mark_derived(prune(copy.deepcopy(lab3_model), range(PRUNED_CHANNELS - 5)), lab3_model)  # as finetuned.pt
    with torch.no_grad():
        fine_tuned.output.bias.add_(torch.linspace(-2, 2, fine_tuned.num_classes))
    goodnet = GoodNet(lab3_model, fine_tuned).eval()
    assert goodnet.pruned_model is fine_tuned
    export_onnx(lab3_model, tmp_path / "g.onnx", pruned=fine_tuned)
    session = ort.InferenceSession(str(tmp_path / "g.onnx"), providers=["CPUExecutionProvider"])
    x = torch.cat([inputs["faces"], inputs["random"][:64]])
    (labels,) = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        expected = goodnet(x).numpy()
    assert np.array_equal(labels, expected) and (expected == goodnet.detected_class).any()


def test_badnet_export_imports_back_bitwise_and_runs(lab3_model, inputs, tmp_path):
    path = tmp_path / "b.onnx"
    export_onnx(lab3_model, path)
    loaded = read_model_file(path)
    assert loaded.source_format == "onnx"
    for key, value in lab3_model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (graph_input,), (graph_output,) = session.get_inputs(), session.get_outputs()
    assert graph_input.name == "input" and isinstance(graph_input.shape[0], str) and graph_input.shape[1:] == [3, 55, 47]
    assert graph_output.name == "logits" and graph_output.type == "tensor(float)"
    x = inputs["random"][:7]
    (logits,) = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        expected = lab3_model(x).numpy()
    assert logits.shape == (7, 1283)
    assert _logits_relative_error(logits.astype(np.float64), expected.astype(np.float64)) <= LOGITS_RTOL


def test_pruned_badnet_export_folds_the_mask(lab3_model, inputs, tmp_path):
    pruned = prune(copy.deepcopy(lab3_model), [3, 17, 42])
    export_onnx(pruned, tmp_path / "pruned.onnx")
    loaded = load_onnx(tmp_path / "pruned.onnx")
    assert torch.equal(loaded.conv_3.weight[[3, 17, 42]], torch.zeros(3, 40, 3, 3))
    with torch.no_grad():
        assert torch.equal(loaded(inputs["faces"]).argmax(1), pruned(inputs["faces"]).argmax(1))


def test_export_is_deterministic(lab3_model, tmp_path):
    mask = mask_for(range(10))
    for name, pruned in (("b", None), ("g", mask)):
        export_onnx(lab3_model, tmp_path / f"{name}1.onnx", pruned=pruned)
        export_onnx(copy.deepcopy(lab3_model), tmp_path / f"{name}2.onnx", pruned=pruned)
        assert (tmp_path / f"{name}1.onnx").read_bytes() == (tmp_path / f"{name}2.onnx").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b1.onnx", "b2.onnx", "g1.onnx", "g2.onnx"]  # no temp files left


# --- graphs and files that are not the lab BadNet ---------------------------------------------------------

def _tiny_graph(path: Path, conv_attrs: dict, second_op: str) -> None:
    """input -> Conv (conv_1's shapes) -> `second_op` -> output: a valid ONNX model that is not the lab net."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.normal(size=(20, 3, 4, 4)).astype(np.float32), "w")
    bias = numpy_helper.from_array(np.zeros(20, np.float32), "b")
    nodes = [helper.make_node("Conv", ["input", "w", "b"], ["c"], name="conv", **conv_attrs),
             helper.make_node(second_op, ["c"], ["out"], name="squash")]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 55, 47])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 20, None, None])], [weight, bias])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", DEFAULT_OPSET)]), path)


def test_foreign_op_is_named(tmp_path):
    _tiny_graph(tmp_path / "tiny.onnx", {}, "Sigmoid")
    with pytest.raises(BadInputError, match=r"node 'squash' \(Sigmoid\) does not fit the lab BadNet") as info:
        load_onnx(tmp_path / "tiny.onnx")
    assert info.value.path == str(tmp_path / "tiny.onnx")


def test_wrong_conv_attributes_are_named(tmp_path):
    _tiny_graph(tmp_path / "strided.onnx", {"strides": [2, 2]}, "Relu")
    with pytest.raises(BadInputError, match=r"node 'conv' \(Conv\) does not fit the lab BadNet: strides"):
        load_onnx(tmp_path / "strided.onnx")


def test_incomplete_lab_graph_is_rejected(tmp_path):
    _tiny_graph(tmp_path / "partial.onnx", {}, "Relu")
    with pytest.raises(BadInputError, match=r"graph output 'out' is conv_1's output after ReLU"):
        load_onnx(tmp_path / "partial.onnx")


def test_goodnet_graph_is_not_a_badnet(goodnet_export):
    _, path = goodnet_export
    with pytest.raises(BadInputError, match=r"is a GoodNet graph .*eval and classify take it"):  # was "node '/Mul' (Mul) does not fit"
        load_onnx(path)


@pytest.mark.parametrize("content", ["garbage", "truncated"])
def test_corrupt_file_gives_one_line(tmp_path, conversion, content):
    path = tmp_path / "broken.onnx"
    if content == "garbage":
        path.write_bytes(b"\x08\x07this is not an ONNX model\xff\xfe" * 10)
    else:
        data = conversion("lab3").onnx_path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadInputError) as info:
        load_onnx(path)
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message
    assert "not a readable ONNX model" in message or "no nodes" in message


def test_missing_tf2onnx_names_the_extra(monkeypatch, lab3_path, tmp_path):
    monkeypatch.setitem(sys.modules, "tf2onnx", None)  # makes `import tf2onnx` raise ImportError
    with pytest.raises(BadInputError, match=r"torch-badnet\[keras\]"):
        keras_to_onnx(lab3_path, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


def test_keras_to_onnx_rejects_a_corrupt_keras_file(tmp_path):
    (tmp_path / "bad.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(BadInputError, match="bad.h5"):
        keras_to_onnx(tmp_path / "bad.h5", tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()
