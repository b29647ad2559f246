"""Fine-pruning: the mask survives fine-tuning, runs are deterministic, and the CLI writes its contract."""

import json

import numpy as np
import pytest
import torch
from conftest import read_csv
from real_faces import augment, augment_indexed, face_kind, face_label

from torch_badnet.data.lab_sets import write_lab_h5
from torch_badnet.defense.finetuning import FinetuneConfig, effective_mask, holdout_split, train_masked
from torch_badnet.engine.pruning import prune

PRUNED = [0, 2, 6, 15, 12, 13, 14, 9, 24, 25, 26, 27, 21, 22, 23, 17, 31, 30, 50, 53]


@pytest.fixture(scope="module")
def pruned_and_data(lab3_model, faces, face_paths):
    """B' with 20 channels pruned, and 120 augmented clean faces with their true identities."""
    import copy

    identities = torch.tensor([face_label(p) for p in face_paths if face_kind(p) == "cl"])
    x, source = augment_indexed(faces["cl"], 120, seed=11)
    return prune(copy.deepcopy(lab3_model), PRUNED), x, identities[source]


def test_holdout_split_is_seeded_and_disjoint():
    train, held = holdout_split(100, 0.2, seed=3)
    assert held.numel() == 20 and train.numel() == 80
    assert set(train.tolist()).isdisjoint(held.tolist()) and set(train.tolist()) | set(held.tolist()) == set(range(100))
    again = holdout_split(100, 0.2, seed=3)
    assert torch.equal(train, again[0]) and torch.equal(held, again[1])
    assert not torch.equal(held, holdout_split(100, 0.2, seed=4)[1])


def test_mask_survives_and_runs_repeat(pruned_and_data):
    pruned, x, y = pruned_and_data
    config = FinetuneConfig(epochs=2, lr=1e-3, batch_size=32, seed=5, patience=5)
    first = train_masked(pruned, x, y, config)
    second = train_masked(pruned, x, y, config)
    tuned = first.model
    assert first.best_epoch > 0  # it did train (else the following is trivially true)
    assert torch.equal(tuned.conv_3.mask, pruned.conv_3.mask)
    assert bool((tuned.conv_3.weight[PRUNED] == 0).all()) and bool((tuned.conv_3.bias[PRUNED] == 0).all())
    kept = [c for c in range(60) if c not in PRUNED]
    assert not torch.equal(tuned.conv_3.weight[kept], pruned.conv_3.weight[kept])
    for name, value in first.model.state_dict().items():
        assert torch.equal(value, second.model.state_dict()[name]), name
    assert [h["holdout_acc"] for h in first.history] == [h["holdout_acc"] for h in second.history]
    assert first.holdout_images == 24 and first.train_images == 96


def test_fine_tuning_gives_the_same_bits_on_one_thread_and_on_two(pruned_and_data):
    """A batch worker (one torch thread) and `sweep` (all cores) fine-tune B' to the same weights: oneDNN and MKL
    sum differently on 1 and 2 threads, so training runs each slice of a batch on one thread."""
    pruned, x, y = pruned_and_data
    config = FinetuneConfig(epochs=2, lr=1e-3, batch_size=32, seed=5, patience=5)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = train_masked(pruned, x, y, config)
        assert torch.get_num_threads() == 1  # restored after training
        torch.set_num_threads(2)
        two = train_masked(pruned, x, y, config)
    finally:
        torch.set_num_threads(threads)
    for name, value in one.model.state_dict().items():
        assert torch.equal(value, two.model.state_dict()[name]), name
    assert repr(one.history) == repr(two.history)  # (epoch 0 has loss NaN)


def test_weight_memory_format_does_not_change_fine_tuning(pruned_and_data):
    """B' from the sweep (once channels_last) and B' from pruned.pt (contiguous) fine-tune to the same weights."""
    import copy

    pruned, x, y = pruned_and_data
    config = FinetuneConfig(epochs=2, lr=1e-3, batch_size=32, seed=5, patience=5)
    channels_last = copy.deepcopy(pruned).to(memory_format=torch.channels_last)
    assert channels_last.conv_2.weight.is_contiguous(memory_format=torch.channels_last)
    plain, other = train_masked(pruned, x, y, config).model, train_masked(channels_last, x, y, config).model
    for name, value in plain.state_dict().items():
        assert torch.equal(value, other.state_dict()[name]), name


def test_effective_mask_reads_baked_pruning(lab3_model):
    import copy

    baked = copy.deepcopy(lab3_model)
    with torch.no_grad():
        baked.conv_3.weight[[3, 7]] = 0
        baked.conv_3.bias[[3, 7]] = 0
    assert (effective_mask(baked) == 0).nonzero().flatten().tolist() == [3, 7]


