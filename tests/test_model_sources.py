"""Issue 33 items 1-5: every model source on the command line. The same seeded ResNet as an nn.Module (the API),
a state_dict with --arch (.pt and .safetensors), a torch.export program (.pt2) and an ONNX graph; ONNX graphs of
several architectures against onnxruntime; pickled models refused unless --allow-pickle; TorchScript refused
wherever a model is read or pruned; each failure one line.
"""

from __future__ import annotations

import copy
import csv
import io
import pickle
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import read_csv
from model_zoo import head_resnet, mobilenet_v2, one_logit, preact_resnet, vgg_bn
from test_bad_input import assert_one_line_error
from torch_nets import resnet

import torch_badnet as tb
from torch_badnet.convert.loading import read_model_file
from torch_badnet.convert.onnx_export import quiet_exporter
from torch_badnet.data.lab_sets import write_lab_h5
from torch_badnet.errors import BadInputError

ARCH = ["--arch", "model_zoo:head_resnet", "--arch-kwargs", '{"seed": 3}']


def export_onnx_file(model: torch.nn.Module, path: Path, size: int = 32) -> Path:
    with quiet_exporter():
        torch.onnx.export(model, (torch.randn(1, 3, size, size),), str(path), dynamo=False, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17)
    return path


def export_pt2(model: torch.nn.Module, path: Path, dynamic: bool = True) -> Path:
    shapes = ({0: torch.export.Dim("batch")},) if dynamic else None
    torch.export.save(torch.export.export(model, (torch.randn(2, 3, 32, 32),), dynamic_shapes=shapes), str(path))
    return path


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict:
    """The seeded ResNet in every form, and lab-layout data (N, 3, 32, 32) it classifies with every class."""
    root = tmp_path_factory.mktemp("sources")
    model = head_resnet(seed=3)
    torch.save(model.state_dict(), root / "weights.pt")
    from safetensors.torch import save_file

    save_file(model.state_dict(), str(root / "weights.safetensors"))
    export_pt2(model, root / "resnet.pt2")
    export_onnx_file(model, root / "resnet.onnx")
    g = torch.Generator().manual_seed(7)
    x = torch.randn(300, 3, 32, 32, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[::5] = (y[::5] + 1) % 10  # some errors, so pruning has accuracy to lose
    bd = x[:100].clone()
    bd[:, :, -6:, -6:] = 3.0
    files = {}
    for name, (data, labels) in {"clean_valid": (x[:200], y[:200]), "clean_test": (x[200:], y[200:]),
                                 "poisoned_valid": (bd[:60], torch.zeros(60, dtype=torch.long)),
                                 "poisoned_test": (bd[60:], torch.zeros(40, dtype=torch.long))}.items():
        files[name] = root / f"{name}.h5"
        write_lab_h5(files[name], data.numpy(), labels.numpy())
    return {"root": root, "model": model, "files": files, "x": x}


def sweep(cli, sources, model: Path, out: Path, *extra) -> Path:
    f = sources["files"]
    code, _, err = cli("sweep", "--model", model, "--clean-valid", f["clean_valid"], "--poisoned-valid", f["poisoned_valid"],
                       "--clean-test", f["clean_test"], "--poisoned-test", f["poisoned_test"], "--out", out, "--no-plot",
                       "--thresholds", "2", "10", *extra)
    assert code == 0, err
    return out


# --- the end-to-end proof: one ResNet, every source ------------------------------------------------------------

@pytest.mark.slow  # whole sweeps of a ResNet
def test_module_pt2_and_arch_give_byte_equal_sweeps(cli, sources, tmp_path):
    f, root = sources["files"], sources["root"]
    api = tb.prune_sweep(sources["model"], str(f["clean_valid"]), [str(f["poisoned_valid"])], str(f["clean_test"]),
                         [str(f["poisoned_test"])], thresholds=(2, 10))
    api.save(tmp_path / "api", plot=False)
    expected = (tmp_path / "api" / "sweep.csv").read_bytes()
    assert len(read_csv(tmp_path / "api" / "sweep.csv")) > 10
    for name, model, extra in [("pt", root / "weights.pt", ARCH), ("st", root / "weights.safetensors", ARCH),
                               ("pt2", root / "resnet.pt2", [])]:
        out = sweep(cli, sources, model, tmp_path / name, *extra)
        assert (out / "sweep.csv").read_bytes() == expected, name


@pytest.mark.slow  # whole sweeps of a ResNet
def test_onnx_source_labels_equal_onnxruntime_and_its_sweep_differs_only_at_near_ties(cli, sources, tmp_path):
    import onnxruntime as ort

    path = sources["root"] / "resnet.onnx"
    net = read_model_file(path).model
    x = sources["x"]
    with torch.no_grad():
        ours = net(x)
    theirs = torch.from_numpy(ort.InferenceSession(str(path)).run(None, {"input": x.numpy()})[0])
    assert torch.equal(ours.argmax(1), theirs.argmax(1))
    assert float((ours.softmax(1) - theirs.softmax(1)).abs().max()) <= 1e-5
    onnx_rows = read_csv(sweep(cli, sources, path, tmp_path / "onnx") / "sweep.csv")
    module_rows = read_csv(sweep(cli, sources, sources["root"] / "weights.pt", tmp_path / "arch", *ARCH) / "sweep.csv")
    assert [r["channel"] for r in onnx_rows] == [r["channel"] for r in module_rows]  # the same ranking
    differing = [i for i, (a, b) in enumerate(zip(onnx_rows, module_rows)) if a != b]
    if differing:  # only where a label is a near tie (BatchNorm folded into the convs by the exporter)
        model = sources["model"]
        logits = model(x).detach().sort(1, descending=True).values
        assert float((logits[:, 0] - logits[:, 1]).min()) < 1e-5, differing


@pytest.mark.slow  # whole sweeps of a ResNet
def test_pt2_keeps_module_names_for_layer_and_lists_conv_layers(cli, sources, tmp_path):
    net = read_model_file(sources["root"] / "resnet.pt2").model
    assert isinstance(net.get_submodule("layer4.0.conv2"), torch.nn.Conv2d)
    assert sorted(net.state_dict()) == sorted(sources["model"].state_dict())
    assert torch.equal(net(sources["x"][:50]), sources["model"](sources["x"][:50]))
    api = tb.prune_sweep(sources["model"], str(sources["files"]["clean_valid"]), [str(sources["files"]["poisoned_valid"])],
                         layer="layer4.0.conv2", thresholds=(10,))
    api.save(tmp_path / "api", plot=False)
    out = sweep(cli, sources, sources["root"] / "resnet.pt2", tmp_path / "pt2", "--layer", "layer4.0.conv2")
    expected = [{k: v for k, v in r.items()} for r in read_csv(tmp_path / "api" / "sweep.csv")]
    got = [{k: v for k, v in r.items() if k in expected[0]} for r in read_csv(out / "sweep.csv")]
    assert got == expected
    code, _, err = cli("sweep", "--model", sources["root"] / "resnet.pt2", "--clean-valid", sources["files"]["clean_valid"],
                       "--poisoned-valid", sources["files"]["poisoned_valid"], "--out", tmp_path / "bad", "--layer", "layer9")
    assert_one_line_error((code, "", err), "--layer", "layer4.0.conv2")
    assert not (tmp_path / "bad").exists()


# --- ONNX graphs of other architectures against onnxruntime ----------------------------------------------------

@pytest.mark.parametrize("build", [resnet, vgg_bn, mobilenet_v2, preact_resnet, head_resnet])
def test_onnx_architectures_agree_with_onnxruntime(build, tmp_path):
    """Labels equal onnxruntime's; probabilities within 1e-5 of it, except where onnxruntime itself is further
    than that from the exact (float64) model: then ours must be at least as close to the exact ones as its."""
    import onnxruntime as ort

    model = build()
    path = export_onnx_file(model, tmp_path / "net.onnx")
    net = read_model_file(path).model
    assert type(net).__name__ == "OnnxGraphNet"
    convs = [n for n, m in net.named_modules() if isinstance(m, torch.nn.Conv2d)]
    assert set(convs) <= {n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}  # the module's own names
    x = torch.randn(200, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = net(x).double().softmax(1)
        exact = model.double()(x.double()).softmax(1)
    theirs = torch.from_numpy(ort.InferenceSession(str(path)).run(None, {"input": x.numpy()})[0]).double().softmax(1)
    assert torch.equal(ours.argmax(1), theirs.argmax(1))
    gap, ort_error = float((ours - theirs).abs().max()), float((theirs - exact).abs().max())
    assert gap <= 1e-5 or (float((ours - exact).abs().max()) <= ort_error and gap <= 2 * ort_error), (gap, ort_error)


def test_lab_onnx_graph_keeps_its_own_importer(lab3_path, tmp_path):
    from torch_badnet.convert.onnx_export import export_onnx
    from torch_badnet.nets.badnet import BadNet

    export_onnx(read_model_file(lab3_path).model, tmp_path / "lab.onnx")
    loaded = read_model_file(tmp_path / "lab.onnx")
    assert isinstance(loaded.model, BadNet) and loaded.source_format == "onnx"


def test_onnx_op_without_converter_is_named(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    nodes = [helper.make_node("Conv", ["input", "w"], ["c"], name="/conv/Conv"),
             helper.make_node("Erf", ["c"], ["e"], name="/act/Erf"),
             helper.make_node("GlobalAveragePool", ["e"], ["p"], name="/pool/GlobalAveragePool"),
             helper.make_node("Flatten", ["p"], ["out"], name="/Flatten")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 4])], [weight])
    path = tmp_path / "erf.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    with pytest.raises(BadInputError, match=r"node '/act/Erf' \(Erf\): op Erf has no converter") as info:
        read_model_file(path)
    assert "\n" not in str(info.value)


