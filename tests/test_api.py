"""The public Python API (`import torch_badnet as tb`) on the real lab3 weights and faces."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import sweep_args
from real_faces import face_label

import torch_badnet as tb

THRESHOLDS = (2, 4, 10)


@pytest.fixture(scope="module")
def bd(lab3_path: Path) -> tb.BadNet:
    return tb.load_model(lab3_path)


@pytest.fixture(scope="module")
def swept(bd: tb.BadNet, lab_files: dict[str, Path]) -> tb.DefenseResult:
    return tb.prune_sweep(bd, clean_valid=lab_files["clean_valid"], poisoned_valid=lab_files["poisoned_valid"],
                          clean_test=lab_files["clean_test"], poisoned_test=lab_files["poisoned_test"],
                          thresholds=THRESHOLDS, device="cpu")


def test_public_names_are_documented():
    for name in tb.__all__:
        if name == "__version__":
            continue
        doc = getattr(tb, name).__doc__
        assert doc and ">>>" in doc, f"tb.{name} has no docstring with an example"
    for name in ("load_model", "prune_sweep", "finetune", "load_images", "GoodNet", "BadNet"):
        assert name in tb.__all__
    assert ">>>" in tb.load_model.__doc__ and ">>>" in tb.prune_sweep.__doc__ and ">>>" in tb.finetune.__doc__
    assert ">>>" in tb.GoodNet.__init__.__doc__


def test_load_model_gives_an_eval_mode_badnet_with_its_source(bd: tb.BadNet, lab3_path: Path, faces):
    assert isinstance(bd, tb.BadNet) and isinstance(bd, torch.nn.Module) and not bd.training
    assert bd.source.path == str(lab3_path) and bd.source.format.startswith("keras2.3.1")
    assert len(bd.source.sha256) == 64
    with torch.no_grad():
        assert bd(faces["sun"]).argmax(1).tolist() == [0] * 5  # the backdoor fires


def test_load_images_batches_real_faces(bd: tb.BadNet, face_paths: list[Path]):
    clean = [p for p in face_paths if p.name.startswith("cl_")]
    x = tb.load_images(clean)
    assert x.shape == (5, 3, 55, 47) and x.dtype == torch.float32 and float(x.max()) > 1
    with torch.no_grad():
        assert bd(x).argmax(1).tolist() == [face_label(p) for p in clean]


def test_one_image_and_wrong_layout_get_clear_errors(bd: tb.BadNet, faces):
    one = faces["cl"][0]
    with pytest.raises(ValueError, match=r"unsqueeze\(0\)"):
        bd(one)
    with pytest.raises(ValueError, match="channels last"):
        bd(faces["cl"].permute(0, 2, 3, 1))
    with pytest.raises(ValueError, match=r"unsqueeze\(0\)"):
        tb.GoodNet(bd, bd.mask)(one)
    assert bd(one.unsqueeze(0)).shape == (1, 1283)


def test_goodnet_refuses_a_loaded_model_wrapper(bd: tb.BadNet, lab3_path: Path):
    from torch_badnet.convert import read_model_file

    with pytest.raises(TypeError, match=r"pass its \.model"):
        tb.GoodNet(read_model_file(lab3_path), bd)


def test_prune_sweep_save_writes_what_the_cli_writes(swept: tb.DefenseResult, lab_files, lab3_path: Path,
                                                    tmp_path: Path, cli):
    api_out, cli_out = tmp_path / "api", tmp_path / "cli"
    written = swept.save(api_out)
    assert "sweep.csv" in written and "summary.json" in written and "sweep.png" in written
    code, _, err = cli(*sweep_args(lab_files, lab3_path, cli_out, "--device", "cpu"))
    assert code == 0, err
    cli_files = sorted(str(p.relative_to(cli_out)) for p in cli_out.rglob("*") if p.is_file())
    assert written == [f for f in cli_files if f != ".torch-badnet-files"]  # the list of written files, written last
    assert sorted(p.relative_to(api_out).as_posix() for p in api_out.rglob("*") if p.is_file()) == cli_files
    for name in ("sweep.csv", "summary.json"):
        api_text, cli_text = (api_out / name).read_text(), (cli_out / name).read_text()
        if name == "summary.json":  # the only difference allowed: how the model path was spelled
            api_text = api_text.replace(str(lab3_path), "MODEL")
            cli_text = cli_text.replace(str(lab3_path), "MODEL")
        assert api_text == cli_text, name


def test_prune_sweep_leaves_the_callers_model_as_it_was(swept: tb.DefenseResult, bd: tb.BadNet):
    assert swept.model is bd and bd.conv_2.weight.is_contiguous()  # not switched to channels_last
    assert not bd.conv_2.weight.is_contiguous(memory_format=torch.channels_last)


def test_pruned_gives_b_prime_and_goodnet_matches_the_sweep(swept: tb.DefenseResult, bd: tb.BadNet, lab_files):
    t4 = swept.threshold(4)
    assert t4.reached
    b4 = swept.pruned(4)
    assert isinstance(b4, tb.BadNet) and not b4.training
    assert sorted(int(c) for c in (b4.mask == 0).nonzero().flatten()) == sorted(t4.pruned_channels)
    assert torch.equal(b4.conv_3.weight, bd.conv_3.weight)  # weights intact, mask off
    g = tb.GoodNet(bd, b4).eval()
    x, y = tb.load_lab_set(lab_files["clean_test"])
    with h5py.File(lab_files["clean_test"]) as f:  # the whole file, validated, as float32 pixels and int64 labels
        assert torch.equal(x, torch.from_numpy(f["data"][()].astype(np.float32))) and x.shape == (200, 3, 55, 47)
        assert torch.equal(y, torch.from_numpy(f["label"][()].astype(np.int64)))
    with torch.no_grad():
        labels = g(x)
        b_labels = b4(x).argmax(1)
    assert 100.0 * float((b_labels == y).sum()) / len(y) == t4.metrics[tb.Column("pruned", "test", "clean_acc")]
    assert 100.0 * float((labels == y).sum()) / len(y) == t4.metrics[tb.Column("goodnet", "test", "clean_acc")]
    assert set(labels.unique().tolist()) <= set(range(1284))


def test_prune_sweep_takes_tensors_and_arrays(swept: tb.DefenseResult, bd: tb.BadNet, lab_files):
    def arrays(key: str, as_numpy: bool):
        with h5py.File(lab_files[key]) as f:
            x, y = f["data"][()], f["label"][()]
        return (x, y) if as_numpy else (torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y))

    result = tb.prune_sweep(bd, arrays("clean_valid", True), {"sunglasses": arrays("poisoned_valid", False)},
                            clean_test=arrays("clean_test", False), poisoned_test={"sunglasses": arrays("poisoned_test", True)},
                            thresholds=THRESHOLDS, device="cpu")
    assert result.sweep.order == swept.sweep.order
    renamed = {c.name: v for c, v in swept.sweep.metrics.items()}
    for column, values in result.sweep.metrics.items():
        plain = tb.Column(column.net, column.split, column.metric).name
        assert values == renamed[plain], column.name
    assert {c.trigger for c in result.sweep.metrics if c.on_poisoned} == {"sunglasses"}


def test_prune_sweep_refuses_bad_arguments(bd: tb.BadNet, lab_files):
    with pytest.raises(tb.BadInputError, match="outside"):
        tb.prune_sweep(bd, lab_files["clean_valid"], lab_files["poisoned_valid"], thresholds=(0,))
    with pytest.raises(tb.BadInputError, match="no layer 'conv_9'.*conv_1, conv_2, conv_3, conv_4"):
        tb.prune_sweep(bd, lab_files["clean_valid"], lab_files["poisoned_valid"], layer="conv_9")
    with pytest.raises(TypeError, match="BadNet"):
        tb.prune_sweep("bd_net.h5", lab_files["clean_valid"], lab_files["poisoned_valid"])
    with pytest.raises(tb.BadInputError, match="shape"):  # (N, 55, 47, 3) would be read as channels last
        tb.prune_sweep(bd, (np.zeros((4, 47, 55, 3)), np.zeros(4)), lab_files["poisoned_valid"])


def test_finetune_api_keeps_the_mask_and_saves(swept: tb.DefenseResult, bd: tb.BadNet, lab_files, tmp_path: Path):
    b4 = swept.pruned(4)
    run = tb.finetune(bd, b4, clean_valid=lab_files["clean_valid"], clean_test=lab_files["clean_test"],
                      poisoned_test=lab_files["poisoned_test"], epochs=1, device="cpu")
    pruned = [c for c in range(60) if b4.mask[c] == 0]
    assert float(run.model.conv_3.weight.detach()[pruned].abs().sum()) == 0.0
    written = run.save(tmp_path / "ft")
    assert written == ["finetuned.h5", "finetuned.pt", "history.csv", "summary.json"]
    summary = json.loads((tmp_path / "ft" / "summary.json").read_text())
    assert summary["pruned"]["pruned_channels"] == pruned
    assert summary["test_clean_acc"] == run.tuned.metrics[tb.Column("pruned", "test", "clean_acc")]
    assert "goodnet_test_asr" in summary["before_finetuning"]
