"""`torch-badnet batch` / `tb.prune_batch` on small lab files from real faces, with the real lab3 BadNet and
perturbed copies of it: results equal separate sweeps (locally and on Ray), faults lose nothing."""

from __future__ import annotations

import copy
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import read_csv, sweep_args

from torch_badnet.batch.task import FINGERPRINT
from torch_badnet.nets.checkpoint import save_checkpoint
from torch_badnet.report.outdir import FILES

FAST = ["--max-steps", "4", "--thresholds", "1", "2", "--no-plot"]  # few steps, no plot: the fault tests' options
MODELS = 10
ROOT = Path(__file__).resolve().parents[1]


def data_flags(lab_files: dict[str, Path]) -> list[object]:
    return ["--clean-valid", lab_files["clean_valid"], "--poisoned-valid", lab_files["poisoned_valid"],
            "--clean-test", lab_files["clean_test"], "--poisoned-test", lab_files["poisoned_test"]]


def write_manifest(path: Path, rows: list[dict[str, str]]) -> Path:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    lines = [",".join(columns)] + [",".join(row.get(c, "") for c in columns) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory, lab3_path, lab3_model) -> dict[str, Path]:
    """m0 = the real lab3 .h5; m1..m9 = lab3 with every weight perturbed (seeded), saved as .pt files."""
    folder = tmp_path_factory.mktemp("models")
    paths = {"m0": lab3_path}
    for k in range(1, MODELS):
        net = copy.deepcopy(lab3_model)
        generator = torch.Generator().manual_seed(k)
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn(p.shape, generator=generator) * p.std() * 0.03)
        paths[f"m{k}"] = folder / f"m{k}.pt"
        save_checkpoint(net, paths[f"m{k}"])
    return paths


@pytest.fixture(scope="module")
def fast_manifest(tmp_path_factory, models) -> Path:
    return write_manifest(tmp_path_factory.mktemp("manifest") / "models.csv",
                          [{"name": name, "model": str(path)} for name, path in models.items()])


