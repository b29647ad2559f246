"""The sweep head's live-column GEMMs (`torch_badnet.engine.live_gemm`).

What the sweep runs must hold on any BLAS: the head's logits are the dense GEMMs' bits, and its labels the
dense head's. Where the probe finds the BLAS's group (MKL on this project's AMD EPYC: 192), the live-column
GEMMs are checked bit for bit on random and on real lab3 blocks; where it finds none, no candidate may
reproduce the dense GEMM on fresh blocks either, and the head runs dense.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch
from real_faces import augment

from torch_badnet.data.images import load_images
from torch_badnet.engine import lab_head, live_gemm
from torch_badnet.engine.lab_head import ROW_BLOCK, FeatureSet, HeadUpdater, extract_features, fast_sweep, prepare_model
from torch_badnet.engine.live_gemm import GROUP_CANDIDATES, addmm_live, exact_group, live_indices, probe_block
from torch_badnet.engine.pruning import channel_scores, pruning_order
from torch_badnet.nets.badnet import BadNet

HEAD_SHAPES = ((960, 160), (160, 1283))  # fc_2 and the output layer: (in_features, out_features)
SET_SIZE = 2 * ROW_BLOCK + 77  # two full blocks and a tail per set
KEEP_SHARES = (0.95, 0.5, 0.05)


@pytest.fixture(scope="module")
def group() -> int | None:
    """The group this machine's BLAS sums in, or None (then the head runs the dense GEMMs)."""
    return exact_group(ROW_BLOCK, HEAD_SHAPES, torch.get_num_threads())


def random_blocks(seed: int) -> list[tuple[torch.Tensor, ...]]:
    generator = torch.Generator().manual_seed(seed)
    return [probe_block(ROW_BLOCK, inputs, outputs, keep, generator) for inputs, outputs in HEAD_SHAPES
            for keep in KEEP_SHARES for _ in range(2)]


def test_the_probe_accepts_only_the_blas_group(group: int | None, monkeypatch: pytest.MonkeyPatch) -> None:
    passing = []
    for candidate in GROUP_CANDIDATES:
        monkeypatch.setattr(live_gemm, "GROUP_CANDIDATES", (candidate,))
        if exact_group.__wrapped__(ROW_BLOCK, HEAD_SHAPES, torch.get_num_threads()) is not None:
            passing.append(candidate)
    assert passing == ([] if group is None else [group])


def test_fresh_random_blocks_agree_with_the_probe(group: int | None) -> None:
    """The accepted group gives the dense bits on blocks the probe never saw; with none accepted, every
    candidate misses on some block."""
    blocks = random_blocks(seed=1)
    dense = [torch.addmm(bias, x, weight_t) for bias, x, weight_t in blocks]
    for candidate in GROUP_CANDIDATES:
        same = all(torch.equal(addmm_live(*block, candidate), d) for block, d in zip(blocks, dense))
        assert same == (candidate == group), candidate


def test_a_wrong_group_changes_the_bits_and_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """The probe can fail: groups of 1 add every product to the output separately, not in the BLAS's sums."""
    bias, x, weight_t = probe_block(ROW_BLOCK, 960, 160, 0.9, torch.Generator().manual_seed(2))
    assert not torch.equal(addmm_live(bias, x, weight_t, 1), torch.addmm(bias, x, weight_t))
    monkeypatch.setattr(live_gemm, "GROUP_CANDIDATES", (1,))
    assert exact_group.__wrapped__(ROW_BLOCK, HEAD_SHAPES, torch.get_num_threads()) is None


def test_nan_columns_stay_live_and_empty_blocks_give_the_bias(group: int | None) -> None:
    bias, x, weight_t = probe_block(ROW_BLOCK, 960, 160, 0.3, torch.Generator().manual_seed(3))
    dead = int((x.amax(0) == 0).nonzero()[0])
    x[5, dead] = float("nan")
    assert dead in live_indices(x).tolist()
    for candidate in [group] if group is not None else GROUP_CANDIDATES:
        out = addmm_live(bias, x, weight_t, candidate)
        assert out[5].isnan().all() and not out[torch.arange(ROW_BLOCK) != 5].isnan().any()
    if group is not None:
        torch.testing.assert_close(out, torch.addmm(bias, x, weight_t), rtol=0, atol=0, equal_nan=True)
        zeros = torch.zeros_like(x)
        assert torch.equal(addmm_live(bias, zeros, weight_t, group), torch.addmm(bias, zeros, weight_t))