# --- --arch with a state_dict: each failure one line -------------------------------------------------------------

@pytest.mark.parametrize("arch, kwargs, fragment", [
    ("no_such_pkg.models:net", None, "--arch: no module named 'no_such_pkg'"),
    ("model_zoo:no_such_callable", None, "--arch: module 'model_zoo' has no 'no_such_callable'"),
    ("model_zoo", None, "is not module:callable"),
    ("model_zoo:head_resnet", "[1]", "--arch-kwargs: not a JSON object"),
    ("model_zoo:head_resnet", '{"colour": 1}', "--arch-kwargs: model_zoo:head_resnet(**{\"colour\": 1}) raised TypeError"),
])
def test_arch_errors_are_one_line(cli, sources, tmp_path, arch, kwargs, fragment):
    extra = ["--arch", arch] + (["--arch-kwargs", kwargs] if kwargs else [])
    code, out, err = sweep_raw(cli, sources, sources["root"] / "weights.pt", tmp_path / "out", *extra)
    assert code == 2 and err.count("\n") == 1 and fragment in err, err
    assert not (tmp_path / "out").exists()


def sweep_raw(cli, sources, model, out, *extra):
    f = sources["files"]
    return cli("sweep", "--model", model, "--clean-valid", f["clean_valid"], "--poisoned-valid", f["poisoned_valid"],
               "--out", out, *extra)


