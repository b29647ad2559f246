"""Per-model input scale: --rescale, the records in written files, recognition of published files, the guard."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import sweep_args
from real_faces import face_kind, face_label

from torch_badnet.convert import read_model_file
from torch_badnet.errors import BadInputError
from torch_badnet.nets.checkpoint import load_checkpoint
from torch_badnet.nets.goodnet import GoodNet
from torch_badnet.nets.known_models import KNOWN_MODELS
from torch_badnet.nets.rescale import format_scale, git_blob_id, parse_rescale

SCALE_OF_PREPROCESS = {"none (raw 0..255)": 1.0, "x/255": 1 / 255}


def read_tsv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        lines = [line for line in fh if not line.startswith("#")]
    return list(csv.DictReader(lines, delimiter="\t"))


def test_known_models_table_is_the_tsv(real_dir: Path) -> None:
    """The package's table holds exactly the tsv's lab-architecture files, with their eval.py's scale."""
    rows = [r for r in read_tsv(real_dir / "csaw_hackml_files.tsv") if r["architecture"] == "lab_badnet"]
    expected = {r["git_blob"]: (r["path_in_repo"], SCALE_OF_PREPROCESS[r["preprocess"]]) for r in rows}
    assert len(expected) == 16
    assert KNOWN_MODELS == expected


def test_git_blob_id_is_gits(lab3_path: Path, sunglasses_path: Path, real_dir: Path) -> None:
    listed = {r["path_in_repo"]: r["git_blob"] for r in read_tsv(real_dir / "csaw_hackml_files.tsv")}
    assert git_blob_id(lab3_path) == listed["lab3/models/bd_weights.h5"]
    assert git_blob_id(sunglasses_path) == listed["models/sunglasses_bd_weights.h5"]
    git = subprocess.run(["git", "hash-object", str(sunglasses_path)], capture_output=True, text=True)
    if git.returncode == 0:  # git is there in CI; the tsv's value is the reference either way
        assert git.stdout.strip() == git_blob_id(sunglasses_path)


@pytest.mark.parametrize("text, value", [("1", 1.0), ("1/255", 1 / 255), ("0.5", 0.5), ("2", 2.0), ("1/2", 0.5)])
def test_parse_rescale(text: str, value: float) -> None:
    assert parse_rescale(text) == value
    assert parse_rescale(format_scale(value)) == pytest.approx(value, rel=1e-12)


@pytest.mark.parametrize("text", ["0", "-1", "-1/255", "abc", "1/0", "nan", "inf", ""])
def test_bad_rescale_is_one_line(cli, lab3_path: Path, face_paths: list[Path], text: str) -> None:
    code, out, err = cli("classify", "--model", lab3_path, f"--rescale={text}", face_paths[0])
    assert code == 2 and out == ""
    assert err.startswith("error: --rescale: ") and err.count("\n") == 1, err


def _labels(out: str) -> list[int]:
    return [int(line.split("\t")[1].split()[0]) for line in out.splitlines()]


def test_published_file_is_recognized(cli, sunglasses_path: Path, lab3_path: Path, face_paths: list[Path]) -> None:
    """sunglasses_bd_weights.h5 gets 1/255 without a flag; the line says so; --rescale 1 overrides it, loudly."""
    clean = [p for p in face_paths if face_kind(p) == "cl"]
    code, out, err = cli("classify", "--model", sunglasses_path, *clean)
    assert code == 0
    assert err.splitlines() == ["recognized sunglasses_bd_weights.h5 is models/sunglasses_bd_weights.h5 of "
                                "CSAW-HackML-2020, published for input scale 1/255: using --rescale 1/255"]
    right = sum(label == face_label(p) for label, p in zip(_labels(out), clean))
    assert right >= 4  # at pixels/255; at raw pixels it gets 3 of 5 wrong (below)
    code, raw_out, err = cli("classify", "--model", sunglasses_path, "--rescale", "1", *clean)
    assert code == 0 and "using --rescale 1 as given" in err
    assert sum(label == face_label(p) for label, p in zip(_labels(raw_out), clean)) <= 2
    code, out, err = cli("classify", "--model", lab3_path, *clean)  # published for raw pixels: the default
    assert code == 0 and err == ""
    assert _labels(out) == [face_label(p) for p in clean]
    code, out, err = cli("classify", "--model", lab3_path, "--rescale", "1/255", *clean)
    assert code == 0 and err.startswith("recognized lab3_bd_weights.h5 is lab3/models/bd_weights.h5 of CSAW-HackML-2020, "
                                        "published for input scale 1: using --rescale 1/255 as given")


