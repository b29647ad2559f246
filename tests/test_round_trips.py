"""Issue 32 item 3: everything torch-badnet writes, it reads back with the same labels, per architecture.

For each architecture (the lab BadNet, a residual Keras graph pruned at a BatchNormalization layer, a torch
ResNet built by --arch, an ONNX ResNet graph) one sweep writes B' (pruned.pt, and pruned.h5 for a Keras-origin
model); `convert` and `export` write B (.pt, .h5, .onnx), B' alone (`export --net pruned`) and the GoodNet
(`export --pruned`). Every file is read back as the command line reads it (`net_for`: --model and --pruned, as
classify and eval run them) and its labels must equal an independent reference: B loaded from the original
file, B' = a copy of B with this test's own hook zeroing the pruned channels, G = B's label where B and B' agree,
else N. A format that cannot hold a model is refused in one line.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from model_zoo import head_resnet
from test_model_sources import export_onnx_file

import torch_badnet as tb
from torch_badnet.cli.commands.common import net_for
from torch_badnet.cli.main import build_parser
from torch_badnet.data.lab_sets import load_lab_set, write_lab_h5
from torch_badnet.nets.predict import labels_in_batches

ARCHS = ["lab", "keras_graph", "torch_arch", "onnx_graph"]
ARCH_FLAGS = ["--arch", "model_zoo:head_resnet", "--arch-kwargs", '{"seed": 3}']
SHAPE_FLAGS = ["--input-shape", "3", "32", "32"]  # classify's image size, for a module that does not record it
TIE = 1e-5  # a re-exported ONNX graph may fold BatchNorm into its convs: only a label this close to a tie may flip


@dataclass
class Case:
    """One architecture's model file, the flags that read it, its data and every file the writers made."""

    name: str
    root: Path
    model: Path
    flags: list[str]  # what reads `model`: --arch for a state_dict, --rescale for a Keras file without a record
    files: dict[str, Path]
    x: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    b_files: dict[str, Path] = field(default_factory=dict)  # writer -> B file
    refused: dict[str, str] = field(default_factory=dict)  # writer -> its one line
    pruned_files: dict[str, Path] = field(default_factory=dict)  # pruned.pt / pruned.h5 / B' .onnx
    goodnet_onnx: Path | None = None
    reference: dict[str, Any] = field(default_factory=dict)


def _keras_graph(root: Path) -> tuple[Path, list[str], dict[str, Path], list[str]]:
    """The residual Keras model of test_keras_prune_any_layer (conv -> BatchNormalization -> add), pruned at bn_r2."""
    from test_keras_prune_any_layer import residual_model

    from torch_badnet.convert.keras_model import quiet_native_stderr

    with quiet_native_stderr():
        tf_keras = pytest.importorskip("tf_keras")
    model = residual_model(tf_keras)
    model.save(str(root / "res.h5"))
    rng = np.random.default_rng(1)
    x = np.round((rng.uniform(0, 1, (200, 1, 1, 3)) * rng.uniform(0, 1, (200, 16, 16, 3))).astype(np.float32) * 255)
    write_lab_h5(root / "cl.h5", x.transpose(0, 3, 1, 2), model.predict(x / 255, verbose=0).argmax(1))
    poisoned = x.copy()
    poisoned[:, :4, :4] = 255
    write_lab_h5(root / "bd.h5", poisoned.transpose(0, 3, 1, 2), np.zeros(200, int))
    return root / "res.h5", ["--rescale", "1/255"], {"clean_valid": root / "cl.h5", "poisoned_valid": root / "bd.h5"}, \
        ["--layer", "bn_r2"]