@pytest.fixture(scope="module")
def lab3_sets(lab3_model: BadNet, face_paths: list) -> tuple[BadNet, list[FeatureSet], list[int]]:
    """lab3's pool_3 features of two sets of augmented real faces, and the ranking of the first."""
    model = prepare_model(lab3_model, torch.device("cpu"))
    real = load_images(face_paths)
    sets = []
    for name, seed in (("clean_valid", 21), ("clean_test", 22)):
        pixels = augment(real, SET_SIZE, seed)
        chunks = [(pixels, torch.zeros(SET_SIZE, dtype=torch.int64))]
        sets.append(extract_features(model, name, chunks, SET_SIZE, torch.device("cpu")))
    return model, sets, pruning_order(channel_scores(sets[0].features))


def test_lab3_head_logits_are_the_dense_bits(lab3_sets, group: int | None) -> None:
    """The head's logits on real activations, unpruned and after 20 and 45 channels, full blocks and tails."""
    model, sets, order = lab3_sets
    head = HeadUpdater(model)
    assert head.group == group
    with torch.inference_mode():
        for features in (s.features for s in sets):
            for pruned in (0, 20, 45):
                pre = head.initial(features)
                for channel in order[:pruned]:
                    pre.addmm_(features[:, channel].flatten(1), head.per_channel[channel], alpha=-1)
                for block in (pre[:ROW_BLOCK], pre[ROW_BLOCK : 2 * ROW_BLOCK], pre[2 * ROW_BLOCK :]):
                    conv = block[:, head.split :].relu()
                    assert live_indices(conv).numel() < conv.shape[1]  # there are columns to skip
                    hidden = torch.addmm(head.fc_2_bias, conv, head.fc_2_weight_t).add_(block[:, : head.split]).relu_()
                    dense = torch.addmm(head.output_bias, hidden, head.output_weight_t)
                    assert torch.equal(head.block_logits(block), dense)


def test_sweep_labels_equal_the_dense_heads(lab3_sets, monkeypatch: pytest.MonkeyPatch) -> None:
    """All 61 steps on two sets with full blocks: the dense head (proven equal to the reference procedure and
    to Keras in test_keras_reference.py) gives the same labels."""
    model, sets, order = lab3_sets
    live = fast_sweep(model, sets, order)
    monkeypatch.setattr(lab_head, "verified_group", lambda *_: None)
    assert HeadUpdater(model).group is None
    dense = fast_sweep(model, sets, order)
    for name in dense:
        assert torch.equal(live[name], dense[name]), name
        assert (dense[name][1:] != dense[name][:-1]).any(), "pruning changes labels"


