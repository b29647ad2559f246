"""Issue 32 item 0: no writer overwrites or removes a file it did not write, even one lying beside its result.

Every result folder lists the files torch-badnet wrote there (`.torch-badnet-files`, sha256sum's format). A folder
holding anything else (a user's file beside the result, a result file edited since) is refused in one line, or
with --force moved aside whole with one line saying where; `batch` checks its tables and each model's folder the
same way and never touches anything else in DIR. (convert / export: tests/test_bad_input.py.)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from conftest import sweep_args

from torch_badnet.report.outdir import FILES, OutputFolder

FAST = ["--no-plot", "--thresholds", "4"]
BATCH_FAST = ["--no-plot", "--thresholds", "1", "--max-steps", "4"]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def aside_of(folder: Path) -> list[Path]:
    return sorted(p for p in folder.parent.iterdir() if p.name.startswith(f"{folder.name}.replaced-"))


def assert_lists_every_file(folder: Path) -> None:
    """FILES names every other file under `folder` with its sha256, as `sha256sum` writes it."""
    lines = (folder / FILES).read_text().splitlines()
    files = {name: data for name, data in snapshot(folder).items() if name != FILES}
    assert lines == [f"{hashlib.sha256(files[name]).hexdigest()}  {name}" for name in sorted(files)]


def assert_refused_untouched(cli, args: list[object], out: Path, problem: str) -> None:
    before, asides = snapshot(out), aside_of(out)
    code, stdout, err = cli(*args)
    assert code == 2 and stdout == "" and err.count("\n") == 1, err
    assert err.startswith(f"error: {out}: ") and problem in err and "--force" in err, err
    assert snapshot(out) == before and aside_of(out) == asides


def assert_forced_aside(cli, args: list[object], out: Path, before: dict[str, bytes]) -> None:
    asides = aside_of(out)
    code, _, err = cli(*args, "--force")
    assert code == 0, err
    [aside] = sorted(set(aside_of(out)) - set(asides))
    assert snapshot(aside) == before  # the user's files and the old result, as they were
    assert err.splitlines()[-1] == f"replaced {out} (--force: its previous content was moved to {aside})"
    assert_lists_every_file(out)


def test_sweep_keeps_a_users_file_beside_its_result(cli, lab_files, lab3_path, tmp_path):
    out = tmp_path / "results"
    args = sweep_args(lab_files, lab3_path, out, *FAST)
    code, _, err = cli(*args)
    assert code == 0, err
    assert_lists_every_file(out)
    code, _, err = cli(*args)  # only its own files: replaced whole, as before
    assert code == 0 and f"replaced {out} (its previous result was removed whole)" in err

    (out / "notes.txt").write_text("my notes")
    (out / "models" / "X=4" / "my_eval.txt").write_text("B'_4 looked fine")
    assert_refused_untouched(cli, args, out, "holds models/X=4/my_eval.txt and notes.txt, which torch-badnet did not write")
    assert_forced_aside(cli, args, out, snapshot(out))

    with open(out / "sweep.csv", "a") as fh:  # a result file the user edited is the user's now
        fh.write("my extra row\n")
    assert_refused_untouched(cli, args, out, "holds sweep.csv, which torch-badnet did not write (or which changed since)")
    (out / "extra").mkdir()  # an empty folder of the user's counts too
    assert_refused_untouched(cli, args, out, "holds extra/ and sweep.csv")


def test_sweep_refuses_a_result_without_its_file_list(cli, lab_files, lab3_path, tmp_path):
    """A result written without the list (an older version's) may hold anything: refused unless --force."""
    out = tmp_path / "old"
    code, _, err = cli(*sweep_args(lab_files, lab3_path, out, *FAST))
    assert code == 0, err
    (out / FILES).unlink()
    assert_refused_untouched(cli, sweep_args(lab_files, lab3_path, out, *FAST), out,
                             f"holds a result without the list of the files torch-badnet wrote ({FILES})")


def test_finetune_keeps_a_users_file_beside_its_result(cli, lab_files, lab3_path, tmp_path):
    sweep = tmp_path / "sweep"
    code, _, err = cli(*sweep_args(lab_files, lab3_path, sweep, *FAST))
    assert code == 0, err
    out = tmp_path / "ft"
    args = ["finetune", "--model", lab3_path, "--pruned", sweep / "models" / "X=4" / "pruned.pt",
            "--clean-valid", lab_files["clean_valid"], "--epochs", 0, "--out", out]
    code, _, err = cli(*args)
    assert code == 0, err
    assert_lists_every_file(out)
    (out / "history-notes.txt").write_text("epoch 0 was enough")
    assert_refused_untouched(cli, args, out, "holds history-notes.txt, which torch-badnet did not write")
    assert_forced_aside(cli, args, out, snapshot(out))


def test_demo_refuses_a_result_with_a_users_file_before_building(cli, tmp_path):
    """The demo checks --out before its (first-run) build: a result folder holding a user's file is refused at once."""
    out = tmp_path / "demo-results"
    with OutputFolder(out) as folder, folder.staging() as staging:
        (staging / "summary.json").write_text(json.dumps({"versions": {"torch_badnet": "0"}}))
    (out / "thesis.tex").write_text("my thesis")
    assert_refused_untouched(cli, ["demo", "--out", out, "--workdir", tmp_path / "ws"], out,
                             "holds thesis.tex, which torch-badnet did not write")
    assert not (tmp_path / "ws").exists()  # nothing built


def batch_args(manifest: Path, out: Path, lab_files: dict[str, Path]) -> list[object]:
    return ["batch", manifest, "--out", out, "--workers", 1, "--clean-valid", lab_files["clean_valid"],
            "--poisoned-valid", lab_files["poisoned_valid"], *BATCH_FAST]


def test_batch_force_moves_a_users_folder_aside_whole(cli, lab_files, lab3_path, tmp_path):
    """The issue's case: DIR held the user's own batch.csv and a folder demo/ with notes.txt, and a model is
    named demo. --force overwrote batch.csv and moved demo/ aside without a word; now DIR moves aside whole."""
    out = tmp_path / "collide"
    (out / "demo").mkdir(parents=True)
    (out / "batch.csv").write_text("the user's own batch.csv\n")
    (out / "demo" / "notes.txt").write_text("my notes")
    before = snapshot(out)
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"name,model\ndemo,{lab3_path}\n")
    code, _, err = cli(*batch_args(manifest, out, lab_files))
    assert code == 2 and err.count("\n") == 1 and "holds no torch-badnet batch" in err and "--force" in err, err
    assert snapshot(out) == before
    code, stdout, err = cli(*batch_args(manifest, out, lab_files), "--force")
    assert code == 0, err
    [aside] = aside_of(out)
    assert snapshot(aside) == before
    assert err.splitlines()[0] == f"moved {out} aside to {aside} (--force: it held no torch-badnet batch)"
    assert_lists_every_file(out / "demo")
    assert (out / FILES).read_text().splitlines() == [
        f"{hashlib.sha256((out / name).read_bytes()).hexdigest()}  {name}" for name in ("batch.csv", "batch.json", "batch.png")]