@pytest.mark.parametrize("change, fragment", [
    (lambda s: s.pop("fc.bias"), "missing key 'fc.bias'"),
    (lambda s: s.update(extra=torch.zeros(1)), "unexpected key 'extra'"),
    (lambda s: s.update({"fc.weight": torch.zeros(3, 64)}), "'fc.weight' has shape (3, 64), the module's is (10, 64)"),
])
@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_state_dict_that_does_not_fit_names_the_first_key(cli, sources, tmp_path, change, fragment, suffix):
    state = dict(sources["model"].state_dict())
    change(state)
    path = tmp_path / f"w{suffix}"
    if suffix == ".pt":
        torch.save(state, path)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    code, _, err = sweep_raw(cli, sources, path, tmp_path / "out", *ARCH)
    assert_one_line_error((code, "", err), path, f"does not fit model_zoo:head_resnet: {fragment}")
    assert not (tmp_path / "out").exists()


def test_a_state_dict_without_arch_says_what_takes_it(cli, sources, tmp_path):
    for name in ("weights.pt", "weights.safetensors"):
        code, _, err = sweep_raw(cli, sources, sources["root"] / name, tmp_path / "out")
        assert_one_line_error((code, "", err), sources["root"] / name, "is a state_dict")
        assert "--arch module:callable" in err and "convert it with" not in err


def test_torch_sources_refuse_preprocessing_flags(cli, sources, tmp_path):
    code, _, err = sweep_raw(cli, sources, sources["root"] / "resnet.pt2", tmp_path / "out", "--rescale", "1/255")
    assert_one_line_error((code, "", err), "--rescale", "takes its data as given")


# --- whole pickled models ----------------------------------------------------------------------------------------