def run_cli(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch_badnet", *map(str, args)], capture_output=True, text=True, cwd=ROOT)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, fast_manifest, lab_files) -> Path:
    """The ten models in one batch (two workers), FAST options."""
    out = tmp_path_factory.mktemp("reference") / "out"
    done = run_cli("batch", fast_manifest, "--out", out, "--workers", 2, *data_flags(lab_files), *FAST)
    assert done.returncode == 0, done.stderr
    return out


def result_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def same_results(folder: Path, reference: Path, names) -> None:
    for name in names:
        ours, theirs = result_files(folder / name), result_files(reference / name)
        assert ours == theirs, name


def statuses(out: Path) -> dict[str, str]:
    return {row["name"]: row["status"] for row in read_csv(out / "batch.csv")}


def test_results_equal_separate_sweeps_and_a_corrupted_model_fails(tmp_path, models, lab_files, lab3_path, cli, monkeypatch):
    """DIR/<name>/ holds exactly what `torch-badnet sweep --out` writes (plus fingerprint.json), for models given
    by relative paths; a corrupted model among them gets the CLI's error line and exit code 1."""
    folder = tmp_path / "manifest"
    (folder / "nets").mkdir(parents=True)
    shutil.copy(models["m1"], folder / "nets" / "m1.pt")
    (folder / "nets" / "broken.h5").write_bytes(lab3_path.read_bytes()[:5000])  # a truncated copy of lab3
    manifest = write_manifest(folder / "models.csv", [
        {"name": "lab3", "model": str(lab3_path), "thresholds": ""},
        {"name": "broken", "model": "nets/broken.h5", "thresholds": ""},
        {"name": "m1", "model": "nets/m1.pt", "thresholds": "2 4"},
        {"name": "tuned", "model": str(models["m2"]), "thresholds": "4", "finetune": "true", "epochs": "2"},
    ])
    monkeypatch.chdir(tmp_path)
    code, out, err = cli("batch", manifest, "--out", tmp_path / "batch", "--workers", 2, *data_flags(lab_files))
    assert code == 1, err
    rows = {row["name"]: row for row in read_csv(tmp_path / "batch" / "batch.csv")}
    assert [rows[n]["status"] for n in ("lab3", "broken", "m1", "tuned")] == ["done", "failed", "done", "done"]
    assert "(3 done, 0 reused, 1 failed)" in out

    code, _, sweep_err = cli(*sweep_args(lab_files, folder / "nets" / "broken.h5", tmp_path / "single-broken"))
    assert code == 2 and rows["broken"]["error"] == sweep_err.strip()  # the very line the CLI prints
    assert not (tmp_path / "batch" / "broken").exists()

    for name, model, extra in (("lab3", lab3_path, []), ("m1", folder / "nets" / "m1.pt", ["--thresholds", 2, 4]),
                               ("tuned", models["m2"], ["--thresholds", 4, "--finetune", "--epochs", 2])):
        # (the batch's two workers run one torch thread each, this process's sweep two: fine-tuning too gives
        # the same bits)
        single = tmp_path / f"single-{name}"
        code, _, err = cli(*sweep_args(lab_files, model, single, *extra))
        assert code == 0, err
        ours = result_files(tmp_path / "batch" / name)
        fingerprint = ours.pop(FINGERPRINT)
        assert json.loads(fingerprint)["model"]["path"] == str(model)
        theirs = result_files(single)
        assert ours.pop(FILES).decode().splitlines() == sorted(  # the written files' list: the sweep's and fingerprint.json
            theirs.pop(FILES).decode().splitlines() + [f"{hashlib.sha256(fingerprint).hexdigest()}  {FINGERPRINT}"],
            key=lambda line: line.split("  ")[1])
        assert ours == theirs, name  # sweep.csv, summary.json, sweep.png, models/X=*/pruned.pt|.h5
        summary = json.loads(ours["summary.json"])
        assert float(rows[name]["b_test_asr"]) == summary["original"]["test_asr"]
        for t in summary["thresholds"]:
            assert float(rows[name][f"x{t['x']:g}_test_clean_acc"]) == t["test_clean_acc"]
            assert int(rows[name][f"x{t['x']:g}_step"]) == t["step"]
    assert (tmp_path / "batch" / "batch.png").stat().st_size > 10_000
    report = json.loads((tmp_path / "batch" / "batch.json").read_text())
    assert report["counts"] == {"done": 3, "reused": 0, "failed": 1}


def test_a_corrupt_data_file_fails_the_models_that_use_it_with_the_sweeps_line(tmp_path, models, lab_files, cli):
    """The workers read the data: a truncated clean_test fails (only) its row with the line a sweep prints for
    it, the error crossing back from the worker intact (no worker died, no pool replaced)."""
    broken = tmp_path / "broken_test.h5"
    broken.write_bytes(lab_files["clean_test"].read_bytes()[:20000])
    manifest = write_manifest(tmp_path / "m.csv", [{"name": "good", "model": str(models["m1"])},
                                                   {"name": "bad", "model": str(models["m2"]), "clean_test": str(broken)}])
    code, _, err = cli("batch", manifest, "--out", tmp_path / "out", "--workers", 2, *data_flags(lab_files), *FAST)
    assert code == 1, err
    rows = {row["name"]: row for row in read_csv(tmp_path / "out" / "batch.csv")}
    assert (rows["good"]["status"], rows["bad"]["status"]) == ("done", "failed")
    code, _, sweep_err = cli(*sweep_args({**lab_files, "clean_test": broken}, models["m2"], tmp_path / "single", *FAST))
    assert code == 2 and rows["bad"]["error"] == sweep_err.strip()
    assert "worker process died" not in err  # the worker's error came back whole: no pool broke on it


def test_rerun_with_nothing_to_do_reuses_every_model(reference, fast_manifest, lab_files):
    stamps = {p: p.stat().st_mtime_ns for p in reference.glob("*/summary.json")}
    assert len(stamps) == MODELS
    done = run_cli("batch", fast_manifest, "--out", reference, *data_flags(lab_files), *FAST)
    assert done.returncode == 0, done.stderr
    assert set(statuses(reference).values()) == {"reused"} and len(statuses(reference)) == MODELS
    assert {p: p.stat().st_mtime_ns for p in reference.glob("*/summary.json")} == stamps  # nothing was rewritten
    assert done.stderr.count("reused ") == MODELS  # one line per model


def test_a_changed_option_or_rerun_runs_the_model_again(tmp_path, reference, models, lab_files):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    manifest = write_manifest(tmp_path / "m.csv", [{"name": "m1", "model": str(models["m1"]), "max_steps": "3"},
                                                   {"name": "m2", "model": str(models["m2"]), "max_steps": ""}])
    done = run_cli("batch", manifest, "--out", out, *data_flags(lab_files), *FAST)
    assert done.returncode == 0, done.stderr
    assert statuses(out) == {"m1": "done", "m2": "reused"}
    assert len(read_csv(out / "m1" / "sweep.csv")) == 4  # steps 0..3: the row's own max_steps
    done = run_cli("batch", manifest, "--out", out, "--rerun", *data_flags(lab_files), *FAST)
    assert done.returncode == 0, done.stderr
    assert statuses(out) == {"m1": "done", "m2": "done"}
    same_results(out, reference, ["m2"])


def _watch(process: subprocess.Popen, lines: list[str], first_done: threading.Event) -> None:
    for line in process.stderr:
        lines.append(line)
        if line.startswith("done "):
            first_done.set()


def _start(args: list[object]) -> tuple[subprocess.Popen, list[str], threading.Event, threading.Thread]:
    process = subprocess.Popen([sys.executable, "-m", "torch_badnet", *map(str, args)], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    first_done = threading.Event()
    watcher = threading.Thread(target=_watch, args=(process, lines, first_done), daemon=True)
    watcher.start()
    return process, lines, first_done, watcher


def processes() -> dict[int, tuple[int, str]]:
    """{pid: (parent pid, command line)} of every process (from /proc)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            found[int(entry.name)] = (int(stat.rsplit(")", 1)[1].split()[1]), cmdline)
    return found


def pool_workers(pid: int) -> list[int]:
    """The pool workers among `pid`'s descendants: the children of multiprocessing's fork server (Linux), or
    spawned processes."""
    table = processes()
    family, grew = {pid}, True
    while grew:
        more = {p for p, (parent, _) in table.items() if parent in family} - family
        family |= more
        grew = bool(more)

    def forked_by_server(p: int) -> bool:
        parent = table[p][0]
        return "forkserver" in table[p][1] and parent in table and "forkserver" in table[parent][1]

    return [p for p in family - {pid} if forked_by_server(p) or "spawn_main" in table[p][1]]


def test_a_killed_local_worker_is_replaced_and_the_batch_completes(tmp_path, reference, models, lab_files):
    names = [f"m{k}" for k in range(6)]
    manifest = write_manifest(tmp_path / "m.csv", [{"name": n, "model": str(models[n])} for n in names])
    out = tmp_path / "out"
    process, lines, first_done, watcher = _start(["batch", manifest, "--out", out, "--workers", 2,
                                                  *data_flags(lab_files), *FAST])
    assert first_done.wait(300), "".join(lines)
    victims = pool_workers(process.pid)
    assert victims
    os.kill(victims[0], signal.SIGKILL)
    assert process.wait(600) == 0
    watcher.join(10)
    assert any("a worker process died" in line for line in lines), "".join(lines)
    assert not any("leaked" in line for line in lines), "".join(lines)
    assert statuses(out) == dict.fromkeys(names, "done")
    same_results(out, reference, names)


def test_ctrl_c_keeps_finished_models_and_a_rerun_runs_the_rest(tmp_path, reference, models, lab_files):
    names = [f"m{k}" for k in range(4)]
    manifest = write_manifest(tmp_path / "m.csv", [{"name": n, "model": str(models[n])} for n in names])
    out = tmp_path / "out"
    process, lines, first_done, watcher = _start(["batch", manifest, "--out", out, "--workers", 1,
                                                  *data_flags(lab_files), *FAST])
    assert first_done.wait(300), "".join(lines)
    process.send_signal(signal.SIGINT)
    assert process.wait(120) == 130
    watcher.join(10)
    assert "error: interrupted" in lines[-1]
    finished = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert 1 <= len(finished) < len(names), finished
    for name in finished:  # complete, or absent
        assert (out / name / "summary.json").is_file() and (out / name / FINGERPRINT).is_file()
    assert not [p for p in out.iterdir() if p.name.startswith(".") and p.name not in (".batch.lock", FILES)]
    assert statuses(out) == dict.fromkeys(finished, "done")

    done = run_cli("batch", manifest, "--out", out, "--workers", 1, *data_flags(lab_files), *FAST)
    assert done.returncode == 0, done.stderr
    assert statuses(out) == {n: "reused" if n in finished else "done" for n in names}
    same_results(out, reference, names)


def test_ctrl_c_while_the_tables_are_written_leaves_no_temporary_file(tmp_path, reference, fast_manifest, lab_files,
                                                                    monkeypatch):
    """The first table write is cut by Ctrl-C after it made its temporary file, as a killed worker leaves its
    staging folder: the batch still writes the finished rows, then removes both, and raises KeyboardInterrupt."""
    import torch_badnet as tb
    from torch_badnet.batch import run

    out = tmp_path / "out"
    shutil.copytree(reference, out)
    real_write = run.write_tables
    calls = []

    def interrupted_write(folder, rows, meta):
        calls.append(len(rows))
        if len(calls) == 1:
            (folder / ".batch.csv.0123456789abcdef.tmp.csv").write_text("half")
            (folder / ".m3.0123456789abcdef.staging").mkdir()
            raise KeyboardInterrupt
        real_write(folder, rows, meta)

    monkeypatch.setattr(run, "write_tables", interrupted_write)
    with pytest.raises(KeyboardInterrupt):
        tb.prune_batch(fast_manifest, out, progress=False, log=lambda line: None, **{
            k: str(v) for k, v in lab_files.items()}, max_steps=4, thresholds=[1, 2], no_plot=True)
    assert calls == [1, 1]  # the interrupted write, then the finished row written on the way out
    assert statuses(out) == {"m0": "reused"}
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [".batch.lock", FILES]


def test_on_ray_results_equal_a_separate_sweep_even_when_a_worker_is_killed(ray_cluster, tmp_path, reference, models,
                                                                            lab_files, lab3_path, cli):
    import torch_badnet as tb

    names = [f"m{k}" for k in range(6)]
    manifest = write_manifest(tmp_path / "m.csv", [{"name": n, "model": str(models[n])} for n in names]
                              + [{"name": "full", "model": str(lab3_path), "max_steps": "60", "thresholds": "2 4 10",
                                  "no_plot": "false"}])
    out = tmp_path / "out"
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["result"] = tb.prune_batch(manifest, out, ray="auto", max_steps=4, thresholds=[1, 2], no_plot=True,
                                               **{k: str(v) for k, v in lab_files.items()})
        except BaseException as exc:  # handed to the test
            outcome["error"] = exc

    batch = threading.Thread(target=run)
    batch.start()
    killed = None
    deadline = time.monotonic() + 300
    while killed is None and batch.is_alive() and time.monotonic() < deadline:
        for pid, (_, cmdline) in processes().items():
            if "ray::run_ray_task" in cmdline:
                os.kill(pid, signal.SIGKILL)
                killed = pid
                break
        time.sleep(0.05)
    batch.join(600)
    assert killed is not None, "no Ray task worker was seen running"
    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    assert [r["status"] for r in result.rows] == ["done"] * (len(names) + 1)
    same_results(out, reference, names)

    code, _, err = cli(*sweep_args(lab_files, lab3_path, tmp_path / "single"))
    assert code == 0, err
    ours = result_files(out / "full")
    ours.pop(FINGERPRINT)
    ours.pop(FILES)  # (it lists fingerprint.json too)
    theirs = result_files(tmp_path / "single")
    theirs.pop(FILES)
    assert ours == theirs


@pytest.mark.parametrize("rows, problem", [
    ([{"name": "a"}], "column 'model' is missing (required: name, model)"),
    ([{"name": "a", "model": "M", "colour": "red"}], "column 'colour' is not a sweep option or data column"),
    ([{"name": "a", "model": "M"}, {"name": "a", "model": "M"}], "row 3, column name: 'a' is also the name of row 2"),
    ([{"name": "a", "model": "missing.h5"}], "row 2, column model: no such file"),
    ([{"name": "a", "model": "M", "clean_test": "cl/nothere.h5"}], "row 2, column clean_test: no such file"),
    ([{"name": "a", "model": "M", "thresholds": "2 x"}], "row 2, column thresholds: argument --thresholds: invalid float value: 'x'"),
    ([{"name": "a", "model": "M", "thresholds": "150"}], "row 2, column thresholds: 150 is outside (0, 100)"),
    ([{"name": "a", "model": "M", "finetune": "maybe"}], "row 2, column finetune: 'maybe' is not true or false"),
    ([{"name": "a", "model": "M", "finetune": "true", "lr": "-1"}], "row 2, column lr: -1 is not a learning rate > 0"),
    ([{"name": "a", "model": "M", "max_steps": "0"}], "row 2, column max_steps: must be at least 1"),
    ([{"name": "a", "model": "M", "stop": "never"}], "row 2, column stop: argument --stop: invalid choice: 'never'"),
    ([{"name": "../up", "model": "M"}], "row 2, column name: '../up' cannot be a folder name here"),
])
def test_a_bad_manifest_is_refused_before_anything_runs(tmp_path, lab_files, lab3_path, cli, rows, problem):
    shutil.copy(lab3_path, tmp_path / "M")
    manifest = write_manifest(tmp_path / "m.csv", rows)
    code, out, err = cli("batch", manifest, "--out", tmp_path / "out", *data_flags(lab_files))
    assert code == 2
    assert err.startswith(f"error: {manifest}: ") and problem in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_a_row_without_data_and_no_flag_is_refused(tmp_path, lab3_path, cli):
    manifest = write_manifest(tmp_path / "m.csv", [{"name": "a", "model": str(lab3_path)}])
    code, _, err = cli("batch", manifest, "--out", tmp_path / "out")
    assert code == 2 and "row 2, column clean_valid: empty and no --clean-valid given to batch" in err


def test_a_locked_folder_is_refused(tmp_path, lab_files, lab3_path, cli):
    out = tmp_path / "out"
    out.mkdir()
    manifest = write_manifest(tmp_path / "m.csv", [{"name": "a", "model": str(lab3_path)}])
    with open(out / ".batch.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running batch holds it
        code, _, err = cli("batch", manifest, "--out", out, *data_flags(lab_files))
    assert code == 2 and err == f"error: {out}: another torch-badnet batch is writing into it; wait for it or choose another folder\n"
    assert os.listdir(out) == [".batch.lock"]


def test_a_foreign_folder_needs_force(tmp_path, lab_files, lab3_path, cli):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    manifest = write_manifest(tmp_path / "m.csv", [{"name": "a", "model": str(lab3_path)}])
    code, _, err = cli("batch", manifest, "--out", out, *data_flags(lab_files))
    assert code == 2 and "holds no torch-badnet batch" in err
    assert os.listdir(out) == ["notes.txt"]


def test_ray_missing_is_one_line(tmp_path, lab_files, lab3_path, cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as when it is not installed
    manifest = write_manifest(tmp_path / "m.csv", [{"name": "a", "model": str(lab3_path)}])
    code, _, err = cli("batch", manifest, "--out", tmp_path / "out", "--ray", "auto", *data_flags(lab_files))
    assert code == 2 and err == "error: --ray: Ray is not installed: pip install 'torch-badnet[ray]'\n"


@pytest.mark.parametrize("flags, line", [
    (["--workers", "0"], "error: --workers: must be at least 1\n"),
    (["--gpus-per-model", "0.5"], "error: --gpus-per-model: must be >= 0 and needs --ray (local workers share --device)\n"),
])
def test_bad_batch_flags_are_one_line(tmp_path, lab_files, lab3_path, cli, flags, line):
    manifest = write_manifest(tmp_path / "m.csv", [{"name": "a", "model": str(lab3_path)}])
    code, _, err = cli("batch", manifest, "--out", tmp_path / "out", *data_flags(lab_files), *flags)
    assert code == 2 and err == line
    assert not (tmp_path / "out").exists()