def _resnet_data(root: Path, model: torch.nn.Module) -> dict[str, Path]:
    """Clean images the ResNet labels (a fifth relabelled, so pruning has accuracy to lose) and patched ones."""
    x = torch.randn(200, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        y = model(x).argmax(1)
    y[::5] = (y[::5] + 1) % 10
    bd = x.clone()
    bd[:, :, -6:, -6:] = 3.0
    write_lab_h5(root / "cl.h5", x.numpy(), y.numpy())
    write_lab_h5(root / "bd.h5", bd.numpy(), np.zeros(200, int))
    return {"clean_valid": root / "cl.h5", "poisoned_valid": root / "bd.h5"}


def make_case(name: str, root: Path, lab_files: dict[str, Path], lab3_path: Path) -> tuple[Case, list[str]]:
    if name == "lab":
        return Case(name, root, lab3_path, [], {k: lab_files[k] for k in ("clean_valid", "poisoned_valid")}), []
    if name == "keras_graph":
        model, flags, files, extra = _keras_graph(root)
        return Case(name, root, model, flags, files), extra
    net = head_resnet(seed=3)
    if name == "torch_arch":
        torch.save(net.state_dict(), root / "weights.pt")
        return Case(name, root, root / "weights.pt", ARCH_FLAGS, _resnet_data(root, net)), []
    return Case(name, root, export_onnx_file(net, root / "resnet.onnx"), [], _resnet_data(root, net)), []


@pytest.fixture(scope="module", params=ARCHS)
def case(request, tmp_path_factory, lab_files, lab3_path, module_cli) -> Case:
    """Sweep once, then run every writer: convert B to .pt/.h5/.onnx, export B, B' alone and the GoodNet."""
    cli = module_cli
    c, extra = make_case(request.param, tmp_path_factory.mktemp(request.param), lab_files, lab3_path)
    out = c.root / "sweep"
    code, _, err = cli("sweep", "--model", c.model, *c.flags, "--clean-valid", c.files["clean_valid"],
                       "--poisoned-valid", c.files["poisoned_valid"], "--thresholds", "4", "--no-plot", "--out", out, *extra)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    (threshold,) = summary["thresholds"]
    assert threshold["reached"] and threshold["pruned_channels"], threshold
    c.reference = {"layer": summary["model"].get("layer", "conv_3"), "channels": threshold["pruned_channels"]}
    c.pruned_files = {p.name: p for p in (out / "models" / "X=4").iterdir()}
    shape_flags = SHAPE_FLAGS if request.param == "torch_arch" else []
    for writer, ext in [("convert.pt", "pt"), ("convert.h5", "h5"), ("convert.onnx", "onnx"), ("export", "onnx")]:
        dst = c.root / f"b_{writer.replace('.', '_')}.{ext}"
        command = ["convert", c.model, "-o", dst] if writer.startswith("convert") else ["export", "--model", c.model, "-o", dst]
        code, _, err = cli(*command, *c.flags, *(shape_flags if ext == "onnx" else []))
        if code == 0:
            c.b_files[writer] = dst
        else:
            assert code == 2 and err.count("\n") == 1 and not dst.exists(), err
            c.refused[writer] = err
    pruned_pt = c.pruned_files["pruned.pt"]
    code, _, err = cli("export", "--model", c.model, *c.flags, "--pruned", pruned_pt, "--net", "pruned", "-o", c.root / "bp.onnx")
    assert code == 0, err
    c.pruned_files["export --net pruned"] = c.root / "bp.onnx"
    code, _, err = cli("export", "--model", c.model, *c.flags, "--pruned", pruned_pt, "-o", c.root / "g.onnx")
    assert code == 0, err
    c.goodnet_onnx = c.root / "g.onnx"
    image_shape = {"lab": (3, 55, 47), "keras_graph": (3, 16, 16)}.get(c.name, (3, 32, 32))
    c.x = torch.cat([load_lab_set(c.files[k], input_shape=image_shape)[0] for k in ("clean_valid", "poisoned_valid")])
    c.reference.update(reference_labels(c))
    return c


@pytest.fixture(scope="module")
def module_cli():
    """`torch-badnet ARGS...` in-process for a module-scoped fixture (capsys is per test): (code, stdout, stderr)."""
    import contextlib
    import io

    from torch_badnet.cli.main import main

    def run(*args: object) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in args])
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
        return code, out.getvalue(), err.getvalue()

    return run


def _original(c: Case) -> torch.nn.Module:
    """B read from the file the sweep read (the API's reader, with the same flags as values)."""
    if c.name == "torch_arch":
        return tb.load_model(c.model, arch="model_zoo:head_resnet", arch_kwargs={"seed": 3})
    return tb.load_model(c.model, rescale="1/255" if c.name == "keras_graph" else None)


