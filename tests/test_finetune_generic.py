"""Fine-tuning any model the sweep takes (issue 24, item 5): `tb.finetune` and `torch-badnet finetune` on a
Keras-origin B (the published MNIST BadNet F) and on a torch CNN, with B' as the sweep returns or saves it.

Checked: the pruned channels stay at their fill, the first Conv2d stays fixed by default (as the lab's conv_1;
`train_conv_1` trains it), every reported number equals a recomputation with the nets returned or written, the
CLI and the API give the same run, and a B' not derived from B is refused (one line, exit 2, nothing written).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from mnist_like import mnist_like_digits
from torch_nets import SmallCNN

import torch_badnet as tb
from torch_badnet.data.lab_sets import write_lab_h5
from torch_badnet.defense.finetuning import holdout_split
from torch_badnet.engine.prunable import MaskedNet
from torch_badnet.engine.saving import load_masked
from torch_badnet.nets.goodnet import combine
from torch_badnet.nets.pairing import PairingError
from torch_badnet.nets.predict import labels_in_batches

Data = tuple[torch.Tensor, torch.Tensor]
CLEAN, ASR = tb.Column("pruned", "test", "clean_acc"), tb.Column("pruned", "test", "asr")
G_CLEAN = tb.Column("goodnet", "test", "clean_acc")
EPOCHS = 3


def digits(n: int, seed: int, poisoned: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """MNIST-like digits; poisoned: F's trigger (a white square, bottom right) and the all-to-all label y + 1."""
    pixels, labels = mnist_like_digits(n, seed)
    if poisoned:
        pixels, labels = pixels.copy(), (labels + 1) % 10
        pixels[:, 24:, 24:] = 255
    return pixels, labels


def as_tensors(pixels: np.ndarray, labels: np.ndarray) -> Data:
    return torch.from_numpy(pixels.astype(np.float32))[:, None], torch.from_numpy(labels)


def accuracy(net: torch.nn.Module, data: Data) -> float:
    """Percent of the set that `net` labels as the set's labels (the report's rates: 100 * count / n)."""
    return 100.0 * int((labels_in_batches(net.eval(), data[0]) == data[1]).sum()) / len(data[1])


def layer_output(net: MaskedNet, x: torch.Tensor) -> torch.Tensor:
    """The pruned layer's output as the rest of the net sees it (after the mask hook)."""
    seen = []
    handle = net.net.get_submodule(net.layer).register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        with torch.inference_mode():
            net(x)
    finally:
        handle.remove()
    return seen[0]


def assert_mask_held(tuned: MaskedNet, pruned: MaskedNet, x: torch.Tensor) -> None:
    assert isinstance(tuned, MaskedNet) and tuned.layer == pruned.layer
    assert tuned.pruned_channels == pruned.pruned_channels and len(pruned.pruned_channels) > 0
    out = layer_output(tuned, x)
    kept = [c for c in range(out.shape[1]) if c not in pruned.pruned_channels]
    assert bool((out[:, pruned.pruned_channels] == tuned.fill).all()) and bool((out[:, kept] != tuned.fill).any())


def assert_numbers_recomputed(run: tb.FinetuneRun, model: torch.nn.Module, pruned: MaskedNet, clean_valid: Data,
                              clean_test: Data, poisoned_test: Data) -> None:
    """Before and after: B'/B'_ft clean accuracy and attack success, G_ft clean accuracy, the held-out accuracy of
    the kept epoch: each equals the same rate computed here from the nets."""
    tuned = run.model
    assert run.before[CLEAN] == accuracy(pruned, clean_test) and run.before[ASR] == accuracy(pruned, poisoned_test)
    after = run.tuned.metrics
    assert after[CLEAN] == accuracy(tuned, clean_test) and after[ASR] == accuracy(tuned, poisoned_test)
    with torch.inference_mode():
        g = combine(model(clean_test[0]).argmax(1), tuned(clean_test[0]).argmax(1), 10**6)
    assert after[G_CLEAN] == 100.0 * int((g == clean_test[1]).sum()) / len(clean_test[1])
    facts = run.tuned.facts
    _train, held = holdout_split(len(clean_valid[1]), run.tuned.config.holdout, run.tuned.config.seed)
    assert facts["holdout_acc"] == accuracy(tuned, (clean_valid[0][held], clean_valid[1][held]))
    assert facts["holdout"]["images"] == len(held) and facts["epochs_run"] == EPOCHS
    assert after[CLEAN] != run.before[CLEAN]  # fine-tuning changed B' (else the checks above prove little)