def test_batch_keeps_users_files_in_its_folder(cli, lab_files, lab3_path, tmp_path):
    """In a batch's own DIR: a user's file beside the tables is never touched; a user's file in a model's folder,
    or an edited batch.csv, is refused in one line, or with --force moved aside with one line each."""
    out = tmp_path / "batch"
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"name,model\nlab3,{lab3_path}\n")
    args = batch_args(manifest, out, lab_files)
    code, _, err = cli(*args)
    assert code == 0, err
    (out / "notes.txt").write_text("mine")
    code, _, err = cli(*args, "--rerun")  # the model runs again: its folder is replaced, notes.txt stays
    assert code == 0 and (out / "notes.txt").read_text() == "mine", err

    (out / "lab3" / "my_plot.png").write_bytes(b"my plot")
    before = snapshot(out)
    code, _, err = cli(*args, "--rerun")
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: {out / 'lab3'}: holds my_plot.png, which torch-badnet did not write") and "--force" in err
    assert snapshot(out) == before
    code, _, err = cli(*args, "--rerun", "--force")
    assert code == 0, err
    [aside] = aside_of(out / "lab3")
    assert snapshot(aside) == {k[len("lab3/"):]: v for k, v in before.items() if k.startswith("lab3/")}
    assert f"moved {out / 'lab3'} aside to {aside} (--force: torch-badnet did not write all of it)" in err.splitlines()
    assert (out / "notes.txt").read_text() == "mine"

    (out / "batch.csv").write_text("my edited table\n")
    code, _, err = cli(*args)
    assert code == 2 and err == (f"error: {out / 'batch.csv'}: was not written by torch-badnet (or changed since); "
                                 "move it away, or pass --force to move it aside (nothing is deleted)\n")
    code, _, err = cli(*args, "--force")
    assert code == 0, err
    [kept] = aside_of(out / "batch.csv")
    assert kept.read_text() == "my edited table\n"
    assert (out / "batch.csv").read_text().startswith("name,")
