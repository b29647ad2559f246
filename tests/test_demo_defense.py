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