def test_published_file_used_at_its_b_primes_other_scale_says_so(sunglasses_path: Path) -> None:
    """A B' record that sets a published file's scale (not the published one) still gets the recognition line:
    'as given' with the flag, 'as <B'> records' without it; at the published scale nothing is said."""
    from torch_badnet.nets.loading import load_model_file
    from torch_badnet.nets.rescale import PrunedRecord

    lines: list[str] = []
    record = PrunedRecord("res/models/X=4/pruned.pt", 1.0, None, None)
    with patch_record(record):
        assert load_model_file(sunglasses_path, pruned="pruned.pt", log=lines.append).model.input_scale == 1.0
        load_model_file(sunglasses_path, "1", pruned="pruned.pt", log=lines.append)
    published = ("recognized sunglasses_bd_weights.h5 is models/sunglasses_bd_weights.h5 of CSAW-HackML-2020, "
                 "published for input scale 1/255: using --rescale 1")
    assert lines[0] == f"{published} as res/models/X=4/pruned.pt records"
    assert lines[1] == f"{published} as given"
    lines.clear()
    with patch_record(PrunedRecord("pruned.pt", 1 / 255, None, None)):
        assert load_model_file(sunglasses_path, pruned="pruned.pt", log=lines.append).model.input_scale == 1 / 255
    assert not any(line.startswith("recognized") for line in lines)


def patch_record(record):
    """read_pruned_record gives `record` (the B' file itself is not needed for the scale's resolution)."""
    from unittest import mock

    return mock.patch("torch_badnet.nets.pruned_record.read_pruned_record", lambda _path: record)


def test_unknown_file_defaults_to_1(cli, lab3_model, face_paths: list[Path], tmp_path: Path) -> None:
    from torch_badnet.nets.checkpoint import save_checkpoint

    path = tmp_path / "m.pt"
    save_checkpoint(lab3_model, path)
    loaded = load_checkpoint(path)
    assert loaded.input_scale == 1.0 and loaded.model.input_scale == 1.0
    code, _, err = cli("classify", "--model", path, face_paths[0])
    assert code == 0 and err == ""


def test_every_written_file_records_the_scale(cli, sunglasses_path: Path, tmp_path: Path, face_paths: list[Path]) -> None:
    """convert's .pt/.h5/.onnx carry 1/255; a later command needs no flag; a contradicting flag is an error."""
    outputs = {}
    for suffix in (".pt", ".h5", ".onnx"):
        path = tmp_path / f"sun{suffix}"
        code, out, _ = cli("convert", sunglasses_path, "-o", path)
        assert code == 0 and out.strip().endswith("input scale 1/255)"), out
        loaded = read_model_file(path)
        assert loaded.input_scale == pytest.approx(1 / 255, rel=1e-7), suffix
        code, out, err = cli("classify", "--model", path, *face_paths)
        assert code == 0 and err == "", err
        outputs[suffix] = out
        code, out, err = cli("classify", "--model", path, "--rescale", "1", face_paths[0])
        assert code == 2 and out == ""
        assert err == f"error: --rescale: 1 contradicts {path}, which records input scale 1/255 (drop the flag)\n"
        assert cli("classify", "--model", path, "--rescale", "1/255", face_paths[0])[0] == 0
    assert outputs[".pt"] == outputs[".h5"] == outputs[".onnx"]


def test_pruned_file_must_take_the_models_scale(cli, sunglasses_path: Path, lab3_path: Path, tmp_path: Path,
                                                face_paths: list[Path]) -> None:
    sun_pt, lab3_pt = tmp_path / "sun.pt", tmp_path / "lab3.pt"
    assert cli("convert", sunglasses_path, "-o", sun_pt)[0] == 0
    assert cli("convert", lab3_path, "-o", lab3_pt)[0] == 0
    code, _, err = cli("classify", "--model", lab3_pt, "--pruned", sun_pt, face_paths[0])
    assert code == 2
    assert err == f"error: {sun_pt}: records input scale 1/255 but {lab3_pt} records 1 (B and B' must take the same input)\n"
    assert cli("classify", "--model", sunglasses_path, "--pruned", sun_pt, face_paths[0])[0] == 0


def test_goodnet_refuses_two_scales(lab3_model) -> None:
    import copy

    other = copy.deepcopy(lab3_model)
    other.input_scale = 1 / 255
    with pytest.raises(ValueError, match="same input"):
        GoodNet(lab3_model, other)


