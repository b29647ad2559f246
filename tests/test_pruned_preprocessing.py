"""Issue 32 item 1: a B' is used at the preprocessing of its sweep, never silently at another.

`sweep --rescale/--mean` on a model whose file records no preprocessing writes pruned.pt and pruned.h5 that record
it (scale, mean, std). eval, classify, finetune and export given that B' take it from there when no flag is given,
saying so in one line, and refuse a contradicting flag in one line. Before, `eval --model B --pruned pruned.pt`
without the flags exited 0 with other numbers.

The model: a 3-channel Keras graph BadNet (tests/face_graph.py); the reference numbers are the sweep's own
metrics of G_4 in summary.json, and the commands' outputs with the flags given explicitly.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import pytest
import torch
from conftest import sweep_args
from face_graph import write_face_graph

from torch_badnet.engine.saving import load_masked, read_masked

FLAGS = ["--rescale", "0.9", "--mean", "5", "5", "5"]  # the sweep's preprocessing (the scale guard accepts it)


@pytest.fixture(scope="module")
def swept(tmp_path_factory, lab_files, lab3_path):
    """(the face-graph model, the sweep's folder) of `sweep ... --rescale 0.9 --mean 5 5 5 --thresholds 4`."""
    from torch_badnet.cli.main import main

    folder = tmp_path_factory.mktemp("pre")
    model = write_face_graph(lab3_path, folder / "faces.h5")
    out = folder / "sweep"
    assert main([str(a) for a in sweep_args(lab_files, model, out, "--no-plot", "--thresholds", "4", *FLAGS)]) == 0
    return model, out


def note(path: Path) -> str:
    return f"{path} records the preprocessing of its sweep: using --rescale 0.9 --mean 5 5 5"


def test_the_b_prime_files_record_the_sweeps_preprocessing(swept):
    _, out = swept
    arch = read_masked(out / "models" / "X=4" / "pruned.pt")["architecture"]
    assert (arch["input_scale"], arch["mean"], arch["std"]) == (pytest.approx(0.9), [5.0, 5.0, 5.0], None)
    with h5py.File(out / "models" / "X=4" / "pruned.h5", "r") as f:  # attributes Keras ignores: still drop-in
        assert float(f.attrs["torch_badnet_input_scale"]) == pytest.approx(0.9)
        assert list(f.attrs["torch_badnet_mean"]) == [5.0, 5.0, 5.0] and "torch_badnet_std" not in f.attrs


@pytest.mark.parametrize("name", ["pruned.pt", "pruned.h5"])
def test_eval_takes_the_b_primes_preprocessing(swept, lab_files, cli, name):
    model, out = swept
    pruned = out / "models" / "X=4" / name
    base = ["eval", "--model", model, "--pruned", pruned, "--clean", lab_files["clean_valid"],
            "--poisoned", lab_files["poisoned_valid"], "--json"]
    code, stdout, err = cli(*base)
    assert code == 0 and err == note(pruned) + "\n", err
    ours = json.loads(stdout)
    t4 = next(t for t in json.loads((out / "summary.json").read_text())["thresholds"] if t["x"] == 4)
    assert (ours["clean_accuracy"], ours["false_alarm_rate"], ours["attack_success_rate"]) == (
        t4["goodnet_valid_clean_acc"], t4["goodnet_valid_false_alarm_rate"], t4["goodnet_valid_asr"])
    code, stdout, err = cli(*base, *FLAGS)  # the same flags: the same numbers, nothing to say
    assert code == 0 and err == "" and json.loads(stdout) == ours, err
    for flags, line in (
        (["--rescale", "1"], f"error: --rescale: 1 contradicts {pruned}, which records input scale 0.9 (the scale of its "
                             "sweep; drop the flag)"),
        (["--mean", "1", "2", "3"], f"error: --mean: 1 2 3 contradicts {pruned}, which records per-channel mean 5 5 5 "
                                    "(the preprocessing of its sweep; drop the flag)"),
        (["--std", "2", "2", "2"], f"error: --std: 2 2 2 contradicts {pruned}, which records no per-channel std "
                                   "(the preprocessing of its sweep; drop the flag)"),
    ):
        code, stdout, err = cli(*base, *flags)
        assert code == 2 and stdout == "" and err == line + "\n", err


def test_classify_takes_the_b_primes_preprocessing(swept, face_paths, cli):
    model, out = swept
    pruned = out / "models" / "X=4" / "pruned.pt"
    code, stdout, err = cli("classify", "--model", model, "--pruned", pruned, *face_paths)
    assert code == 0 and err == note(pruned) + "\n", err
    code, with_flags, err = cli("classify", "--model", model, "--pruned", pruned, *face_paths, *FLAGS)
    assert code == 0 and stdout == with_flags, err
    code, _, err = cli("classify", "--model", model, "--pruned", pruned, *face_paths, "--rescale", "1")
    assert code == 2 and err.startswith(f"error: --rescale: 1 contradicts {pruned}")


def test_finetune_takes_the_b_primes_preprocessing_and_records_it(swept, lab_files, cli, tmp_path):
    model, out = swept
    pruned = out / "models" / "X=4" / "pruned.pt"
    ft = tmp_path / "ft"
    base = ["finetune", "--model", model, "--pruned", pruned, "--clean-valid", lab_files["clean_valid"], "--epochs", 0]
    code, _, err = cli(*base, "--out", ft)
    assert code == 0 and note(pruned) in err.splitlines(), err
    arch = read_masked(ft / "finetuned.pt")["architecture"]
    assert (arch["input_scale"], arch["mean"], arch["std"]) == (pytest.approx(0.9), [5.0, 5.0, 5.0], None)
    summary = json.loads((ft / "summary.json").read_text())
    assert summary["model"]["input_scale"] == pytest.approx(0.9) and summary["model"]["mean"] == [5.0, 5.0, 5.0]
    code, _, err = cli(*base, "--out", tmp_path / "ft2", "--mean", "1", "2", "3")
    assert code == 2 and err.startswith(f"error: --mean: 1 2 3 contradicts {pruned}") and not (tmp_path / "ft2").exists()
    # finetuned.pt, in its turn, gives its preprocessing to a later command
    code, _, err = cli("eval", "--model", model, "--pruned", ft / "finetuned.pt", "--clean", lab_files["clean_valid"])
    assert code == 0 and err == note(ft / "finetuned.pt") + "\n", err


def test_export_takes_the_b_primes_preprocessing(swept, cli, tmp_path):
    model, out = swept
    pruned = out / "models" / "X=4" / "pruned.pt"
    code, _, err = cli("export", "--model", model, "--pruned", pruned, "-o", tmp_path / "g.onnx")
    assert code == 0 and note(pruned) in err.splitlines(), err
    code, _, err = cli("export", "--model", model, "--pruned", pruned, "-o", tmp_path / "g_flags.onnx", *FLAGS)
    assert code == 0, err
    assert (tmp_path / "g.onnx").read_bytes() == (tmp_path / "g_flags.onnx").read_bytes()
    code, _, err = cli("export", "--model", model, "--pruned", pruned, "-o", tmp_path / "g1.onnx", "--rescale", "1")
    assert code == 2 and err.startswith(f"error: --rescale: 1 contradicts {pruned}") and not (tmp_path / "g1.onnx").exists()


def test_a_b_prime_of_other_preprocessing_than_the_models_record_is_refused(swept, lab_files, cli, tmp_path):
    """B's file records its own preprocessing (a .pt converted with --rescale 1): a B' of the 0.9 sweep is refused."""
    model, out = swept
    b = tmp_path / "b.pt"
    assert cli("convert", model, "-o", b)[0] == 0  # records scale 1, no mean
    pruned = out / "models" / "X=4" / "pruned.pt"
    code, _, err = cli("eval", "--model", b, "--pruned", pruned, "--clean", lab_files["clean_valid"])
    assert code == 2 and err == (f"error: {pruned}: records input scale 0.9 but {b} records 1 "
                                 "(B and B' must take the same input)\n"), err


def test_the_api_refuses_a_generic_b_prime_of_other_preprocessing(swept):
    import torch_badnet as tb
    from torch_badnet.engine.pairing import load_generic_pruned
    from torch_badnet.errors import BadInputError

    model, out = swept
    b = tb.load_model(model, rescale=0.9, mean=[5, 5, 5])
    pruned = load_generic_pruned(out / "models" / "X=4" / "pruned.pt", b, model)
    x = torch.rand(4, 3, 55, 47, generator=torch.Generator().manual_seed(0)) * 255
    with torch.inference_mode():  # the same net as the one rebuilt from the file's own record
        assert torch.equal(pruned(x), load_masked(out / "models" / "X=4" / "pruned.pt")(x))
    with pytest.raises(BadInputError, match=r"records input scale 0.9 but --model .* uses 1 \(B and B' must take"):
        load_generic_pruned(out / "models" / "X=4" / "pruned.pt", tb.load_model(model), model)
