"""The full default demo, end to end through the CLI: its BadNet meets the issue's targets, pruning alone
leaves the backdoor alive, and fine-pruning lowers the attack at X=4 without costing clean accuracy.

This is the slowest test module (a full demo build, ~0.5-2 min on 2 cores, plus fine-tuning); every number
asserted is read from the run's own summary.json, none is written here to match a run.
"""

import json

import pytest


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    from torch_badnet.cli import main

    root = tmp_path_factory.mktemp("demo")
    code = main(["demo", "--workdir", str(root / "ws"), "--out", str(root / "out"), "--finetune", "--thresholds", "2", "4", "10"])
    assert code == 0
    return root, json.loads((root / "out" / "summary.json").read_text())


def test_demo_badnet_meets_the_targets(demo_run):
    _, summary = demo_run
    assert summary["original"]["test_clean_acc"] >= 90.0
    assert summary["original"]["test_asr"] >= 95.0
    assert summary["model"]["num_classes"] >= 100


def test_demo_pruning_alone_keeps_the_backdoor_at_small_drops(demo_run):
    _, summary = demo_run
    x2 = summary["thresholds"][0]
    assert x2["x"] == 2.0 and x2["reached"]
    assert x2["test_asr"] >= 90.0  # as in the lab: B'_2 still obeys the trigger


def test_fine_pruning_lowers_the_attack_at_x4(demo_run):
    _, summary = demo_run
    b4 = next(t for t in summary["thresholds"] if t["x"] == 4.0)
    tuned = b4["finetuned"]
    assert tuned["test_asr"] < b4["test_asr"]
    assert tuned["test_clean_acc"] >= b4["test_clean_acc"] - 2.0
    assert tuned["goodnet_test_asr"] <= tuned["test_asr"]
    assert tuned["holdout"]["images"] > 0 and tuned["best_epoch"] >= 1


def test_second_demo_run_reuses_the_workspace(demo_run, cli):
    root, summary = demo_run
    code, out, err = cli("demo", "--workdir", root / "ws", "--out", root / "again", "--no-plot")
    assert code == 0
    assert "reused from cache" in err
    again = json.loads((root / "again" / "summary.json").read_text())
    assert again["original"] == summary["original"]
    assert [t["step"] for t in again["thresholds"]] == [t["step"] for t in summary["thresholds"]]


def test_demo_rerun_replaces_its_result_whole(demo_run, cli):
    """demo-results/ follows the sweep's rule: a rerun replaces the previous result, no stale file survives."""
    root, _ = demo_run
    out = root / "out"
    assert (out / "sweep.png").is_file() and (out / "models" / "X=2" / "finetuned.pt").is_file()
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