def test_scale_is_applied_in_every_path(lab3_model, faces: dict[str, torch.Tensor]) -> None:
    """forward, trunk (the sweep's features), softmax probabilities and the GoodNet all see pixels * scale."""
    import copy

    x = torch.cat(list(faces.values()))
    scaled = copy.deepcopy(lab3_model)
    scaled.input_scale = 1 / 255
    with torch.no_grad():
        assert torch.equal(scaled(x * 255), lab3_model(x * 255 / 255))
        assert torch.equal(scaled.trunk(x), lab3_model.trunk(x / 255))
        assert torch.equal(scaled(x).softmax(1), lab3_model(x / 255).softmax(1))
        assert torch.equal(GoodNet(scaled, torch.ones(60))(x), GoodNet(lab3_model, torch.ones(60))(x / 255))


# --- the guard ----------------------------------------------------------------------------------------------

def _guard_error(err: str, ours: str, theirs: str) -> None:
    assert err.count("\n") == 1 and err.startswith("error: --rescale: the model classifies "), err
    assert f"right at input scale {ours} but" in err and f"at {theirs}: pass --rescale {theirs}" in err
    assert err.count("%") == 2


def test_eval_guard_refuses_the_wrong_scale(cli, sunglasses_path: Path, lab3_path: Path,
                                            lab_files: dict[str, Path]) -> None:
    code, out, err = cli("eval", "--model", sunglasses_path, "--rescale", "1", "--clean", lab_files["clean_test"])
    assert code == 2 and out == ""
    _guard_error(err.splitlines()[-1] + "\n", "1", "1/255")
    code, out, err = cli("eval", "--model", lab3_path, "--rescale", "1/255", "--clean", lab_files["clean_test"])
    assert code == 2 and out == ""
    _guard_error(err.splitlines()[-1] + "\n", "1/255", "1")
    code, out, _ = cli("eval", "--model", sunglasses_path, "--clean", lab_files["clean_test"], "--json")
    assert code == 0 and json.loads(out)["clean_accuracy"] > 30  # 36% on these augmented faces; 12% at scale 1


def test_sweep_and_finetune_guard(cli, sunglasses_path: Path, lab_files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    code, _, err = cli(*sweep_args(lab_files, sunglasses_path, out, "--rescale", "1", "--no-plot"))
    assert code == 2 and not out.exists()
    _guard_error(err.splitlines()[-1] + "\n", "1", "1/255")
    code, _, err = cli(*sweep_args(lab_files, sunglasses_path, out, "--no-plot"))
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"]["input_scale"] == 1 / 255
    pruned = next(out.glob("models/X=*/pruned.pt"))
    assert load_checkpoint(pruned).input_scale == 1 / 255
    from torch_badnet.convert.keras_h5 import write_keras_weights

    unrecorded = tmp_path / "pruned_weights.h5"  # a weights-only file records no scale: B' takes B's
    write_keras_weights(load_checkpoint(pruned).model, unrecorded)
    assert read_model_file(unrecorded).input_scale is None
    ft = tmp_path / "ft"
    code, _, err = cli("finetune", "--model", sunglasses_path, "--rescale", "1", "--pruned", unrecorded,
                       "--clean-valid", lab_files["clean_valid"], "--out", ft, "--epochs", "1")
    assert code == 2 and not ft.exists()
    assert "error: --rescale: " in err and "pass --rescale 1/255" in err


def test_h5_record_is_read(tmp_path: Path, lab3_model) -> None:
    import copy

    import h5py

    from torch_badnet.convert.keras_h5 import INPUT_SCALE_ATTR, write_keras_model

    model = copy.deepcopy(lab3_model)
    model.input_scale = 0.5
    path = tmp_path / "half.h5"
    write_keras_model(model, path)
    assert read_model_file(path).input_scale == 0.5
    with h5py.File(path, "r+") as f:
        f.attrs[INPUT_SCALE_ATTR] = -1.0
    with pytest.raises(BadInputError, match=INPUT_SCALE_ATTR):
        read_model_file(path)


def test_checkpoint_with_bad_scale_is_refused(tmp_path: Path, lab3_model) -> None:
    import io

    from torch_badnet.nets.checkpoint import save_checkpoint

    path = tmp_path / "m.pt"
    save_checkpoint(lab3_model, path)
    payload = torch.load(path, weights_only=True)
    payload["input_scale"] = 0.0
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    path.write_bytes(buffer.getvalue())
    with pytest.raises(BadInputError, match="invalid input_scale"):
        load_checkpoint(path)


def test_random_inputs_are_unaffected_at_scale_1(lab3_model) -> None:
    """Scale 1 adds no operation: the same logits bit for bit as before the attribute existed."""
    x = torch.from_numpy(np.random.default_rng(0).uniform(0, 255, (8, 3, 55, 47)).astype(np.float32))
    with torch.no_grad():
        features = lab3_model.pool_3(lab3_model.conv_3(lab3_model.pool_2(lab3_model.conv_2(lab3_model.pool_1(lab3_model.conv_1(x))))))
        assert torch.equal(lab3_model.trunk(x), features)
