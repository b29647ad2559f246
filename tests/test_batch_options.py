"""Issue 32: every sweep option reaches a batch row's sweep exactly as the flag reaches `sweep`, whether a manifest
column or a batch flag gives it. (batch ignored --mean/--std: 98.1% and B'_4 at step 19 where sweep gave 89.6% at
step 13, and summary.json said mean: null.)"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from conftest import sweep_args
from face_graph import write_face_graph

from torch_badnet.batch.manifest import option_columns, option_parser
from torch_badnet.batch.task import FINGERPRINT
from torch_badnet.report.outdir import FILES

# one value per sweep option, none of them its default: (column, cell text, the sweep's words)
VALUES = {
    "rescale": "0.9", "mean": "5 5 5", "std": "1.5 1.5 1.5", "thresholds": "3 5", "stop": "last-within",
    "drop": "relative", "max_steps": "6", "layer": "conv_2", "rank_on": "conv_3", "no_plot": "true", "finetune": "true",
    "epochs": "1", "optimizer": "sgd", "lr": "0.01", "weight_decay": "0.001", "train_conv_1": "true",
    "batch_size": "32", "seed": "3", "holdout": "0.3", "patience": "2", "tolerance": "1",
}
# the rows of the end-to-end comparison: each sets some columns (the rest as the batch's flags give them)
ROWS = {
    "preprocessing": {"model": "faces", "rescale": "0.9", "mean": "5 5 5", "std": "1.5 1.5 1.5", "max_steps": "8"},
    "thresholds": {"thresholds": "3 5"},
    "stop": {"stop": "last-within"},
    "drop": {"drop": "relative"},
    "steps": {"max_steps": "6", "thresholds": "1"},
    "layer": {"layer": "conv_2", "max_steps": "6", "thresholds": "1"},
    "rank_on": {"layer": "conv_3", "rank_on": "conv_3", "max_steps": "20", "thresholds": "1"},
    "plot": {"no_plot": "false", "max_steps": "6", "thresholds": "1"},
    "finetune": {"finetune": "true", "epochs": "1", "optimizer": "sgd", "lr": "0.01", "weight_decay": "0.001",
                 "train_conv_1": "true", "batch_size": "32", "seed": "3", "holdout": "0.3", "patience": "2",
                 "tolerance": "1"},
}
BATCH_FLAGS = ["--no-plot", "--thresholds", "4"]


def flag_words(column: str, text: str) -> list[str]:
    """What `sweep` is given for a cell: the flag and its words ('true'/'false' for on/off flags)."""
    action = option_columns(option_parser())[column]
    if action.nargs == 0:
        return [action.option_strings[-1]] if text == "true" else []
    return [action.option_strings[-1], *shlex.split(text)]


# columns whose rows equal their separate sweeps in their own files' tests (a model source, the data layout, the
# trigger): test_model_sources.py::test_batch_mixing_keras_onnx_pt2_and_arch_rows_equals_separate_sweeps_locally_and_on_ray,
# test_triggers.py::test_batch_rows_with_other_layouts_and_a_trigger and
# test_data_sources.py::test_batch_honours_classes_as_a_flag_and_a_column_as_sweep_does
TESTED_ELSEWHERE = {"arch", "arch_kwargs", "allow_pickle", "classes", "trigger", "trigger_mask", "trigger_alpha", "target"}


def test_every_column_has_a_value_here():
    """A sweep flag added later is a manifest column at once: it must be added to VALUES (and so checked below), or
    to TESTED_ELSEWHERE with the test that compares its rows with separate sweeps."""
    assert set(VALUES) | TESTED_ELSEWHERE == set(option_columns(option_parser()))
    assert not set(VALUES) & TESTED_ELSEWHERE
    assert {c for row in ROWS.values() for c in row} - {"model"} == set(VALUES)


@pytest.mark.parametrize("column", sorted(VALUES))
def test_a_batch_flag_gives_a_row_what_its_column_gives(cli, tmp_path, lab_files, lab3_path, monkeypatch, column):
    """`batch --<flag> V` fills a row's options exactly as a cell V in its column does (the same argparse values)."""
    import torch_badnet.batch.run as batch_run
    from torch_badnet.batch.manifest import read_manifest

    seen = {}

    def capture(manifest, out, **keywords):
        options = {k: v for k, v in keywords.items() if k not in {"workers", "ray", "gpus_per_model", "device",
                                                                  "rerun", "force", "progress", "log"}}
        seen["items"] = read_manifest(manifest, batch_run.defaults(options))
        raise SystemExit(0)

    monkeypatch.setattr(batch_run, "prune_batch", capture)
    data = ["--clean-valid", lab_files["clean_valid"], "--poisoned-valid", lab_files["poisoned_valid"]]
    by_flag = tmp_path / "flag.csv"
    by_flag.write_text(f"name,model\na,{lab3_path}\n")
    assert cli("batch", by_flag, "--out", tmp_path / "o", *data, *flag_words(column, VALUES[column]))[0] == 0
    from_flag = seen["items"][0].options
    by_cell = tmp_path / "cell.csv"
    by_cell.write_text(f"name,model,{column}\na,{lab3_path},{VALUES[column]}\n")
    assert cli("batch", by_cell, "--out", tmp_path / "o", *data)[0] == 0
    from_cell = seen["items"][0].options
    dest = option_columns(option_parser())[column].dest
    assert from_flag == from_cell and from_cell[dest] != option_columns(option_parser())[column].default