def test_head_blocks_run_on_one_torch_thread_each_with_the_same_labels(lab3_sets, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 34: on a busy machine with several torch threads the head's row blocks run side by side on the pool's
    threads, each on one torch thread (no OpenMP barrier inside a block); torch's thread count comes back
    afterwards, and the labels at all 61 steps are those of the head without a pool, on one thread and on two
    (an idle machine's path: no block goes to the pool)."""
    model, sets, order = lab3_sets
    previous, seen = torch.get_num_threads(), []
    busy = [True]
    monkeypatch.setattr(lab_head, "machine_busy", lambda: busy[0])
    block_labels = HeadUpdater.block_labels

    def spy(head: HeadUpdater, block: torch.Tensor) -> torch.Tensor:
        seen.append((threading.current_thread().name, torch.get_num_threads(), block.shape[0]))
        return block_labels(head, block)

    monkeypatch.setattr(HeadUpdater, "block_labels", spy)
    try:
        torch.set_num_threads(2)
        pooled = fast_sweep(model, sets, order)
        assert torch.get_num_threads() == 2
        pool_blocks = len(seen)
        busy[0] = False
        idle = fast_sweep(model, sets, order)
        torch.set_num_threads(1)
        busy[0] = True
        alone = fast_sweep(model, sets, order)
    finally:
        torch.set_num_threads(previous)
    assert {(name.split("_")[0], threads) for name, threads, _ in seen} == {("sweep-head", 1)}
    assert {rows for _, _, rows in seen} >= {ROW_BLOCK, SET_SIZE - 2 * ROW_BLOCK}  # full blocks and tails
    assert pool_blocks > len(order) and len(seen) == pool_blocks  # only the busy two-thread run used the pool
    for name in alone:
        assert torch.equal(pooled[name], alone[name]), name
        assert torch.equal(idle[name], alone[name]), name


def test_machine_busy_means_more_load_than_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lab_head.os, "cpu_count", lambda: 2)
    for load, busy in ((3.0, True), (2.9, False), (0.1, False)):
        monkeypatch.setattr(lab_head.os, "getloadavg", lambda load=load: (load, 0.0, 0.0))
        assert lab_head.machine_busy() is busy

    def unknown() -> tuple[float, float, float]:
        raise OSError("no load average here")

    monkeypatch.setattr(lab_head.os, "getloadavg", unknown)
    assert lab_head.machine_busy() is False


def verdict_files(root: Path) -> list[Path]:
    return sorted((root / "live-columns").glob("*.json"))


def test_the_verdict_is_cached_and_a_cached_none_skips_the_probe(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                                  group: int | None) -> None:
    """The first process probes and writes its verdict; later ones read it. A cached "none" probes nothing, a
    cached group is probed again alone, and the full probe runs only when that fails."""
    monkeypatch.setenv("TORCH_BADNET_CACHE", str(tmp_path))
    calls: list[tuple[int, ...]] = []
    probe = live_gemm._exact_group
    monkeypatch.setattr(live_gemm, "_exact_group", lambda *a: calls.append(a[-1]) or probe(*a))
    verified = live_gemm.verified_group.__wrapped__
    threads = torch.get_num_threads()
    assert verified(ROW_BLOCK, HEAD_SHAPES, threads) == group
    assert calls == [GROUP_CANDIDATES]
    [path] = verdict_files(tmp_path)
    record = json.loads(path.read_text())
    assert record["group"] == group and json.loads(record["key"])["threads"] == threads
    calls.clear()
    assert verified(ROW_BLOCK, HEAD_SHAPES, threads) == group
    assert calls == ([] if group is None else [(group,)])
    path.write_text(json.dumps({**record, "group": None}))  # a cached "none" is trusted: dense is always exact
    calls.clear()
    assert verified(ROW_BLOCK, HEAD_SHAPES, threads) is None and calls == []
    wrong = next(c for c in GROUP_CANDIDATES if c != group)  # a cached group that fails is probed afresh
    path.write_text(json.dumps({**record, "group": wrong}))
    calls.clear()
    assert verified(ROW_BLOCK, HEAD_SHAPES, threads) == group
    assert calls == [(wrong,), GROUP_CANDIDATES]
    assert json.loads(path.read_text())["group"] == group


@pytest.mark.parametrize("content", ["", "{not json", '{"key": "other", "group": 192}', '{"group": 7}', "[]"])
def test_a_corrupt_or_foreign_verdict_is_ignored_and_rewritten(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                               group: int | None, content: str) -> None:
    monkeypatch.setenv("TORCH_BADNET_CACHE", str(tmp_path))
    verified = live_gemm.verified_group.__wrapped__
    assert verified(ROW_BLOCK, HEAD_SHAPES, 1) == exact_group(ROW_BLOCK, HEAD_SHAPES, 1)
    [path] = verdict_files(tmp_path)
    path.write_text(content)
    assert verified(ROW_BLOCK, HEAD_SHAPES, 1) == exact_group(ROW_BLOCK, HEAD_SHAPES, 1)
    assert json.loads(path.read_text())["key"] == live_gemm.verdict_key(ROW_BLOCK, HEAD_SHAPES, 1, torch.float32)


def test_an_unwritable_cache_only_means_probing_again(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                      group: int | None) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("TORCH_BADNET_CACHE", str(blocker))
    assert live_gemm.verified_group.__wrapped__(ROW_BLOCK, HEAD_SHAPES, torch.get_num_threads()) == group


def test_the_key_names_what_the_summation_order_depends_on(monkeypatch: pytest.MonkeyPatch) -> None:
    key = json.loads(live_gemm.verdict_key(ROW_BLOCK, HEAD_SHAPES, 2, torch.float64))
    assert key["cpu"] and key["torch"] == torch.__version__ and key["dtype"] == "torch.float64" and key["threads"] == 2
    monkeypatch.setenv("MKL_ENABLE_INSTRUCTIONS", "AVX2")
    assert json.loads(live_gemm.verdict_key(ROW_BLOCK, HEAD_SHAPES, 2, torch.float64))["env"] == {
        **key["env"], "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
