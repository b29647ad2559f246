"""The full default demo, end to end through the CLI, on the BadNet weights shipped in the package.

The demo trains nothing (its data are rendered from the seed, the same bytes on every CPU, and the net is the
package's), so the sweep's table is the same on every machine: it must equal the README's block line for
line. Pruning alone leaves the backdoor alive; fine-pruning with the default settings removes it at X=4
without costing clean accuracy. The fine-tuned numbers are training results (they may move slightly on
another CPU), so they are checked against the issue's targets, not against printed digits.
"""

import contextlib
import io
import json
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
DEMO_BLOCK_INTRO = "Real output of `torch-badnet demo`"


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    from torch_badnet.cli import main

    root = tmp_path_factory.mktemp("demo")
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["demo", "--workdir", str(root / "ws"), "--out", str(root / "out"), "--finetune", "--no-plot"])
    assert code == 0, stderr.getvalue()
    return root, json.loads((root / "out" / "summary.json").read_text()), stdout.getvalue(), stderr.getvalue()


def readme_demo_table() -> list[str]:
    """The README's `torch-badnet demo` output: from the title line to the last table row."""
    text = README.read_text(encoding="utf-8")
    block = text[text.index(DEMO_BLOCK_INTRO):].split("```")[1]
    lines = block.strip("\n").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Pruning defense on the demo BadNet"))
    end = next(i for i, line in enumerate(lines) if line.startswith("wrote "))
    return [line for line in lines[start:end]]


def printed_table(stdout: str) -> list[str]:
    """The demo's printed table without the fine-tuned rows (" 4 ft ...") and the closing line."""
    lines = stdout.splitlines()
    end = next(i for i, line in enumerate(lines) if line.startswith("wrote "))
    return [line for line in lines[:end] if not re.match(r"^\s*\S+ ft\s", line)]


def test_demo_uses_the_shipped_weights_without_training(demo_run):
    from torch_badnet.demo.workspace import SHIPPED_MODEL
    from torch_badnet.files import file_sha256

    root, summary, _, stderr = demo_run
    assert "from the package" in stderr and "training BadNet" not in stderr
    assert file_sha256(root / "ws" / "models" / "bd_net.h5") == file_sha256(SHIPPED_MODEL)
    assert summary["model"]["sha256"] == file_sha256(SHIPPED_MODEL)


def test_demo_prints_the_readme_table_line_for_line(demo_run):
    _, _, stdout, _ = demo_run
    expected = readme_demo_table()
    assert len(expected) > 10
    assert printed_table(stdout) == expected


def test_demo_badnet_meets_the_targets(demo_run):
    _, summary, _, _ = demo_run
    assert summary["original"]["test_clean_acc"] >= 90.0
    assert summary["original"]["test_asr"] >= 95.0
    assert summary["model"]["num_classes"] >= 100


def test_demo_pruning_alone_keeps_the_backdoor(demo_run):
    _, summary, _, _ = demo_run
    by_x = {t["x"]: t for t in summary["thresholds"]}
    assert all(t["reached"] for t in by_x.values())
    assert by_x[2.0]["test_asr"] >= 90.0 and by_x[4.0]["test_asr"] >= 90.0  # as in the lab: B' still obeys the trigger


def test_fine_pruning_removes_the_backdoor_at_x4(demo_run):
    _, summary, _, _ = demo_run
    b4 = next(t for t in summary["thresholds"] if t["x"] == 4.0)
    tuned = b4["finetuned"]
    assert tuned["test_asr"] < 20.0, tuned["test_asr"]
    assert tuned["test_clean_acc"] >= b4["test_clean_acc"] - 2.0
    assert tuned["goodnet_test_asr"] <= tuned["test_asr"]
    assert tuned["holdout"]["images"] > 0 and tuned["best_epoch"] >= 1


def test_second_demo_run_reuses_the_workspace(demo_run, cli):
    root, summary, _, _ = demo_run
    code, out, err = cli("demo", "--workdir", root / "ws", "--out", root / "again", "--no-plot")
    assert code == 0
    assert "reused from cache" in err
    again = json.loads((root / "again" / "summary.json").read_text())
    assert again["original"] == summary["original"]
    assert [t["step"] for t in again["thresholds"]] == [t["step"] for t in summary["thresholds"]]


@pytest.mark.parametrize("flag, value, message", [("--weight-decay", "-1", "error: --weight-decay: -1 is not a number >= 0"),
                                                  ("--tolerance", "nan", "error: --tolerance: nan is not a number of points >= 0"),
                                                  ("--lr", "nan", "error: --lr: nan is not a learning rate > 0")])
def test_finetune_refuses_bad_settings(cli, tmp_path, flag, value, message):
    code, _, err = cli("finetune", "--model", tmp_path / "b.h5", "--pruned", tmp_path / "p.pt", "--clean-valid",
                       tmp_path / "c.h5", "--out", tmp_path / "out", flag, value)
    assert code == 2 and err.startswith(message) and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_demo_rerun_replaces_its_result_whole(demo_run, cli):
    """demo-results/ follows the sweep's rule: a rerun replaces the previous result, no stale file survives."""
    root = demo_run[0]
    out = root / "out"
    assert (out / "models" / "X=2" / "finetuned.pt").is_file()
    code, stdout, err = cli("demo", "--workdir", root / "ws", "--out", out, "--no-plot", "--thresholds", "4")
    assert code == 0, err
    assert f"replaced {out}" in err
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == ["models/X=4/pruned.h5", "models/X=4/pruned.pt", "summary.json", "sweep.csv"]
    assert stdout.splitlines()[-1].startswith(f"wrote {out}/summary.json, sweep.csv and models/X=4/pruned.pt|.h5 (")


def test_demo_refuses_a_foreign_default_folder_before_building(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo-results").mkdir()
    (tmp_path / "demo-results" / "thesis.tex").write_text("not a result")
    code, _, err = cli("demo", "--workdir", tmp_path / "ws")
    assert code == 2 and err.startswith("error: demo-results: is not empty") and "--force" in err
    assert not (tmp_path / "ws").exists()  # refused before the workspace was built
    assert [p.name for p in (tmp_path / "demo-results").iterdir()] == ["thesis.tex"]