def result_files(folder: Path) -> dict[str, bytes]:
    skip = {FINGERPRINT, FILES}  # the batch's extra file, and so the list of files, differ
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.relative_to(folder).as_posix() not in skip}


def test_each_option_in_batch_equals_sweep_with_that_flag(cli, tmp_path, lab_files, lab3_path):
    """One batch, a row per option group (as columns; the others from the batch's flags), against `sweep` with the
    same flags: byte-equal sweep.csv, summary.json, sweep.png and models; summary.json records mean and std."""
    faces = write_face_graph(lab3_path, tmp_path / "faces.h5")
    columns = sorted({c for row in ROWS.values() for c in row} - {"model"})
    lines = [",".join(["name", "model", *columns])]
    for name, row in ROWS.items():
        model = faces if row.get("model") == "faces" else lab3_path
        lines.append(",".join([name, str(model), *(row.get(c, "") for c in columns)]))
    manifest = tmp_path / "m.csv"
    manifest.write_text("\n".join(lines) + "\n")
    out = tmp_path / "batch"
    code, _, err = cli("batch", manifest, "--out", out, "--workers", 2, "--clean-valid", lab_files["clean_valid"],
                       "--poisoned-valid", lab_files["poisoned_valid"], "--clean-test", lab_files["clean_test"],
                       "--poisoned-test", lab_files["poisoned_test"], *BATCH_FLAGS)
    assert code == 0, err
    for name, row in ROWS.items():
        model = faces if row.get("model") == "faces" else lab3_path
        flags = [w for c, v in row.items() if c != "model" for w in flag_words(c, v)]
        if "no_plot" not in row:
            flags.append("--no-plot")
        if "thresholds" not in row:
            flags += ["--thresholds", "4"]
        single = tmp_path / f"single-{name}"
        code, _, err = cli(*sweep_args(lab_files, model, single, *flags))
        assert code == 0, (name, err)
        assert result_files(out / name) == result_files(single), name
    summary = json.loads((out / "preprocessing" / "summary.json").read_text())
    assert summary["model"]["mean"] == [5.0, 5.0, 5.0] and summary["model"]["std"] == [1.5, 1.5, 1.5]
    assert summary["model"]["input_scale"] == pytest.approx(0.9)


def test_a_mean_the_model_cannot_take_is_refused_before_anything_runs(cli, tmp_path, lab_files, lab3_path):
    """Two values for a 3-channel model, as a column or as the batch's flag: one line naming the row, nothing written."""
    faces = write_face_graph(lab3_path, tmp_path / "faces.h5")
    data = ["--clean-valid", lab_files["clean_valid"], "--poisoned-valid", lab_files["poisoned_valid"]]
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"name,model,mean\nok,{faces},5 5 5\nbad,{faces},5 5\n")
    code, _, err = cli("batch", manifest, "--out", tmp_path / "out", *data)
    assert code == 2 and err == (f"error: {manifest}: row 3, column mean: gives 2 values but the model takes 3 input "
                                 "channels\n"), err
    manifest.write_text(f"name,model\nf,{faces}\n")
    code, _, err = cli("batch", manifest, "--out", tmp_path / "out", *data, "--std", "1", "2")
    assert code == 2 and err == (f"error: {manifest}: row 2, column std: gives 2 values but the model takes 3 input "
                                 "channels\n"), err
    manifest.write_text(f"name,model\nlab,{lab3_path}\n")
    code, _, err = cli("batch", manifest, "--out", tmp_path / "out", *data, "--mean", "1", "2", "3")
    assert code == 2 and err == (f"error: {manifest}: row 2, column mean: the lab BadNet takes no per-channel "
                                 "normalisation (its input scale is --rescale)\n"), err
    assert not (tmp_path / "out").exists()