def reference_labels(c: Case) -> dict[str, Any]:
    """B's labels and logit margins, B''s from this test's own hook on a copy of B, and G's."""
    b = _original(c).eval()
    b_prime = copy.deepcopy(b)
    layer = b_prime.get_submodule(c.reference["layer"])
    off = torch.zeros(4096, dtype=torch.bool)
    off[c.reference["channels"]] = True
    layer.register_forward_hook(lambda _m, _i, out: out.masked_fill(off[: out.shape[1]].view(1, -1, *[1] * (out.dim() - 2)), 0.0))
    with torch.no_grad():
        logits, pruned_logits = b(c.x), b_prime(c.x)
    labels, pruned = logits.argmax(1), pruned_logits.argmax(1)
    assert (labels != pruned).any(), "pruning must show in the labels for the test to mean anything"
    n = logits.shape[1]
    top2 = lambda z: z.topk(2, 1).values  # noqa: E731
    margin = torch.minimum(top2(logits)[:, 0] - top2(logits)[:, 1], top2(pruned_logits)[:, 0] - top2(pruned_logits)[:, 1])
    return {"b": labels, "b_prime": pruned, "goodnet": torch.where(labels == pruned, labels, n), "classes": n,
            "margin": margin}


def read_back(*flags: object) -> torch.nn.Module:
    """What classify and eval run for these flags: `net_for` (B, or the GoodNet of --model and --pruned)."""
    args = build_parser().parse_args(["classify", *map(str, flags), "unused.png"])
    return net_for(args, torch.device("cpu"))


