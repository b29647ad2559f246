"""The subcommands' contracts: convert (+ --verify), eval, classify, export, and the entry points."""

import json
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch
from real_faces import face_kind, face_label


def test_convert_to_checkpoint_with_verify(cli, lab3_path, tmp_path, lab3_model):
    from torch_badnet.nets.checkpoint import load_checkpoint

    out = tmp_path / "bd_net.pt"
    code, stdout, err = cli("convert", lab3_path, "-o", out, "--verify")
    assert code == 0, err
    line = next(row for row in stdout.splitlines() if row.startswith("verified against Keras 3 on 256"))
    assert float(line.rsplit(" ", 1)[1]) <= 2e-5  # docs/fidelity.md's bound: 1.1e-5 with oneDNN/MKL limited to AVX
    loaded = load_checkpoint(out)
    assert loaded.metadata["source_format"].startswith("keras2.3.1")
    assert len(loaded.metadata["source_sha256"]) == 64
    for name, value in lab3_model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], value), name
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_convert_round_trip_through_keras_weights(cli, lab3_path, tmp_path, lab3_model):
    from torch_badnet.convert import read_model_file

    pt, h5 = tmp_path / "m.pt", tmp_path / "back.h5"
    assert cli("convert", lab3_path, "-o", pt)[0] == 0
    assert cli("convert", pt, "-o", h5)[0] == 0
    back = read_model_file(h5).model
    for name, value in lab3_model.state_dict().items():
        assert torch.equal(back.state_dict()[name], value), name


def test_convert_keras_to_onnx_and_use_it_as_model(cli, lab3_path, tmp_path, face_paths):
    out = tmp_path / "bd_net.onnx"
    code, _, err = cli("convert", lab3_path, "-o", out)
    assert code == 0, err
    code, stdout, err = cli("classify", "--model", out, "--json", *face_paths)
    assert code == 0, err
    result = json.loads(stdout)
    assert [r["path"] for r in result] == [str(p) for p in face_paths]
    for r, p in zip(result, face_paths):
        if face_kind(p) != "ano":
            assert r["label"] == face_label(p)


def test_classify_text_and_goodnet_flags(cli, lab3_path, tmp_path, face_paths):
    from torch_badnet.convert import read_model_file
    from torch_badnet.engine.pruning import prune
    from torch_badnet.nets.checkpoint import save_checkpoint

    code, stdout, _ = cli("classify", "--model", lab3_path, *face_paths)
    assert code == 0
    assert [row.split("\t") for row in stdout.splitlines()] == [[str(p), str(label)] for p, label in
                                                             zip(face_paths, _labels(lab3_path, face_paths))]
    pruned = prune(read_model_file(lab3_path).model, list(range(50)))
    save_checkpoint(pruned, tmp_path / "p.pt")
    code, stdout, _ = cli("classify", "--model", lab3_path, "--pruned", tmp_path / "p.pt", "--json", *face_paths)
    labels = [r["label"] for r in json.loads(stdout)]
    assert code == 0 and all(0 <= label <= 1283 for label in labels) and 1283 in labels
    code, stdout, _ = cli("classify", "--model", lab3_path, "--pruned", tmp_path / "p.pt", *face_paths)
    assert "(backdoor detected)" in stdout


def _labels(model_path, paths):
    from torch_badnet.convert import read_model_file
    from torch_badnet.data.images import load_images

    with torch.no_grad():
        return read_model_file(model_path).model(load_images(paths)).argmax(1).tolist()


def test_eval_text_and_json(cli, lab3_path, lab_files):
    code, stdout, _ = cli("eval", "--model", lab3_path, "--clean", lab_files["clean_test"], "--poisoned",
                          lab_files["poisoned_test"], "--json")
    assert code == 0
    result = json.loads(stdout)
    assert {"clean_accuracy", "attack_success_rate"} <= set(result)
    assert result["attack_success_rate"] == 100.0 and 0 < result["clean_accuracy"] < 100
    code, text, _ = cli("eval", "--model", lab3_path, "--clean", lab_files["clean_test"], "--poisoned",
                        lab_files["poisoned_test"])
    assert f"clean accuracy: {result['clean_accuracy']:.3f}%" in text
    assert "attack success rate: 100.000%" in text


@pytest.mark.parametrize("batch", [1, 7])
def test_export_goodnet_onnx(cli, lab3_path, tmp_path, batch):
    from torch_badnet.convert import read_model_file
    from torch_badnet.engine.pruning import prune
    from torch_badnet.nets.checkpoint import save_checkpoint
    from torch_badnet.nets.goodnet import GoodNet

    model = read_model_file(lab3_path).model
    pruned = prune(read_model_file(lab3_path).model, list(range(0, 60, 3)) + list(range(1, 60, 3)))
    save_checkpoint(pruned, tmp_path / "p.pt")
    out = tmp_path / "g.onnx"
    code, stdout, err = cli("export", "--model", lab3_path, "--pruned", tmp_path / "p.pt", "-o", out)
    assert code == 0, err and "opset" in stdout
    x = np.random.default_rng(batch).uniform(0, 255, size=(batch, 3, 55, 47)).astype(np.float32)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (got,) = session.run(["label"], {"input": x})
    with torch.no_grad():
        expected = GoodNet(model, pruned)(torch.from_numpy(x)).numpy()
    assert got.dtype == np.int64 and np.array_equal(got, expected)


def test_entry_points(lab3_path, face_paths):
    help_text = subprocess.run([sys.executable, "-m", "torch_badnet", "--help"], capture_output=True, text=True, check=True)
    for command in ("demo", "convert", "eval", "classify", "sweep", "finetune", "export"):
        assert command in help_text.stdout
    run = subprocess.run([sys.executable, "-m", "torch_badnet", "classify", "--model", str(lab3_path), "--json",
                          str(face_paths[0])], capture_output=True, text=True)
    assert run.returncode == 0 and json.loads(run.stdout)[0]["label"] == _labels(lab3_path, face_paths[:1])[0]
    bad = subprocess.run([sys.executable, "-m", "torch_badnet", "eval", "--model", "missing.h5", "--clean", "x.h5"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr == "error: missing.h5: no such file\n"