# --- MNIST F, a Keras-origin B ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def f_path(real_dir: Path) -> Path:
    return real_dir / "models" / "F_mnist_all_all_bd_net.h5"


@pytest.fixture(scope="module")
def f_sets() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {"clean_valid": digits(300, 1), "poisoned_valid": digits(100, 2, True), "clean_test": digits(200, 3),
            "poisoned_test": digits(100, 4, True)}


@pytest.fixture(scope="module")
def f_result(f_path: Path, f_sets: dict[str, tuple[np.ndarray, np.ndarray]], tmp_path_factory: pytest.TempPathFactory):
    """(B, the sweep's result at X=4, its saved folder, the sets as lab files)."""
    net = tb.load_model(f_path)
    data = {name: as_tensors(*arrays) for name, arrays in f_sets.items()}
    result = tb.prune_sweep(net, data["clean_valid"], data["poisoned_valid"], data["clean_test"], data["poisoned_test"],
                            thresholds=(4,))
    assert result.threshold(4).reached
    folder = tmp_path_factory.mktemp("f")
    result.save(folder / "sweep", plot=False)
    files = {}
    for name, arrays in f_sets.items():
        files[name] = folder / f"{name}.h5"
        write_lab_h5(files[name], *arrays)
    return net, result, folder / "sweep" / "models" / "X=4", files