@pytest.mark.slow  # whole sweeps of a ResNet
def test_pickled_model_is_refused_unless_allowed(cli, sources, tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(sources["model"], path)
    code, _, err = sweep_raw(cli, sources, path, tmp_path / "out")
    assert_one_line_error((code, "", err), path, "is a pickled Python object")
    assert "--arch module:callable" in err and ".pt2" in err and "--allow-pickle" in err and "\x1b" not in err
    assert not (tmp_path / "out").exists()
    out = tmp_path / "allowed"
    code, _, err = sweep_raw(cli, sources, path, out, "--allow-pickle", "--no-plot")
    assert code == 0 and err.splitlines()[0] == f"warning: {path}: --allow-pickle: unpickling a whole model runs code " \
                                                "stored in the file; use it only for a file you trust"
    reference = sweep_raw(cli, sources, sources["root"] / "weights.pt", tmp_path / "arch", *ARCH, "--no-plot")
    assert reference[0] == 0
    assert (out / "sweep.csv").read_bytes() == (tmp_path / "arch" / "sweep.csv").read_bytes()


def test_pickled_payload_never_runs_without_the_flag(cli, sources, tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        torch.save(Payload(), fh, pickle_module=pickle)
    code, _, err = sweep_raw(cli, sources, path, tmp_path / "out")
    assert_one_line_error((code, "", err), path, "is a pickled Python object")
    assert not marker.exists()


# --- .pt2 programs: no pickle, a free batch ----------------------------------------------------------------------

def test_pt2_with_a_pickled_payload_is_refused_without_running_it(sources, tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    source = zipfile.ZipFile(sources["root"] / "resnet.pt2")
    path = tmp_path / "evil.pt2"
    with zipfile.ZipFile(path, "w") as out:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename.endswith("sample_inputs/model.pt"):
                buffer = io.BytesIO()
                torch.save(Payload(), buffer, pickle_module=pickle)
                data = buffer.getvalue()
            out.writestr(item, data)
    with pytest.raises(BadInputError, match="stores pickled Python objects"):
        read_model_file(path)
    assert not marker.exists()


def test_pt2_with_a_fixed_batch_is_refused(sources, tmp_path):
    path = export_pt2(sources["model"], tmp_path / "fixed.pt2", dynamic=False)
    with pytest.raises(BadInputError, match=r"exported for batches of exactly 2; export it with a dynamic batch"):
        read_model_file(path)



# --- B, B' and the GoodNet of every source: pruned.pt records the rebuild, export round-trips ---------------------

@pytest.mark.slow  # whole sweeps of a ResNet
@pytest.mark.parametrize("source", ["arch", "pt2", "onnx"])
def test_pruned_pt_rebuilds_and_export_round_trips(cli, sources, tmp_path, source):
    import onnxruntime as ort

    from torch_badnet.engine.saving import load_masked, read_masked

    root = sources["root"]
    model, extra = {"arch": (root / "weights.pt", ARCH), "pt2": (root / "resnet.pt2", []),
                    "onnx": (root / "resnet.onnx", [])}[source]
    out = sweep(cli, sources, model, tmp_path / "out", *extra)
    pruned = next(out.glob("models/X=*/pruned.pt"))
    assert read_masked(pruned)["input_shape"] == [3, 32, 32]  # the data's image shape, for export and classify
    record = read_masked(pruned)["architecture"]
    assert record["kind"] == {"arch": "arch", "pt2": "pt2", "onnx": "onnx-graph"}[source]
    assert record["arch"] == "model_zoo:head_resnet" if source == "arch" else record["path"] == str(model)
    if source == "arch":  # the file never picks the code to import: the caller names the callable
        with pytest.raises(BadInputError, match=r"holds a B' of --arch model_zoo:head_resnet; a file never chooses"):
            load_masked(pruned)
        with pytest.raises(BadInputError, match=r"holds a B' of --arch model_zoo:head_resnet, not of os:system"):
            load_masked(pruned, arch="os:system")
    b_prime = load_masked(pruned, arch="model_zoo:head_resnet" if source == "arch" else None)  # rebuilt from the record
    x = sources["x"][:120]
    shape = ["--input-shape", 3, 32, 32] if source == "arch" else []  # the GoodNet's from pruned.pt
    for name, flags in [("b", shape), ("g", ["--pruned", pruned])]:
        code, _, err = cli("export", "--model", model, *extra, *flags, "-o", tmp_path / f"{name}.onnx")
        assert code == 0, err
        taken = f"note: input shape 3 32 32 (C H W) from {pruned}, the images its sweep ran on (--input-shape overrides it)"
        assert (taken in err.splitlines()) == (source == "arch" and name == "g"), err
        ran = ort.InferenceSession(str(tmp_path / f"{name}.onnx")).run(None, {"input": x.numpy()})[0]
        base = read_model_file(model, *(extra[1::2])).model
        expected = base(x).argmax(1) if name == "b" else tb.GoodNet(base, b_prime, allow_unpaired=True)(x)
        got = torch.from_numpy(ran).argmax(1) if name == "b" else torch.from_numpy(ran)
        assert torch.equal(got, expected), name
    back = read_model_file(tmp_path / "b.onnx").model  # our own export reads back, with the same labels
    assert torch.equal(back(x).argmax(1), read_model_file(model, *(extra[1::2])).model(x).argmax(1))
    import h5py

    code, out_text, err = cli("eval", "--model", model, *extra, "--pruned", pruned, "--clean", sources["files"]["clean_test"], "--json")
    assert code == 0, err
    with h5py.File(sources["files"]["clean_test"]) as f:
        data, labels = torch.from_numpy(f["data"][:]), torch.from_numpy(f["label"][:]).long()
    goodnet = tb.GoodNet(read_model_file(model, *(extra[1::2])).model, b_prime, allow_unpaired=True)
    import json

    assert json.loads(out_text)["clean_accuracy"] == pytest.approx(100.0 * float((goodnet(data) == labels).float().mean()))


def test_export_and_classify_take_the_input_shape_a_pruned_pt_records_or_ask_for_it(cli, sources, tmp_path):
    """An --arch module records no input shape: with --pruned, the one its pruned.pt records (the sweep's data's)
    is used, with a note; without a record, one line asks for --input-shape."""
    from PIL import Image

    from torch_badnet.engine.prunable import MaskedNet
    from torch_badnet.engine.saving import save_masked

    mask = torch.ones(64)
    mask[:3] = 0
    pruned = MaskedNet(copy.deepcopy(sources["model"]), "head", mask)  # (the hook would stay on the fixture's module)
    save_masked(pruned, tmp_path / "unrecorded.pt")
    pruned.input_shape = (3, 32, 32)
    save_masked(pruned, tmp_path / "pruned.pt")
    image = tmp_path / "i.png"
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(image)
    model = ["--model", sources["root"] / "weights.pt", *ARCH]
    expected = int(tb.GoodNet(sources["model"], pruned, allow_unpaired=True)(torch.full((1, 3, 32, 32), 90.0))[0])
    code, out, err = cli("classify", *model, "--pruned", tmp_path / "pruned.pt", image)
    assert code == 0 and out.split() == [str(image), str(expected)], err
    assert err.splitlines()[-1] == (f"note: input shape 3 32 32 (C H W) from {tmp_path / 'pruned.pt'}, the images its "
                                    "sweep ran on (--input-shape overrides it)")
    code, _, err = cli("export", *model, "--pruned", tmp_path / "pruned.pt", "-o", tmp_path / "g.onnx")
    assert code == 0 and "input 'input' (N,3,32,32)" in _, err
    for command, tail in [("classify", [image]), ("export", ["-o", tmp_path / "no.onnx"])]:
        for flags, nor in [([], ""), (["--pruned", tmp_path / "unrecorded.pt"], f" (nor does {tmp_path / 'unrecorded.pt'})")]:
            assert_one_line_error(cli(command, *model, *flags, *tail), f"error: --input-shape: {sources['root'] / 'weights.pt'}'s "
                                  f"module does not record its input shape{nor}: give --input-shape C H W")
    assert not (tmp_path / "no.onnx").exists()


def test_convert_takes_arch_to_pt_and_onnx_and_both_round_trip(cli, sources, tmp_path):
    """`convert weights --arch` writes .onnx (given --input-shape) or a .pt recording the callable, its kwargs and
    the input shape; the .pt reads back with the same --arch alone (no kwargs, no shape), never without it."""
    import onnxruntime as ort

    from torch_badnet.data.files import file_sha256

    root, x = sources["root"], sources["x"][:50]
    expected = sources["model"](x)
    safetensors = [root / "weights.safetensors", *ARCH]
    code, out, err = cli("convert", *safetensors, "--input-shape", 3, 32, 32, "-o", tmp_path / "m.pt")
    assert code == 0 and out.strip() == (f"wrote {tmp_path / 'm.pt'} (10 classes, input 3 32 32, from arch {root / 'weights.safetensors'}, "
                                          f"sha256 {file_sha256(root / 'weights.safetensors')[:12]}...)"), err
    back = read_model_file(tmp_path / "m.pt", "model_zoo:head_resnet").model  # kwargs and shape from the file
    assert torch.equal(back(x), expected) and back.input_shape == (3, 32, 32)
    code, out, err = cli("convert", tmp_path / "m.pt", "--arch", "model_zoo:head_resnet", "-o", tmp_path / "m.onnx")
    assert code == 0, err
    ran = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"input": x.numpy()})[0]
    assert torch.equal(torch.from_numpy(ran).argmax(1), expected.argmax(1))
    code, out, err = cli("convert", tmp_path / "m.pt", "--arch", "model_zoo:head_resnet", "-o", tmp_path / "again.pt")
    assert code == 0 and (tmp_path / "again.pt").read_bytes() != b"", err
    assert torch.equal(read_model_file(tmp_path / "again.pt", "model_zoo:head_resnet").model(x), expected)
    refusals = [(["convert", *safetensors, "-o", tmp_path / "no.onnx"], "error: --input-shape: ", "does not record its input shape"),
                (["convert", *safetensors, "-o", tmp_path / "no.h5"], "no.h5: ", "has no Keras form: write .pt or .onnx"),
                (["convert", root / "resnet.pt2", "-o", tmp_path / "no.pt"], "no.pt: ",
                 "a .pt checkpoint is written for an --arch model only"),
                (["sweep", "--model", tmp_path / "m.pt", "--clean-valid", sources["files"]["clean_valid"], "--poisoned-valid",
                  sources["files"]["poisoned_valid"], "--out", tmp_path / "no"],
                 "m.pt: holds the weights of your own module: give --arch model_zoo:head_resnet", "never by one a file holds"),
                (["classify", "--model", tmp_path / "m.pt", "--arch", "model_zoo:vgg_bn", tmp_path / "i.png"],
                 "m.pt: holds the weights of --arch model_zoo:head_resnet, not of model_zoo:vgg_bn")]
    for args, *fragments in refusals:
        assert_one_line_error(cli(*args), *fragments)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("no")]