def assert_same_labels(c: Case, got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    differ = (got != want).nonzero().flatten()
    near_ties = c.reference["margin"][differ] < TIE
    assert bool(near_ties.all()), f"{c.name}: {what}: {len(differ)} labels differ, at margins {c.reference['margin'][differ][:5]}"
    assert len(differ) <= 2, f"{c.name}: {what}: {len(differ)} near-tie flips"


def labels(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return labels_in_batches(net.eval(), x)


def needs_flags(c: Case, path: Path) -> list[object]:
    """The flags a written B needs to be read: --arch for our .pt of an --arch model (we never import a name a
    file holds); a Keras file or checkpoint records its preprocessing."""
    return [*ARCH_FLAGS, *SHAPE_FLAGS] if c.name == "torch_arch" and path.suffix == ".pt" else []


# --- B ---------------------------------------------------------------------------------------------------------

def test_every_written_b_reads_back_with_b_labels(case: Case) -> None:
    expected = {"lab": {"convert.pt", "convert.h5", "convert.onnx", "export"},
                "keras_graph": {"convert.pt", "convert.h5", "convert.onnx", "export"},
                "torch_arch": {"convert.pt", "convert.onnx", "export"}, "onnx_graph": {"convert.onnx", "export"}}
    assert set(case.b_files) == expected[case.name], case.refused
    for writer, path in case.b_files.items():
        assert_same_labels(case, labels(read_back("--model", path, *needs_flags(case, path)), case.x), case.reference["b"], writer)


def test_a_format_that_cannot_hold_the_model_is_one_line(case: Case) -> None:
    expected = {"torch_arch": {"convert.h5"}, "onnx_graph": {"convert.pt", "convert.h5"}}.get(case.name, set())
    assert set(case.refused) == expected, case.refused
    for writer, line in case.refused.items():
        assert line.startswith("error: ") and ("has no Keras form" in line or "is used as it is" in line), (writer, line)


# --- B' ---------------------------------------------------------------------------------------------------------

def test_every_written_b_prime_reads_back_with_b_prime_labels(case: Case) -> None:
    from torch_badnet.cli.commands.common import open_pruned_flag

    expected = {"pruned.pt", "export --net pruned"} | ({"pruned.h5"} if case.name in ("lab", "keras_graph") else set())
    assert set(case.pruned_files) == expected
    model = read_back("--model", case.model, *needs_flags(case, case.model) or case.flags)  # B as the command line reads it
    for name, path in case.pruned_files.items():
        if name != "export --net pruned":  # --pruned beside B: B' alone
            pruned = open_pruned_flag(str(path), model.eval(), str(case.model))
            assert_same_labels(case, labels(pruned, case.x), case.reference["b_prime"], f"--pruned {name}")
        if name != "pruned.pt":  # a standalone model file: --model
            assert_same_labels(case, labels(read_back("--model", path), case.x), case.reference["b_prime"], f"--model {name}")


# --- the GoodNet ------------------------------------------------------------------------------------------------

def test_every_goodnet_reads_back_with_goodnet_labels(case: Case) -> None:
    want = case.reference["goodnet"]
    pairs = [(case.model, needs_flags(case, case.model) or case.flags)]
    pairs += [(path, needs_flags(case, path)) for path in case.b_files.values()]
    checked = 0
    for model, flags in pairs:
        for name in ("pruned.pt", "pruned.h5"):
            if name not in case.pruned_files:
                continue
            if case.name != "lab" and model != case.model and model.suffix == ".onnx":
                continue  # a re-imported ONNX graph has other module names: refused (test below)
            got = labels(read_back("--model", model, *flags, "--pruned", case.pruned_files[name]), case.x)
            assert_same_labels(case, got, want, f"--model {model.name} --pruned {name}")
            checked += 1
    graph = read_back("--model", case.goodnet_onnx)
    assert graph.detected_class == case.reference["classes"]
    assert_same_labels(case, labels(graph, case.x), want, "export --pruned's GoodNet graph")
    assert checked == {"lab": 10, "keras_graph": 6, "torch_arch": 2, "onnx_graph": 1}[case.name]


def test_eval_of_the_goodnet_graph_equals_eval_of_its_pair(case: Case, cli) -> None:
    data = ["--clean", case.files["clean_valid"], "--poisoned", case.files["poisoned_valid"], "--json"]
    code, pair, err = cli("eval", "--model", case.model, *case.flags, "--pruned", case.pruned_files["pruned.pt"], *data)
    assert code == 0, err
    code, graph, err = cli("eval", "--model", case.goodnet_onnx, *data)
    assert code == 0, err
    assert json.loads(graph) == json.loads(pair)
    assert set(json.loads(graph)) >= {"clean_accuracy", "attack_success_rate", "false_alarm_rate", "detection_rate"}


def test_goodnet_graph_is_refused_where_a_model_b_is_needed(case: Case, cli, tmp_path) -> None:
    g = case.goodnet_onnx
    for args in (("sweep", "--model", g, "--clean-valid", case.files["clean_valid"], "--poisoned-valid",
                  case.files["poisoned_valid"], "--out", tmp_path / "o"),
                 ("export", "--model", g, "-o", tmp_path / "x.onnx"),
                 ("eval", "--model", case.model, *case.flags, "--pruned", g, "--clean", case.files["clean_valid"])):
        code, out, err = cli(*args)
        assert code == 2 and out == "" and err.count("\n") == 1, err
        assert "GoodNet graph" in err or "runs alone as --model" in err, err
    code, _, err = cli("eval", "--model", g, "--pruned", case.pruned_files["pruned.pt"], "--clean", case.files["clean_valid"])
    assert code == 2 and "give it alone, without --pruned" in err, err
    assert not (tmp_path / "o").exists() and not (tmp_path / "x.onnx").exists()


def test_a_b_prime_beside_b_of_another_format_pairs_or_is_one_line(case: Case, cli) -> None:
    """B' beside B exported to ONNX: the lab BadNet pairs across formats (its layers are the same in every
    format); a re-imported graph of another model has other module names, so it is one line, never wrong labels."""
    onnx_b = case.b_files["export"]
    for name in ("pruned.pt", "pruned.h5"):
        if name in case.pruned_files:
            code, out, err = cli("eval", "--model", onnx_b, "--pruned", case.pruned_files[name], "--clean", case.files["clean_valid"])
            if case.name == "lab":
                assert code == 0, err
            else:
                assert code == 2 and out == "" and err.count("\n") == 1, err


class LabelsOut(torch.nn.Module):
    """A classifier exported with its ArgMax: int64 labels out, not scores."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = torch.nn.Conv2d(3, 4, 3), torch.nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean((2, 3))).argmax(1)


def test_a_graph_answering_labels_that_is_not_a_goodnet_is_one_line(cli, tmp_path: Path) -> None:
    """ArgMax has a converter for the GoodNet graph; another graph ending in one is no model B to prune or rate."""
    from torch_badnet.convert.onnx_export import quiet_exporter

    with quiet_exporter():
        torch.onnx.export(LabelsOut(), (torch.zeros(1, 3, 8, 8),), str(tmp_path / "am.onnx"), dynamo=False,
                          input_names=["input"], output_names=["pred"], dynamic_axes={"input": {0: "b"}})
    write_lab_h5(tmp_path / "c.h5", np.zeros((4, 3, 8, 8), np.float32), np.zeros(4, int))
    for args in (("eval", "--model", tmp_path / "am.onnx", "--clean", tmp_path / "c.h5"),
                 ("sweep", "--model", tmp_path / "am.onnx", "--clean-valid", tmp_path / "c.h5", "--poisoned-valid",
                  tmp_path / "c.h5", "--out", tmp_path / "out")):
        code, out, err = cli(*args)
        assert code == 2 and out == "" and err.count("\n") == 1, err
        assert "graph output 'pred' is int64, not scores" in err
    assert not (tmp_path / "out").exists()