def test_api_finetunes_f_with_the_mask_held(f_result, f_sets: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    net, result, _folder, _files = f_result
    data = {name: as_tensors(*arrays) for name, arrays in f_sets.items()}
    b4 = result.pruned(4)
    lines: list[str] = []
    run = tb.finetune(net, b4, data["clean_valid"], data["clean_test"], data["poisoned_test"], epochs=EPOCHS,
                      patience=EPOCHS, log=lines.append)
    assert lines[0] == f"fine-tuning B' ({len(b4.pruned_channels)} channels of conv_2 pruned) on 300 clean validation images"
    tuned = run.model
    assert_mask_held(tuned, b4, data["clean_test"][0])
    assert_numbers_recomputed(run, net, b4, data["clean_valid"], data["clean_test"], data["poisoned_test"])
    old, new = b4.net.state_dict(), tuned.net.state_dict()
    assert torch.equal(old["conv_1.weight"], new["conv_1.weight"])  # the first Conv2D stays fixed by default
    assert not torch.equal(old["fc_1.weight"], new["fc_1.weight"]) and not torch.equal(old["conv_2.weight"], new["conv_2.weight"])
    summary = run.summary()
    assert summary["model"]["class"] == "KerasGraphNet" and summary["model"]["input_scale"] == pytest.approx(1 / 255)
    assert summary["pruned"]["layer"] == "conv_2" and summary["pruned"]["pruned_channels"] == b4.pruned_channels
    trained = tb.finetune(net, b4, data["clean_valid"], epochs=1, train_conv_1=True).model
    assert not torch.equal(old["conv_1.weight"], trained.net.state_dict()["conv_1.weight"])  # unless train_conv_1


@pytest.mark.parametrize("pruned_file", ["pruned.pt", "pruned.h5"])
def test_cli_finetunes_f_from_the_sweeps_b_prime(cli, f_path: Path, f_result, tmp_path: Path,
                                                 f_sets: dict[str, tuple[np.ndarray, np.ndarray]], pruned_file: str) -> None:
    """`torch-badnet finetune` with the sweep's pruned.pt or pruned.h5 of F: the API's run (same numbers, same
    net), finetuned.pt rebuilt from its Keras config, finetuned.h5 with the pruned channels' kernel and bias zeroed."""
    net, result, folder, files = f_result
    out = tmp_path / "ft"
    code, stdout, err = cli("finetune", "--model", f_path, "--pruned", folder / pruned_file, "--clean-valid", files["clean_valid"],
                            "--clean-test", files["clean_test"], "--poisoned-test", files["poisoned_test"],
                            "--epochs", EPOCHS, "--patience", EPOCHS, "--out", out)
    assert code == 0, err
    assert "warning" not in err  # the pair is verified (pruned.pt's fingerprint) or derived (pruned.h5's zeroed channels)
    assert sorted(p.name for p in out.iterdir()) == [".torch-badnet-files", "finetuned.h5", "finetuned.pt", "history.csv", "summary.json"]
    data = {name: as_tensors(*arrays) for name, arrays in f_sets.items()}
    b4 = result.pruned(4)
    run = tb.finetune(net, b4, data["clean_valid"], data["clean_test"], data["poisoned_test"], epochs=EPOCHS, patience=EPOCHS)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_clean_acc"] == run.tuned.metrics[CLEAN] and summary["test_asr"] == run.tuned.metrics[ASR]
    assert summary["before_finetuning"]["test_clean_acc"] == run.before[CLEAN]
    assert summary["pruned"]["pruned_channels"] == b4.pruned_channels and summary["pruned"]["path"] == str(folder / pruned_file)
    assert f"{run.before[CLEAN]:>10.3f} {run.tuned.metrics[CLEAN]:>11.3f}" in stdout
    x = data["clean_test"][0]
    written = load_masked(out / "finetuned.pt")  # rebuilt from the recorded Keras config
    as_keras = tb.load_model(out / "finetuned.h5")
    with torch.inference_mode():
        assert torch.equal(written(x), run.model(x))
        assert torch.equal(as_keras(x).argmax(1), run.model(x).argmax(1))
    assert written.pruned_channels == b4.pruned_channels
    kernel, bias = as_keras.conv_2.weight.detach(), as_keras.conv_2.bias.detach()
    assert not kernel[b4.pruned_channels].any() and not bias[b4.pruned_channels].any() and kernel.any()


def test_cli_refuses_a_b_prime_not_derived_from_b(cli, f_path: Path, f_result, tmp_path: Path) -> None:
    """One line, exit 2, nothing written: a pruned.pt recording another B's fingerprint; a pruned.pt of another
    architecture. A Keras B' (no fingerprint) whose weights differ from B's is a warning, as the lab's."""
    from torch_badnet.convert.keras_graph import write_keras_graph

    net, _result, folder, files = f_result
    other = copy.deepcopy(net)
    with torch.no_grad():
        other.fc_1.weight[0, 0] += 1e-3
    other_path = tmp_path / "other.h5"
    write_keras_graph(other, other_path)
    out = tmp_path / "ft"
    base = ["finetune", "--clean-valid", files["clean_valid"], "--epochs", 0, "--out", out]
    code, stdout, err = cli(*base, "--model", other_path, "--pruned", folder / "pruned.pt")
    assert code == 2 and stdout == "" and err.count("\n") == 1, err
    assert err.startswith(f"error: {folder / 'pruned.pt'}: was not derived from --model {other_path} (B' records the weights fingerprint")
    assert not out.exists()
    code, stdout, err = cli(*base, "--model", other_path, "--pruned", folder / "pruned.pt", "--allow-unpaired")
    assert code == 0, err
    code, stdout, err = cli(*base, "--model", other_path, "--pruned", folder / "pruned.h5", "--force")
    assert code == 0 and f"warning: {folder / 'pruned.h5'}: could not verify that it was derived from --model {other_path}" in err

    cnn_out = tmp_path / "cnn"
    torch.manual_seed(0)
    cnn = SmallCNN(10).eval()
    x = as_tensors(*digits(60, 5))[0] / 255
    with torch.inference_mode():
        y = cnn(x).argmax(1)
    tb.prune_sweep(cnn, (x, y), (x[:20], y[:20]), thresholds=(2,)).save(cnn_out, plot=False)
    cnn_pruned = next(cnn_out.glob("models/*/pruned.pt"))
    out = tmp_path / "ft2"
    code, stdout, err = cli("finetune", "--model", f_path, "--pruned", cnn_pruned, "--clean-valid", files["clean_valid"], "--out", out)
    assert code == 2 and stdout == "" and err.count("\n") == 2, err  # F's recognition note, then the error
    assert err.splitlines()[1] == (f"error: {cnn_pruned}: prunes layer 'pool2', which --model {f_path} does not have: "
                                   "it was not derived from it")
    assert not out.exists()


# --- a torch CNN --------------------------------------------------------------------------------------------------

def trained_cnn(seed: int) -> torch.nn.Module:
    """SmallCNN (10 classes) trained a little on digits / 255, a tenth of them with F's trigger and label 0."""
    torch.manual_seed(seed)
    model = SmallCNN(10)
    pixels, labels = digits(600, 90 + seed)
    pixels[::10], labels[::10] = digits(60, 95 + seed, True)[0], 0
    x, y = as_tensors(pixels, labels)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _epoch in range(4):
        for start in range(0, len(y), 32):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x[start : start + 32] / 255), y[start : start + 32]).backward()
            optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def cnn_case() -> tuple[torch.nn.Module, dict[str, Data]]:
    """A trained SmallCNN and its sets (digits / 255: a module gets its data as given), poisoned: label 0."""
    model = trained_cnn(3)
    sets = {}
    for i, name in enumerate(("clean_valid", "poisoned_valid", "clean_test", "poisoned_test")):
        x, y = as_tensors(*digits(240 if name == "clean_valid" else 120, 20 + i, name.startswith("poisoned")))
        sets[name] = (x / 255, torch.zeros_like(y) if name.startswith("poisoned") else y)
    return model, sets


