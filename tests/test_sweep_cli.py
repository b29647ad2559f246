"""`torch-badnet sweep` end to end on small lab-layout files made from real faces, with the real lab3 model."""

import hashlib
import json
from pathlib import Path

import pytest
import torch
from conftest import read_csv, sweep_args

from torch_badnet.data.lab_sets import LabDataset
from torch_badnet.defense.metrics import step_counts
from torch_badnet.engine.lab_head import extract_features, fast_sweep

CONTRACT_COLUMNS = ["step", "channel", "fraction_pruned", "valid_clean_acc", "valid_asr", "test_clean_acc",
                    "test_asr", "goodnet_test_clean_acc", "goodnet_test_asr", "goodnet_test_detection_rate",
                    "goodnet_test_false_alarm_rate"]


@pytest.fixture(scope="module")
def swept(tmp_path_factory, lab_files, lab3_path):
    """Two identical sweeps into two folders."""
    from torch_badnet.cli.main import main

    outs = [tmp_path_factory.mktemp("sweep") / "out" for _ in range(2)]
    for out in outs:
        assert main([str(a) for a in sweep_args(lab_files, lab3_path, out)]) == 0
    return outs


def test_outputs_exist_and_repeat_byte_for_byte(swept):
    first, second = swept
    names = ["sweep.csv", "summary.json", "sweep.png"] + [f"models/X={x}/pruned.{e}" for x in (2, 4, 10) for e in ("pt", "h5")]
    for name in names:
        assert (first / name).is_file(), name
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    assert not [p for p in first.parent.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_csv_has_the_contract_columns_and_one_row_per_step(swept):
    rows = read_csv(swept[0] / "sweep.csv")
    assert set(CONTRACT_COLUMNS) <= set(rows[0])
    assert [int(r["step"]) for r in rows] == list(range(61))
    assert rows[0]["channel"] == ""
    assert sorted(int(r["channel"]) for r in rows[1:]) == list(range(60))
    assert float(rows[30]["fraction_pruned"]) == 0.5


def test_csv_equals_the_engine_counts(swept, lab_files, lab3_model):
    """Every B' and G number in sweep.csv is 100 * count / n of the engine's labels at that step.

    (fast_sweep == the plain mask + full forward procedure == Keras is proven in test_keras_reference.py.)
    """
    rows = read_csv(swept[0] / "sweep.csv")
    order = [int(r["channel"]) for r in rows[1:]]
    sets = []
    for key, path in lab_files.items():
        with LabDataset(path) as ds:
            sets.append(extract_features(lab3_model, key, ds.chunks(), len(ds), torch.device("cpu")))
    labels = fast_sweep(lab3_model, sets, order)
    for s in sets:
        counts = step_counts(labels[s.name], s.labels)
        split = "valid" if s.name.endswith("valid") else "test"
        if s.name.startswith("clean"):
            columns = (f"{split}_clean_acc", f"goodnet_{split}_clean_acc", f"goodnet_{split}_false_alarm_rate")
        else:
            columns = (f"{split}_asr", f"goodnet_{split}_asr", f"goodnet_{split}_detection_rate")
        for column, values in zip(columns, (counts.hits, counts.goodnet_hits, counts.flagged)):
            assert [float(r[column]) for r in rows] == counts.rate(values), column


def test_summary_thresholds_follow_the_lab_rule(swept):
    summary = json.loads((swept[0] / "summary.json").read_text())
    rows = read_csv(swept[0] / "sweep.csv")
    acc = [float(r["valid_clean_acc"]) for r in rows]
    assert summary["original"]["valid_clean_acc"] == acc[0]
    assert set(summary["original"]) == {"valid_clean_acc", "valid_asr", "test_clean_acc", "test_asr"}
    assert [t["x"] for t in summary["thresholds"]] == [2.0, 4.0, 10.0]
    for t in summary["thresholds"]:
        k = t["step"]
        assert acc[0] - acc[k] >= t["x"] and all(acc[0] - a < t["x"] for a in acc[1:k])
        assert t["channels_pruned"] == k == len(t["pruned_channels"])
        assert t["pruned_channels"] == [int(r["channel"]) for r in rows[1 : k + 1]]
        for column in ("test_clean_acc", "test_asr", "goodnet_test_clean_acc", "goodnet_test_asr",
                       "goodnet_test_detection_rate", "goodnet_test_false_alarm_rate", "valid_asr"):
            assert t[column] == float(rows[k][column])
    for key in ("clean_valid", "poisoned_valid", "clean_test", "poisoned_test"):  # hashed from the CLI's start
        entry = summary["inputs"][key]
        assert entry["sha256"] == hashlib.sha256(Path(entry["path"]).read_bytes()).hexdigest()
    assert summary["versions"]["torch"] == torch.__version__


def test_pruned_models_load_and_agree_with_the_sweep(swept, lab_files, cli):
    from torch_badnet.convert import read_model_file

    summary = json.loads((swept[0] / "summary.json").read_text())
    t = summary["thresholds"][1]
    folder = swept[0] / "models" / "X=4"
    pruned = read_model_file(folder / "pruned.pt").model
    assert sorted((pruned.conv_3.mask == 0).nonzero().flatten().tolist()) == sorted(t["pruned_channels"])
    baked = read_model_file(folder / "pruned.h5").model  # Keras weights: the channels are zeroed instead
    assert bool((baked.conv_3.mask == 1).all())
    assert bool((baked.conv_3.weight[t["pruned_channels"]] == 0).all())
    with LabDataset(lab_files["clean_test"]) as ds:
        x = torch.cat([c for c, _ in ds.chunks()])
    with torch.no_grad():
        assert torch.equal(pruned(x).argmax(1), baked(x).argmax(1))
    for pruned_file in ("pruned.pt", "pruned.h5"):
        code, out, _ = cli("eval", "--model", summary["model"]["path"], "--pruned", folder / pruned_file,
                           "--clean", lab_files["clean_test"], "--poisoned", lab_files["poisoned_test"], "--json")
        assert code == 0
        result = json.loads(out)
        assert result["clean_accuracy"] == t["goodnet_test_clean_acc"]
        assert result["attack_success_rate"] == t["goodnet_test_asr"]
        assert result["detection_rate"] == t["goodnet_test_detection_rate"]
        assert result["false_alarm_rate"] == t["goodnet_test_false_alarm_rate"]


def test_printed_table_shows_each_threshold(lab_files, lab3_path, tmp_path, cli):
    code, out, err = cli(*sweep_args(lab_files, lab3_path, tmp_path / "o", "--thresholds", "3", "99.5", "--no-plot"))
    assert code == 0, err
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    reached, unreached = summary["thresholds"]
    assert reached["reached"] and not unreached["reached"]
    assert not (tmp_path / "o" / "sweep.png").exists()
    assert not (tmp_path / "o" / "models" / "X=99.5").exists()
    test_table = out.split("test data")[1].splitlines()
    line = next(row for row in test_table if row.split()[:1] == ["3"] and "/60" in row)
    assert f"{reached['test_clean_acc']:.3f}" in line and f"{reached['goodnet_test_asr']:.3f}" in line
    assert any(row.split()[:1] == ["99.5"] and "not reached" in row for row in out.splitlines())


def test_max_steps_and_stop_rules(lab_files, lab3_path, tmp_path, cli):
    runs = {}
    for stop in ("first-over", "last-within"):
        out = tmp_path / stop
        code, _, err = cli(*sweep_args(lab_files, lab3_path, out, "--stop", stop, "--no-plot"))
        assert code == 0, err
        runs[stop] = json.loads((out / "summary.json").read_text())
    for first, last in zip(runs["first-over"]["thresholds"], runs["last-within"]["thresholds"]):
        assert last["step"] == first["step"] - 1 and last["stop"] == "last-within"
        assert last["valid_clean_drop"] < last["x"] <= first["valid_clean_drop"]
    code, _, _ = cli(*sweep_args(lab_files, lab3_path, tmp_path / "short", "--max-steps", "5", "--no-plot"))
    assert code == 0
    assert len(read_csv(tmp_path / "short" / "sweep.csv")) == 6


PHASE = r"[a-z+ ]+ \d+\.\d\d s( \([^)]*\))?"


def test_verbose_prints_one_phase_line(lab_files, lab3_path, tmp_path, cli):
    """--verbose: one `phases:` line on stderr naming every phase, their seconds summing to at most the total."""
    import re

    code, out, err = cli(*sweep_args(lab_files, lab3_path, tmp_path / "v", "--verbose"))
    assert code == 0, err
    lines = [row for row in err.splitlines() if row.startswith("phases: ")]
    assert len(lines) == 1 and "phases" not in out
    parts = lines[0][len("phases: "):].split(" | ")
    assert all(re.fullmatch(PHASE, p) for p in parts), parts
    names = [re.match(r"[a-z+ ]+?(?= \d)", p).group(0) for p in parts]
    assert names[-1] == "total" and names[0] == "startup"
    assert {"load model", "read+trunk", "rank", "prune", "metrics", "models", "plot", "summary"} <= set(names)
    assert "reading" in lines[0]
    values = [float(re.search(r" (\d+\.\d\d) s", p).group(1)) for p in parts]
    assert sum(values[:-1]) <= values[-1] + 0.05 * len(values)
    quiet = cli(*sweep_args(lab_files, lab3_path, tmp_path / "q", "--no-plot"))
    assert quiet[0] == 0 and "phases:" not in quiet[2]


def test_eval_verbose_prints_one_phase_line(lab_files, lab3_path, cli):
    import re

    code, out, err = cli("eval", "--model", lab3_path, "--clean", lab_files["clean_test"], "--verbose")
    assert code == 0, err
    lines = [row for row in err.splitlines() if row.startswith("phases: ")]
    assert len(lines) == 1 and out.startswith("clean accuracy: ")
    names = [re.match(r"[a-z+ ]+?(?= \d)", p).group(0) for p in lines[0][len("phases: "):].split(" | ")]
    assert names == ["startup", "load model", "read+forward", "total"]


def test_pruned_checkpoints_record_the_fingerprint_of_b(swept, lab3_model):
    from torch_badnet.nets.checkpoint import load_checkpoint
    from torch_badnet.nets.pairing import weights_fingerprint

    for x in (2, 4, 10):
        metadata = load_checkpoint(swept[0] / "models" / f"X={x}" / "pruned.pt").metadata
        assert metadata["base_weights_sha256"] == weights_fingerprint(lab3_model)


# --- one output folder, one run --------------------------------------------------------------------------

def files_in(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_rerun_into_a_result_replaces_it_whole(swept, lab_files, lab3_path, tmp_path, cli):
    """Sweep X = 2 4 10 with the plot, then X = 3 without: only the second run's files remain."""
    import shutil

    out = tmp_path / "R"
    shutil.copytree(swept[0], out)
    code, stdout, err = cli(*sweep_args(lab_files, lab3_path, out, "--thresholds", "3", "--no-plot"))
    assert code == 0, err
    fresh = tmp_path / "fresh"
    assert cli(*sweep_args(lab_files, lab3_path, fresh, "--thresholds", "3", "--no-plot"))[0] == 0
    assert files_in(out) == files_in(fresh) == [".torch-badnet-files", "models/X=3/pruned.h5", "models/X=3/pruned.pt",
                                                "summary.json", "sweep.csv"]
    assert (out / "sweep.csv").read_bytes() == (fresh / "sweep.csv").read_bytes()
    assert f"replaced {out}" in err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging or old folder left


def test_finetune_into_a_sweep_result_replaces_it(lab_files, lab3_path, tmp_path, cli):
    out = tmp_path / "R"
    assert cli(*sweep_args(lab_files, lab3_path, out, "--thresholds", "4", "--no-plot"))[0] == 0
    pruned = tmp_path / "pruned.pt"
    pruned.write_bytes((out / "models" / "X=4" / "pruned.pt").read_bytes())
    code, stdout, err = cli("finetune", "--model", lab3_path, "--pruned", pruned, "--clean-valid",
                            lab_files["clean_valid"], "--epochs", "1", "--out", out)
    assert code == 0, err
    assert files_in(out) == [".torch-badnet-files", "finetuned.h5", "finetuned.pt", "history.csv", "summary.json"]
    assert "thresholds" not in json.loads((out / "summary.json").read_text())
    assert f"replaced {out}" in err
    assert stdout.splitlines()[-1].startswith(f"wrote {out}/finetuned.h5, finetuned.pt, history.csv and summary.json")
    # an input inside --out is never deleted by the run that reads it
    code, _, err = cli("finetune", "--model", lab3_path, "--pruned", out / "finetuned.pt", "--clean-valid",
                       lab_files["clean_valid"], "--epochs", "1", "--out", out)
    assert code == 2 and "an input of this run" in err and (out / "finetuned.pt").is_file()


def test_foreign_folder_needs_force(lab_files, lab3_path, tmp_path, cli):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    code, stdout, err = cli(*sweep_args(lab_files, lab3_path, out, "--no-plot"))
    assert code == 2 and err.startswith(f"error: {out}: is not empty") and "--force" in err and len(err.splitlines()) == 1
    assert files_in(out) == ["notes.txt"]
    code, _, err = cli(*sweep_args(lab_files, lab3_path, out, "--no-plot", "--force", "--thresholds", "4"))
    assert code == 0, err
    assert files_in(out) == [".torch-badnet-files", "models/X=4/pruned.h5", "models/X=4/pruned.pt", "summary.json", "sweep.csv"]
    assert f"replaced {out}" in err


# --- the closing line names what was written ---------------------------------------------------------------

def test_closing_line_names_only_written_files(lab_files, lab3_path, tmp_path, cli):
    code, stdout, err = cli(*sweep_args(lab_files, lab3_path, tmp_path / "none", "--thresholds", "95", "99", "--no-plot"))
    assert code == 0, err
    last = stdout.splitlines()[-1]
    assert last.startswith(f"wrote {tmp_path / 'none'}/summary.json and sweep.csv (60 steps on 800 images in ")
    assert last.endswith("; no threshold was reached (X = 95, 99 within 60 steps), so no pruned model was written")
    assert "models" not in last and "sweep.png" not in last
    assert files_in(tmp_path / "none") == [".torch-badnet-files", "summary.json", "sweep.csv"]
    code, stdout, err = cli(*sweep_args(lab_files, lab3_path, tmp_path / "some", "--thresholds", "3", "99"))
    assert code == 0, err
    last = stdout.splitlines()[-1]
    assert last.startswith(f"wrote {tmp_path / 'some'}/summary.json, sweep.csv, sweep.png and models/X=3/pruned.pt|.h5 (")
    assert last.endswith("; X = 99 not reached within 60 steps, so no model for it")


def test_closing_line_counts_the_sweep_the_fine_tuning_and_the_whole_run(lab_files, lab3_path, tmp_path, cli):
    import re
    import time

    started = time.perf_counter()
    code, stdout, err = cli(*sweep_args(lab_files, lab3_path, tmp_path / "out", "--thresholds", "4", "--no-plot",
                                        "--finetune", "--epochs", "1"))
    wall = time.perf_counter() - started
    assert code == 0, err
    last = stdout.splitlines()[-1]
    times = re.search(r"\(60 steps on 800 images in ([\d.]+) s, fine-tuning 1 net in ([\d.]+) s; ([\d.]+) s in all on \w+\)$", last)
    assert times, last
    sweep, finetuning, total = (float(t) for t in times.groups())
    assert sweep + finetuning <= total + 0.1 and wall - max(0.1, 0.1 * wall) <= total <= wall + 0.1