# --- batch: a manifest mixing every source ---------------------------------------------------------------------

@pytest.mark.slow  # whole sweeps of a ResNet, a local Ray cluster
def test_batch_mixing_keras_onnx_pt2_and_arch_rows_equals_separate_sweeps_locally_and_on_ray(cli, sources, tmp_path, lab3_path,
                                                                                            lab_files, ray_cluster):
    """Issue 33's proof. No PYTHONPATH is set: the workers (the local pool's and Ray's, whose processes do not see
    the tests' folder) import --arch's module from where this process imports it."""
    import os
    import sys

    assert "model_zoo" not in os.environ.get("PYTHONPATH", "")
    assert not any(Path(p, "model_zoo.py").is_file() for p in ray_cluster.get(ray_cluster.remote(lambda: sys.path).remote()))
    root, f = sources["root"], sources["files"]
    torch_data = {k: str(v) for k, v in f.items()}
    rows = [{"name": "keras", "model": str(lab3_path), **{k: str(v) for k, v in lab_files.items()}, "max_steps": "6"},
            {"name": "onnx", "model": str(root / "resnet.onnx"), **torch_data},
            {"name": "pt2", "model": str(root / "resnet.pt2"), **torch_data},
            {"name": "arch", "model": str(root / "weights.pt"), "arch": "model_zoo:head_resnet", "arch_kwargs": "'{\"seed\": 3}'",
             **torch_data}]
    manifest = tmp_path / "models.csv"
    with open(manifest, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(dict.fromkeys(k for row in rows for k in row)))
        writer.writeheader()
        writer.writerows(rows)
    runners = {"local": ["--workers", 2], "ray": ["--ray", "auto"]}
    for runner, flags in runners.items():
        code, _, err = cli("batch", manifest, "--out", tmp_path / runner, *flags, "--no-plot", "--thresholds", "2", "10")
        batch_rows = read_csv(tmp_path / runner / "batch.csv")
        assert [r["status"] for r in batch_rows] == ["done"] * 4, (runner, [r["error"] for r in batch_rows])
        assert code == 0, err
    singles = {"keras": ["--model", lab3_path, *[a for k, v in lab_files.items() for a in (f"--{k.replace('_', '-')}", v)],
                         "--max-steps", 6],
               "onnx": ["--model", root / "resnet.onnx"], "pt2": ["--model", root / "resnet.pt2"],
               "arch": ["--model", root / "weights.pt", *ARCH]}
    for name, args in singles.items():
        data = [] if name == "keras" else [a for k, v in f.items() for a in (f"--{k.replace('_', '-')}", v)]
        code, _, err = cli("sweep", *args, *data, "--out", tmp_path / name, "--no-plot", "--thresholds", "2", "10")
        assert code == 0, err
        assert len(read_csv(tmp_path / name / "sweep.csv")) > 6, name
        for runner in runners:
            assert (tmp_path / runner / name / "sweep.csv").read_bytes() == (tmp_path / name / "sweep.csv").read_bytes(), (runner, name)