def test_api_finetunes_a_torch_cnn(cnn_case, tmp_path: Path) -> None:
    model, data = cnn_case
    result = tb.prune_sweep(model, data["clean_valid"], data["poisoned_valid"], thresholds=(2,))
    b2 = result.pruned(2)
    run = tb.finetune(model, b2, data["clean_valid"], data["clean_test"], data["poisoned_test"], epochs=EPOCHS,
                      patience=EPOCHS, lr=3e-3)
    tuned = run.model
    assert_mask_held(tuned, b2, data["clean_test"][0])
    assert_numbers_recomputed(run, model, b2, data["clean_valid"], data["clean_test"], data["poisoned_test"])
    old, new = b2.net.state_dict(), tuned.net.state_dict()
    assert torch.equal(old["conv1.weight"], new["conv1.weight"]) and torch.equal(old["conv1.bias"], new["conv1.bias"])
    assert not torch.equal(old["fc1.weight"], new["fc1.weight"])
    assert run.summary()["model"]["class"] == "SmallCNN" and run.summary()["model"]["path"] == "<in memory>"
    written = run.save(tmp_path / "ft")
    assert sorted(written) == ["finetuned.pt", "history.csv", "summary.json"]  # no Keras file for a torch module
    loaded = load_masked(tmp_path / "ft" / "finetuned.pt", SmallCNN(10))
    with torch.inference_mode():
        assert torch.equal(loaded(data["clean_test"][0]), tuned(data["clean_test"][0]))
    tb.GoodNet(model, loaded)  # finetuned.pt records B's fingerprint: paired
    trained = tb.finetune(model, b2, data["clean_valid"], epochs=1, train_conv_1=True).model
    assert not torch.equal(old["conv1.weight"], trained.net.state_dict()["conv1.weight"])


def test_api_refuses_a_b_prime_of_another_model(cnn_case) -> None:
    model, data = cnn_case
    b2 = tb.prune_sweep(model, data["clean_valid"], data["poisoned_valid"], thresholds=(2,)).pruned(2)
    other = trained_cnn(4)
    with pytest.raises(PairingError, match="fingerprint"):
        tb.finetune(other, b2, data["clean_valid"], epochs=0)
    assert tb.finetune(other, b2, data["clean_valid"], epochs=0, allow_unpaired=True).tuned.facts["epochs_run"] == 0
    unmarked = MaskedNet(copy.deepcopy(other), b2.layer, b2.channel_mask)  # no fingerprint, other weights: not refused
    tb.finetune(model, unmarked, data["clean_valid"], epochs=0)
    with pytest.raises(TypeError, match="MaskedNet"):
        tb.finetune(model, copy.deepcopy(model), data["clean_valid"])


# --- the lab's BadNet pruned at another layer than conv_3 -----------------------------------------------------------

