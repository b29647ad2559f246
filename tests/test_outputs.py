"""Outputs (issue 23): one writer per --out (an flock beside it), --force moves a replaced folder aside.

The concurrent runs are real `python -m torch_badnet` processes. The first is stopped (SIGSTOP) while it holds
--out's lock, so the second always starts while the first is mid-run: deterministic, not a race.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import sweep_args

from torch_badnet.data.files import interrupts_held, write_text
from torch_badnet.report.outdir import FILES, MARKER, OutputFolder, is_result

LOCK_HEADER = "torch-badnet output lock"  # outdir.LOCK_HEADER: the lock file's first line


def start(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "torch_badnet", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for_lock(lock: Path, run: subprocess.Popen, timeout: float = 300) -> None:
    """Until `lock` names `run` as its holder (written right after the flock is taken)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert run.poll() is None, run.communicate()
        try:
            if lock.read_text() == f"{LOCK_HEADER}\npid {run.pid}\n":
                return
        except OSError:
            pass
        time.sleep(0.01)
    raise AssertionError(f"{lock} never named pid {run.pid}")


def files_in(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_two_sweeps_into_one_out(lab_files, lab3_path, tmp_path):
    """Issue 23 item 2: both sweeps exited 0 and printed 'wrote', and only the second one's files remained. Now the
    second is refused in one line naming the first's pid, and --out holds exactly the first's complete result."""
    out, lock = tmp_path / "out", tmp_path / ".out.lock"
    first = start(*sweep_args(lab_files, lab3_path, out, "--no-plot", "--thresholds", "4"))
    try:
        wait_for_lock(lock, first)
        os.kill(first.pid, signal.SIGSTOP)  # holding the lock, mid-run
        assert lock.read_text() == f"{LOCK_HEADER}\npid {first.pid}\n"  # still held: it deletes the file before releasing
        second = subprocess.run([sys.executable, "-m", "torch_badnet", *map(str, sweep_args(
            lab_files, lab3_path, out, "--no-plot", "--thresholds", "3"))], capture_output=True, text=True, timeout=600)
    finally:
        if first.poll() is None:
            os.kill(first.pid, signal.SIGCONT)
    stdout, stderr = first.communicate(timeout=600)
    assert second.returncode == 2 and second.stdout == ""
    assert second.stderr == f"error: {out}: is being written by another run (pid {first.pid})\n"
    assert first.returncode == 0, stderr
    assert stdout.splitlines()[-1].startswith(f"wrote {out}/summary.json, sweep.csv and models/X=4/pruned.pt|.h5 (")
    assert files_in(out) == [".torch-badnet-files", "models/X=4/pruned.h5", "models/X=4/pruned.pt", "summary.json", "sweep.csv"]
    assert is_result(out) and [t["x"] for t in json.loads((out / "summary.json").read_text())["thresholds"]] == [4.0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folder and no lock file left


def test_a_killed_run_does_not_block_the_next(lab_files, lab3_path, tmp_path, cli):
    """The kernel drops a dead process's flock: the lock file it leaves is taken over, then removed."""
    out, lock = tmp_path / "out", tmp_path / ".out.lock"
    killed = start(*sweep_args(lab_files, lab3_path, out, "--no-plot"))
    wait_for_lock(lock, killed)
    killed.kill()
    killed.wait()
    assert lock.read_text() == f"{LOCK_HEADER}\npid {killed.pid}\n"  # stale
    code, _, err = cli(*sweep_args(lab_files, lab3_path, out, "--no-plot", "--thresholds", "4"))
    assert code == 0, err
    assert is_result(out) and not lock.exists()


def test_force_moves_a_foreign_folder_aside(lab_files, lab3_path, tmp_path, cli):
    """Issue 23 item 3: --force deleted every file of a non-result folder. Now it is renamed DIR.replaced-<time>
    (never onto an existing name) and stderr says where."""
    out = tmp_path / "data"
    out.mkdir()
    (out / "valid.h5").write_bytes(b"the user's data")
    (out / "notes").mkdir()
    (out / "notes" / "n.txt").write_text("my notes")
    code, _, err = cli(*sweep_args(lab_files, lab3_path, out, "--no-plot", "--thresholds", "4", "--force"))
    assert code == 0, err
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("data.replaced-")]
    assert len(aside) == 1 and files_in(aside[0]) == ["notes/n.txt", "valid.h5"]
    assert (aside[0] / "valid.h5").read_bytes() == b"the user's data"
    assert err.strip().splitlines()[-1] == f"replaced {out} (--force: its previous content was moved to {aside[0]})"
    assert is_result(out)
    # a previous result is still replaced whole (no --force needed, nothing kept aside)
    code, _, err = cli(*sweep_args(lab_files, lab3_path, out, "--no-plot", "--thresholds", "3"))
    assert code == 0 and f"replaced {out} (its previous result was removed whole)" in err
    assert len([p for p in tmp_path.iterdir() if p.name.startswith("data.replaced-")]) == 1


def test_moving_aside_never_takes_an_existing_name(tmp_path, monkeypatch):
    """Two --force replacements in the same second: the second gets DIR.replaced-<time>-2; a user's folder of
    that name is left as it was."""
    monkeypatch.setattr(time, "strftime", lambda fmt: "20260101-000000")
    taken = tmp_path / "d.replaced-20260101-000000"
    taken.mkdir()
    (taken / "mine").write_text("x")
    out = tmp_path / "d"
    for content in ("first", "second"):
        out.mkdir(exist_ok=True)
        (out / "f.txt").write_text(content)
        with OutputFolder(out, force=True) as folder, folder.staging() as staging:
            (staging / "summary.json").write_text('{"versions": {"torch_badnet": "x"}}')
            (staging / "f.txt").unlink(missing_ok=True)
        # the result is in place; make it foreign again for the next round
        (out / "summary.json").unlink()
    assert (taken / "mine").read_text() == "x" and files_in(taken) == ["mine"]
    assert (tmp_path / "d.replaced-20260101-000000-2" / "f.txt").read_text() == "first"
    assert (tmp_path / "d.replaced-20260101-000000-3" / "f.txt").read_text() == "second"
    assert not (tmp_path / ".d.lock").exists()


def test_the_lock_folder_is_made_only_for_the_run(tmp_path):
    """--out in a folder that does not exist yet: the parent made for the lock file is removed if the run fails."""
    out = tmp_path / "a" / "b" / "out"
    folder = OutputFolder(out)
    assert (tmp_path / "a" / "b" / ".out.lock").is_file()
    folder.close()
    assert not (tmp_path / "a").exists()


def test_many_processes_racing_for_one_out(tmp_path):
    """Eight processes take --out's lock at once: exactly one holds it (until told to stop), the others are
    refused naming its pid, and the lock file is gone once it releases."""
    code = ("import sys\nfrom torch_badnet.errors import BadInputError\nfrom torch_badnet.report.outdir import OutputFolder\n"
            f"try:\n    f = OutputFolder({str(tmp_path / 'out')!r})\nexcept BadInputError as exc:\n"
            "    print(exc.problem, flush=True)\n    sys.exit(2)\nprint('held', flush=True)\nsys.stdin.read()\nf.close()\n")
    runs = [subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            for _ in range(8)]
    try:
        lines = {run.pid: run.stdout.readline().strip() for run in runs}
        holders = [pid for pid, line in lines.items() if line == "held"]
        assert len(holders) == 1, lines
        assert all(line == f"is being written by another run (pid {holders[0]})" for pid, line in lines.items()
                   if pid != holders[0]), lines
    finally:
        for run in runs:
            run.stdin.close()
            run.wait(60)
    assert [run.returncode for run in runs].count(0) == 1
    assert not list(tmp_path.iterdir())  # the lock file removed by its holder, no temporary file left


def interrupt_after(monkeypatch, name: str) -> None:
    """os.<name> (open, mkdir) does its work, then Ctrl-C arrives before it returns to its caller."""
    real = getattr(os, name)

    def then_interrupt(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(os, name, then_interrupt)


def test_ctrl_c_right_after_a_temporary_file_is_made_leaves_nothing(tmp_path, monkeypatch):
    target = tmp_path / "batch.csv"
    target.write_text("before")
    interrupt_after(monkeypatch, "open")
    with pytest.raises(KeyboardInterrupt):
        write_text(target, "after")
    monkeypatch.undo()
    assert files_in(tmp_path) == ["batch.csv"] and target.read_text() == "before"


def test_ctrl_c_right_after_the_staging_folder_is_made_leaves_nothing(tmp_path, monkeypatch):
    out = tmp_path / "out"
    with OutputFolder(out) as folder:
        interrupt_after(monkeypatch, "mkdir")
        with pytest.raises(KeyboardInterrupt), folder.staging():
            pass
        monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # a Ctrl-C run by a __del__
def test_ctrl_c_at_any_moment_of_atomic_writes_and_staging_leaves_nothing_half_done(tmp_path):
    """Real Ctrl-Cs (a SIGINT sent from a timer's SIGALRM) at random moments of a write and a staged --out: each
    leaves the previous result or the new one, never a temporary file or folder. Only a Ctrl-C while the lock is
    being taken may leave `.out.lock`, as a killed run does; the next run takes it and removes it."""
    out = tmp_path / "out"

    def one_round(k: int) -> None:
        write_text(tmp_path / "table.csv", f"row {k}\n")
        with OutputFolder(out) as folder, folder.staging() as staging:
            (staging / MARKER).write_text(json.dumps({"versions": {"torch_badnet": "x"}, "k": k}))

    started = time.perf_counter()
    for k in range(20):
        one_round(k)
    seconds = (time.perf_counter() - started) / 20  # the timer spans a whole round on this machine
    random = __import__("random").Random(0)
    previous = signal.signal(signal.SIGALRM, lambda number, frame: os.kill(os.getpid(), signal.SIGINT))
    interrupted = 0
    try:
        for k in range(1000):
            try:
                signal.setitimer(signal.ITIMER_REAL, random.uniform(1e-6, 1.2 * seconds))
                one_round(k)
                signal.setitimer(signal.ITIMER_REAL, 0)
            except KeyboardInterrupt:
                interrupted += 1
            signal.setitimer(signal.ITIMER_REAL, 0)
            assert {p.name for p in tmp_path.iterdir()} - {".out.lock"} == {"out", "table.csv"}, k
            assert files_in(out) == [FILES, MARKER] and is_result(out), k
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert 100 < interrupted < 1000, interrupted  # interrupted in many rounds, not in all
    one_round(1000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "table.csv"]


def test_a_ctrl_c_during_clean_up_takes_effect_when_it_ends():
    steps = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts_held():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # the handler runs meanwhile: it only notes the signal
            steps.append("finished")
    assert steps == ["finished"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_killed_runs_staging_folder_is_removed_by_the_next_run_into_that_out(tmp_path):
    left = tmp_path / ".out.0123456789abcdef.staging"
    other = tmp_path / ".out.b.0123456789abcdef.staging"  # --out out.b's, maybe running now: not ours
    for folder in (left, other):
        folder.mkdir()
        (folder / MARKER).write_text("{}")
    with OutputFolder(tmp_path / "out") as folder, folder.staging() as staging:
        (staging / MARKER).write_text(json.dumps({"versions": {"torch_badnet": "x"}}))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.b.0123456789abcdef.staging", "out"]