@pytest.mark.slow  # whole sweeps of a ResNet
def test_classify_and_finetune_take_a_model_of_any_source(cli, sources, tmp_path):
    from PIL import Image

    root = sources["root"]
    pixels = (torch.rand(2, 32, 32, 3, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8).numpy()
    images = []
    for k, image in enumerate(pixels):
        images.append(tmp_path / f"i{k}.png")
        Image.fromarray(image).save(images[-1])
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float()
    expected = [f"{p}\t{int(label)}" for p, label in zip(images, sources["model"](x).argmax(1))]
    for model, extra in [(root / "resnet.pt2", []), (root / "weights.pt", [*ARCH, "--input-shape", 3, 32, 32])]:
        code, out, err = cli("classify", "--model", model, *extra, *images)
        assert code == 0 and out.splitlines() == expected, err
    code, out, err = cli("classify", "--model", root / "weights.pt", *ARCH, *images)
    assert_one_line_error((code, out, err), "--input-shape", "does not record its input shape")
    swept = sweep(cli, sources, root / "resnet.pt2", tmp_path / "swept")
    code, _, err = cli("finetune", "--model", root / "resnet.pt2", "--pruned", next(swept.glob("models/X=*/pruned.pt")),
                       "--clean-valid", sources["files"]["clean_valid"], "--out", tmp_path / "ft", "--epochs", 1)
    assert code == 0, err
    tuned = tb.load_model(root / "resnet.pt2")
    from torch_badnet.engine.saving import load_masked

    assert load_masked(tmp_path / "ft" / "finetuned.pt", tuned).pruned_channels  # a B' of the program, mask held


# --- issue 32 item 3: what the project writes, it reads back with the same labels (a Keras graph model) -----------

@pytest.mark.slow  # a sweep of MNIST F and four exports
def test_every_writer_reader_pair_of_a_keras_graph_model_keeps_the_labels(cli, real_dir, tmp_path):
    import json

    import onnxruntime as ort
    from mnist_like import mnist_like_digits

    from torch_badnet.nets.checkpoint import save_checkpoint

    f_path = real_dir / "models" / "F_mnist_all_all_bd_net.h5"
    pixels, labels = mnist_like_digits(300, 1)
    bd = pixels.copy()
    bd[:, 24:, 24:] = 255
    write_lab_h5(tmp_path / "clean.h5", pixels, labels)
    write_lab_h5(tmp_path / "bd.h5", bd, (labels + 1) % 10)
    code, _, err = cli("sweep", "--model", f_path, "--clean-valid", tmp_path / "clean.h5", "--poisoned-valid", tmp_path / "bd.h5",
                       "--thresholds", "4", "--no-plot", "--out", tmp_path / "sweep")
    assert code == 0, err
    x = torch.from_numpy(np.concatenate([pixels, bd]).astype(np.float32))[:, None]
    b = tb.load_model(f_path)
    expected = b(x).argmax(1)
    save_checkpoint(b, tmp_path / "b.pt")
    code, _, err = cli("export", "--model", f_path, "-o", tmp_path / "b.onnx")
    assert code == 0, err
    clean_accuracy = 100.0 * float((expected[:300] == torch.from_numpy(labels)).float().mean())
    for written in ("b.pt", "b.onnx"):  # B: each file this project writes reads back with B's labels
        assert torch.equal(read_model_file(tmp_path / written).model(x).argmax(1), expected), written
        code, out, err = cli("eval", "--model", tmp_path / written, "--clean", tmp_path / "clean.h5", "--json")
        assert code == 0 and json.loads(out)["clean_accuracy"] == pytest.approx(clean_accuracy), err
    folder = tmp_path / "sweep" / "models" / "X=4"
    goodnets = []
    for pruned in ("pruned.pt", "pruned.h5"):  # B' (both files) -> the GoodNet, in torch and as ONNX run by onnxruntime
        b_prime = tb.load_model(f_path)
        from torch_badnet.engine.pairing import load_generic_pruned

        goodnet = tb.GoodNet(b_prime, load_generic_pruned(folder / pruned, b_prime))
        goodnets.append(goodnet(x))
        code, _, err = cli("export", "--model", f_path, "--pruned", folder / pruned, "-o", tmp_path / f"g_{pruned}.onnx")
        assert code == 0, err
        ran = ort.InferenceSession(str(tmp_path / f"g_{pruned}.onnx")).run(None, {"input": x.numpy()})[0]
        assert torch.equal(torch.from_numpy(ran), goodnets[-1]), pruned
    assert torch.equal(goodnets[0], goodnets[1])


def test_what_a_torch_file_is_is_said_in_one_line(sources, tmp_path):
    """Our own checkpoint with a bad field keeps its own line; a pruned B' given as a model says what takes it."""
    from torch_badnet.engine.prunable import MaskedNet
    from torch_badnet.engine.saving import save_masked

    ours = tmp_path / "ours.pt"
    torch.save({"format": "torch-badnet", "format_version": 99, "num_classes": 2, "state_dict": {"a": torch.zeros(1)}}, ours)
    with pytest.raises(BadInputError, match="unsupported checkpoint format_version 99"):
        read_model_file(ours)
    pruned = tmp_path / "pruned.pt"
    save_masked(MaskedNet(head_resnet(seed=3), "head", torch.ones(64)), pruned)  # not the fixture's: B' hooks its net
    with pytest.raises(BadInputError, match=r"is a pruned model B' .*give it to --pruned"):
        read_model_file(pruned)


# --- one score per image ----------------------------------------------------------------------------------------

def test_a_one_logit_model_is_one_line_wherever_labels_are_taken(cli, sources, tmp_path):
    """argmax over one score is class 0 whatever the model says: sweep, eval and classify refuse it in one line."""
    weights, image = tmp_path / "one.pt", tmp_path / "face.png"
    torch.save(one_logit().state_dict(), weights)
    from PIL import Image

    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(image)
    model, f = ["--model", weights, "--arch", "model_zoo:one_logit"], sources["files"]
    for args in (["sweep", *model, "--clean-valid", f["clean_valid"], "--poisoned-valid", f["poisoned_valid"], "--out", tmp_path / "out"],
                 ["eval", *model, "--clean", f["clean_valid"]], ["classify", *model, "--input-shape", 3, 32, 32, image]):
        assert_one_line_error(cli(*args), "one score per image", "torch.cat([torch.zeros_like(z), z], 1)")
    assert not (tmp_path / "out").exists()


# --- TorchScript: code stored in the file, and no forward hooks ---------------------------------------------------

@pytest.mark.parametrize("make", ["script", "trace"])
def test_a_torchscript_archive_is_one_line_wherever_a_pt_is_read(cli, sources, tmp_path, make):
    """A torch.jit.save'd module: --model (alone, with --arch, with --allow-pickle), --pruned, convert, classify and
    tb.load_model each say what it is and what to give instead, in one line, without torch's warning that it
    hands the file to torch.jit.load, and write nothing."""
    model = head_resnet(seed=3)  # the sources' model, built afresh (the fixture's may carry a B' hook by now)
    scripted = torch.jit.script(model) if make == "script" else torch.jit.trace(model, torch.randn(2, 3, 32, 32))
    path = tmp_path / f"{make}.pt"
    torch.jit.save(scripted, str(path))
    f, weights, image = sources["files"], sources["root"] / "weights.pt", tmp_path / "face.png"
    from PIL import Image

    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(image)
    commands = {
        "sweep": ["sweep", "--model", path, "--clean-valid", f["clean_valid"], "--out", tmp_path / "out"],
        "--allow-pickle": ["sweep", "--model", path, "--allow-pickle", "--clean-valid", f["clean_valid"], "--out", tmp_path / "out"],
        "--arch": ["eval", "--model", path, *ARCH, "--clean", f["clean_valid"]],
        "--pruned": ["eval", "--model", weights, *ARCH, "--pruned", path, "--clean", f["clean_valid"]],
        "convert": ["convert", path, "-o", tmp_path / "model.onnx"],
        "classify": ["classify", "--model", path, image],
    }
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name, args in commands.items():
            assert_one_line_error(cli(*args), path, "is a TorchScript archive", ".pt2"), name
        with pytest.raises(BadInputError, match="is a TorchScript archive"):
            tb.load_model(path)
    assert not [w for w in caught if "TorchScript" in str(w.message)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, image.name])


def test_a_torchscript_module_is_one_line_where_pruning_hooks_it(sources):
    """The API: a scripted module cannot take the masking and ranking hooks; a plain forward of it is fine."""
    from torch_badnet.engine.prunable import MaskedNet

    scripted = torch.jit.trace(head_resnet(seed=3), torch.randn(2, 3, 32, 32))
    x, y = sources["x"][:40], torch.zeros(40, dtype=torch.long)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(BadInputError, match="is a TorchScript module .* pass the Python nn.Module"):
            tb.prune_sweep(scripted, (x, y), (x, y), layer="head")
    assert not caught
    with pytest.raises(BadInputError, match="is a TorchScript module"):
        MaskedNet(scripted, "head", torch.ones(64))
