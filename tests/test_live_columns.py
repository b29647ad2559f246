"""The sweep head's live-column GEMMs (`torch_badnet.live_columns`): the dense GEMM's bits, on random blocks and
on real lab3 activations, and the same sweep labels as the dense head at sizes where full blocks occur."""

from __future__ import annotations

import pytest
import torch
from real_faces import augment

from torch_badnet import live_columns, sweep
from torch_badnet.data import load_images
from torch_badnet.live_columns import addmm_live, exact_group, live_indices
from torch_badnet.model import BadNet
from torch_badnet.pruning import channel_scores, pruning_order
from torch_badnet.sweep import ROW_BLOCK, FeatureSet, HeadUpdater, extract_features, fast_sweep, prepare_model

HEAD_SHAPES = ((960, 160), (160, 1283))  # fc_2 and the output layer: (in_features, out_features)
SET_SIZE = 2 * ROW_BLOCK + 77  # two full blocks and a tail per set


@pytest.fixture(scope="module")
def group() -> int:
    found = exact_group(ROW_BLOCK, HEAD_SHAPES, torch.get_num_threads())
    assert found is not None, "torch's MKL sgemm sums in K blocks that a live-column GEMM can reproduce"
    return found


def test_only_the_blas_group_passes(group: int, monkeypatch: pytest.MonkeyPatch) -> None:
    passing = []
    for candidate in live_columns.GROUP_CANDIDATES:
        monkeypatch.setattr(live_columns, "GROUP_CANDIDATES", (candidate,))
        if exact_group.__wrapped__(ROW_BLOCK, HEAD_SHAPES, torch.get_num_threads()) is not None:
            passing.append(candidate)
    assert passing == [group]


def test_random_blocks_give_the_dense_bits(group: int) -> None:
    generator = torch.Generator().manual_seed(1)
    for (inputs, outputs), keep in zip(HEAD_SHAPES * 3, (0.95, 0.95, 0.5, 0.5, 0.05, 0.05)):
        for _ in range(3):
            bias, x, weight_t = live_columns.probe_block(ROW_BLOCK, inputs, outputs, keep, generator)
            assert torch.equal(addmm_live(bias, x, weight_t, group), torch.addmm(bias, x, weight_t))


def test_a_wrong_group_changes_the_bits_and_is_refused(group: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The probe can fail: groups of 1 add every product to the output separately, not in the BLAS's sums."""
    bias, x, weight_t = live_columns.probe_block(ROW_BLOCK, 960, 160, 0.9, torch.Generator().manual_seed(2))
    assert not torch.equal(addmm_live(bias, x, weight_t, 1), torch.addmm(bias, x, weight_t))
    monkeypatch.setattr(live_columns, "GROUP_CANDIDATES", (1,))
    assert exact_group.__wrapped__(ROW_BLOCK, HEAD_SHAPES, torch.get_num_threads()) is None


def test_nan_columns_stay_live_and_empty_blocks_give_the_bias(group: int) -> None:
    bias, x, weight_t = live_columns.probe_block(ROW_BLOCK, 960, 160, 0.3, torch.Generator().manual_seed(3))
    dead = int((x.amax(0) == 0).nonzero()[0])
    x[5, dead] = float("nan")
    assert dead in live_indices(x).tolist()
    torch.testing.assert_close(addmm_live(bias, x, weight_t, group), torch.addmm(bias, x, weight_t),
                               rtol=0, atol=0, equal_nan=True)
    assert addmm_live(bias, x, weight_t, group)[5].isnan().all()
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


def test_lab3_hidden_and_logits_are_the_dense_bits(lab3_sets, group: int) -> None:
    """fc_2 and the output layer on real activations, unpruned and after 20 and 45 channels."""
    model, sets, order = lab3_sets
    head = HeadUpdater(model)
    assert head.group == group
    with torch.inference_mode():
        for features in (s.features for s in sets):
            for pruned in (0, 20, 45):
                pre = head.initial(features)
                for channel in order[:pruned]:
                    pre.addmm_(features[:, channel].flatten(1), head.per_channel[channel], alpha=-1)
                block = pre[:ROW_BLOCK]
                conv = block[:, head.split :].relu()
                assert live_indices(conv).numel() < conv.shape[1]  # columns are skipped
                hidden = addmm_live(head.fc_2_bias, conv, head.fc_2_weight_t, group)
                assert torch.equal(hidden, torch.addmm(head.fc_2_bias, conv, head.fc_2_weight_t))
                hidden.add_(block[:, : head.split]).relu_()
                logits = addmm_live(head.output_bias, hidden, head.output_weight_t, group)
                assert torch.equal(logits, torch.addmm(head.output_bias, hidden, head.output_weight_t))


def test_sweep_labels_equal_the_dense_heads(lab3_sets, monkeypatch: pytest.MonkeyPatch) -> None:
    """All 61 steps on two sets with full blocks: the dense head (proven equal to the reference procedure and
    to Keras in test_keras_reference.py) gives the same labels."""
    model, sets, order = lab3_sets
    live = fast_sweep(model, sets, order)
    monkeypatch.setattr(sweep, "exact_group", lambda *_: None)
    assert HeadUpdater(model).group is None
    dense = fast_sweep(model, sets, order)
    for name in dense:
        assert torch.equal(live[name], dense[name]), name
        assert (dense[name][1:] != dense[name][:-1]).any(), "pruning changes labels"