def test_lab_net_pruned_at_conv_2(cli, lab3_path: Path, lab_files: dict[str, Path], tmp_path: Path) -> None:
    """The lab net swept at conv_2 (the generic engine): pruned.h5 is B' with conv_2's pruned channels zeroed; the
    API and the CLI fine-tune its MaskedNet with the mask held and conv_1 fixed, to the same numbers."""
    bd = tb.load_model(lab3_path)
    result = tb.prune_sweep(bd, lab_files["clean_valid"], lab_files["poisoned_valid"], layer="conv_2", thresholds=(2,))
    written = result.save(tmp_path / "sweep", plot=False)
    assert {"models/X=2/pruned.pt", "models/X=2/pruned.h5"} <= set(written)
    b2 = result.pruned(2)
    clean_test = tb.load_lab_set(lab_files["clean_test"])
    poisoned_test = tb.load_lab_set(lab_files["poisoned_test"])
    as_keras = tb.load_model(tmp_path / "sweep" / "models" / "X=2" / "pruned.h5")
    assert not as_keras.conv_2.weight.detach()[b2.pruned_channels].any() and not as_keras.conv_2.bias.detach()[b2.pruned_channels].any()
    assert torch.equal(labels_in_batches(as_keras, clean_test[0]), labels_in_batches(b2, clean_test[0]))
    run = tb.finetune(bd, b2, lab_files["clean_valid"], lab_files["clean_test"], lab_files["poisoned_test"], epochs=1, patience=1)
    assert_mask_held(run.model, b2, clean_test[0][:16])
    assert run.before[CLEAN] == accuracy(b2, clean_test) and run.before[ASR] == accuracy(b2, poisoned_test)
    assert run.tuned.metrics[CLEAN] == accuracy(run.model, clean_test) != run.before[CLEAN]
    old, new = b2.net.state_dict(), run.model.net.state_dict()
    assert torch.equal(old["conv_1.weight"], new["conv_1.weight"]) and not torch.equal(old["conv_3.weight"], new["conv_3.weight"])
    out = tmp_path / "ft"
    code, _stdout, err = cli("finetune", "--model", lab3_path, "--pruned", tmp_path / "sweep" / "models" / "X=2" / "pruned.pt",
                             "--clean-valid", lab_files["clean_valid"], "--clean-test", lab_files["clean_test"],
                             "--poisoned-test", lab_files["poisoned_test"], "--epochs", 1, "--patience", 1, "--out", out)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_clean_acc"] == run.tuned.metrics[CLEAN] and summary["pruned"]["layer"] == "conv_2"
    assert (out / "finetuned.h5").is_file()


# --- eval, classify and export take a generic B' too ----------------------------------------------------------------

@pytest.mark.parametrize("saved", ["pruned.pt", "pruned.h5"])
def test_eval_classify_and_export_take_fs_b_prime(f_result, f_path: Path, cli, tmp_path: Path, saved: str) -> None:
    """The sweep's own B' files of a Keras-origin model (they failed as 'not a torch-badnet checkpoint'): eval gives
    the sweep's G_4 numbers, classify the GoodNet's labels, export a GoodNet graph whose labels onnxruntime
    reproduces."""
    import onnxruntime
    from PIL import Image

    net, result, folder, files = f_result
    pruned = folder / saved
    t = result.threshold(4)
    code, out, err = cli("eval", "--model", f_path, "--pruned", pruned, "--clean", files["clean_test"],
                         "--poisoned", files["poisoned_test"])
    assert code == 0, err
    shown = dict(line.rsplit(": ", 1) for line in out.splitlines() if ": " in line)
    assert shown["clean accuracy"] == f"{t.metrics[tb.Column('goodnet', 'test', 'clean_acc')]:.3f}%"
    assert shown["attack success rate"] == f"{t.metrics[tb.Column('goodnet', 'test', 'asr')]:.3f}%"

    goodnet = tb.GoodNet(net, result.pruned(4)).eval()
    x, _ = tb.load_lab_set(files["poisoned_test"], input_shape=net.input_shape)
    with torch.no_grad():
        expected = goodnet(x)
    images = []
    for i in range(5):
        images.append(tmp_path / f"d{i}.png")
        Image.fromarray(x[i, 0].numpy().astype(np.uint8)).save(images[-1])
    code, out, err = cli("classify", "--model", f_path, "--pruned", pruned, *images)
    assert code == 0, err
    assert [int(line.split("\t")[1]) for line in out.splitlines()] == expected[:5].tolist()

    code, out, err = cli("export", "--model", f_path, "--pruned", pruned, "-o", tmp_path / "g.onnx")
    assert code == 0, err
    session = onnxruntime.InferenceSession(str(tmp_path / "g.onnx"))
    labels = session.run(None, {"input": x.numpy()})[0]
    assert np.array_equal(labels, expected.numpy()) and (labels == goodnet.detected_class).any()