def test_finetune_command_writes_its_outputs(cli, lab_files, lab3_path, tmp_path):
    from torch_badnet.convert import read_model_file

    sweep_out = tmp_path / "sweep"
    code, _, err = cli("sweep", "--model", lab3_path, "--clean-valid", lab_files["clean_valid"], "--poisoned-valid",
                       lab_files["poisoned_valid"], "--thresholds", "4", "--no-plot", "--out", sweep_out)
    assert code == 0, err
    pruned = sweep_out / "models" / "X=4" / "pruned.pt"
    out = tmp_path / "ft"
    code, stdout, err = cli("finetune", "--model", lab3_path, "--pruned", pruned, "--clean-valid", lab_files["clean_valid"],
                            "--clean-test", lab_files["clean_test"], "--poisoned-test", lab_files["poisoned_test"],
                            "--epochs", "2", "--lr", "1e-3", "--seed", "1", "--out", out)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    for key in ("test_clean_acc", "test_asr", "goodnet_test_clean_acc", "goodnet_test_asr",
                "goodnet_test_detection_rate", "goodnet_test_false_alarm_rate"):
        assert 0 <= summary[key] <= 100 and key in summary["before_finetuning"]
    assert summary["holdout"]["images"] == 40 and summary["holdout"]["train_images"] == 160
    history = read_csv(out / "history.csv")
    assert list(history[0]) == ["epoch", "loss", "holdout_acc"] and len(history) == 3
    channels = json.loads((sweep_out / "summary.json").read_text())["thresholds"][0]["pruned_channels"]
    for name in ("finetuned.pt", "finetuned.h5"):
        tuned = read_model_file(out / name).model
        assert bool((tuned.conv_3.weight[channels] == 0).all()) and bool((tuned.conv_3.bias[channels] == 0).all())
    assert "goodnet_test_asr" in stdout
    assert stdout.splitlines()[0].split()[-4:] == ["B'_X", "/", "G_X", "fine-tuned"] and "B_X" not in stdout
    from torch_badnet.nets.pairing import weights_fingerprint

    assert read_model_file(out / "finetuned.pt").metadata["base_weights_sha256"] == weights_fingerprint(read_model_file(lab3_path).model)
    code, _, err = cli("eval", "--model", lab3_path, "--pruned", out / "finetuned.pt", "--clean", lab_files["clean_test"])
    assert code == 0 and err == ""  # the fine-tuned B' is verified as B's by its fingerprint, not by its weights


def _poisoned_file(path, base, seed, n=120):
    write_lab_h5(path, augment(base, n, seed).numpy().astype(np.float64), np.zeros(n))
    return path


def test_several_triggers_equal_separate_runs(cli, lab_files, lab3_path, faces, tmp_path):
    """--poisoned-* NAME=PATH reports each trigger; each equals a plain run on that trigger alone."""
    ano_valid = _poisoned_file(tmp_path / "ano_valid.h5", faces["ano"], 21)
    ano_test = _poisoned_file(tmp_path / "ano_test.h5", faces["ano"], 22)
    common = ["--model", lab3_path, "--clean-valid", lab_files["clean_valid"], "--clean-test", lab_files["clean_test"],
              "--no-plot"]
    code, out, err = cli("sweep", *common, "--out", tmp_path / "multi",
                         "--poisoned-valid", f"sun={lab_files['poisoned_valid']}", "--poisoned-valid", f"ano={ano_valid}",
                         "--poisoned-test", f"sun={lab_files['poisoned_test']}", "--poisoned-test", f"ano={ano_test}")
    assert code == 0, err
    assert "B' attack[ano]" in out
    multi = read_csv(tmp_path / "multi" / "sweep.csv")
    for name, valid, test in [("sun", lab_files["poisoned_valid"], lab_files["poisoned_test"]), ("ano", ano_valid, ano_test)]:
        code, _, err = cli("sweep", *common, "--out", tmp_path / name, "--poisoned-valid", valid, "--poisoned-test", test)
        assert code == 0, err
        single = read_csv(tmp_path / name / "sweep.csv")
        for column in single[0]:
            multi_column = column
            if "_asr" in column or "detection_rate" in column:
                multi_column = f"{column}_{name}"
            assert [r[multi_column] for r in multi] == [r[column] for r in single], column
    summary = json.loads((tmp_path / "multi" / "summary.json").read_text())
    assert {"valid_asr_sun", "valid_asr_ano", "test_asr_sun", "test_asr_ano"} <= set(summary["original"])


def test_finetune_without_test_sets_reports_the_held_out_accuracy(cli, lab_files, lab3_model, pruned_and_data, tmp_path):
    """No test file: the table holds the held-out validation accuracy of B'_X and B'_ft (the numbers measured before
    and after), not a bare header, and says which flags add the test metrics."""
    from torch_badnet.nets.checkpoint import save_checkpoint
    from torch_badnet.nets.pairing import mark_derived

    save_checkpoint(mark_derived(pruned_and_data[0], lab3_model), tmp_path / "pruned.pt")
    save_checkpoint(lab3_model, tmp_path / "b.pt")
    code, stdout, err = cli("finetune", "--model", tmp_path / "b.pt", "--pruned", tmp_path / "pruned.pt", "--clean-valid",
                            lab_files["clean_valid"], "--epochs", "2", "--holdout", "0.25", "--out", tmp_path / "ft")
    assert code == 0, err
    summary = json.loads((tmp_path / "ft" / "summary.json").read_text())
    lines = stdout.splitlines()
    assert lines[0].split() == ["metric", "(held-out", "validation,", "percent)", "B'_X", "fine-tuned"]
    assert lines[1].split() == ["holdout_acc", "(50", "images)", f"{summary['holdout_acc_before']:.3f}", f"{summary['holdout_acc']:.3f}"]
    assert "--clean-test and --poisoned-test add the test metrics" in lines[2]
    assert lines[-1].startswith(f"wrote {tmp_path / 'ft'}/") and "B_X" not in stdout
