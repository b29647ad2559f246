"""The GoodNet module: one shared trunk pass, B's class where B and B' agree, else the detected class."""

import copy
import warnings

import pytest
import torch

from torch_badnet.engine.pruning import prune
from torch_badnet.nets.goodnet import GoodNet, combine
from torch_badnet.nets.pairing import PairingError, UnpairedWarning, mark_derived, weights_fingerprint


def _pruned_copy(model, channels):
    return prune(copy.deepcopy(model), channels)


def test_goodnet_equals_two_separate_nets(lab3_model, faces):
    channels = list(range(0, 60, 2)) + [1, 3, 5, 7, 9, 11, 13, 15]
    x = torch.cat([faces["cl"], faces["sun"], faces["ano"], torch.rand(64, 3, 55, 47) * 255])
    pruned = _pruned_copy(lab3_model, channels)
    with torch.no_grad():
        b = lab3_model(x).argmax(1)
        b_prime = pruned(x).argmax(1)
        g = GoodNet(lab3_model, pruned.conv_3.mask)(x)
        g_from_model = GoodNet(lab3_model, pruned)(x)
    expected = torch.where(b == b_prime, b, torch.full_like(b, 1283))
    assert g.dtype == torch.int64
    assert torch.equal(g, expected)
    assert torch.equal(g_from_model, expected)
    assert (g == 1283).any() and (g != 1283).any()  # this mask makes B and B' disagree on some inputs
    assert int(g.min()) >= 0 and int(g.max()) <= 1283


def test_goodnet_shares_the_trunk(lab3_model, faces):
    calls = []
    handle = lab3_model.conv_1.register_forward_hook(lambda *_: calls.append(1))
    try:
        with torch.no_grad():
            logits, pruned_logits = GoodNet(lab3_model, _pruned_copy(lab3_model, [0, 1, 2]).conv_3.mask).forward_both(faces["cl"])
    finally:
        handle.remove()
    assert len(calls) == 1
    assert logits.shape == pruned_logits.shape == (5, 1283)


def test_unpruned_goodnet_is_b(lab3_model, faces):
    with torch.no_grad():
        g = GoodNet(lab3_model, torch.ones(60))(faces["sun"])
    assert g.tolist() == [0] * 5


def test_finetuned_pruned_net_runs_as_second_net(lab3_model, faces):
    other = mark_derived(_pruned_copy(lab3_model, [5, 6]), lab3_model)  # a fine-tuned B' records B's fingerprint
    with torch.no_grad():
        other.output.bias.add_(torch.linspace(0, 50, 1283))
        g = GoodNet(lab3_model, other)
        assert g.pruned_model is other
        x = faces["cl"]
        assert torch.equal(g(x), combine(lab3_model(x).argmax(1), other(x).argmax(1), 1283))


# --- pairing: a B' must come from B --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sunglasses_model(sunglasses_path):
    from torch_badnet.convert import read_model_file

    return read_model_file(sunglasses_path).model


def test_fingerprint_is_of_the_weights_not_the_mask_or_file(lab3_model, lab3_path, tmp_path):
    from torch_badnet.convert import read_model_file
    from torch_badnet.nets.checkpoint import load_checkpoint, save_checkpoint

    fingerprint = weights_fingerprint(lab3_model)
    assert len(fingerprint) == 64 and fingerprint == weights_fingerprint(read_model_file(lab3_path).model)
    assert weights_fingerprint(_pruned_copy(lab3_model, [1, 2, 3])) == fingerprint  # masks aside
    save_checkpoint(lab3_model, tmp_path / "b.pt")
    assert weights_fingerprint(load_checkpoint(tmp_path / "b.pt").model) == fingerprint  # another file, same weights
    changed = copy.deepcopy(lab3_model)
    with torch.no_grad():
        changed.output.bias[0] += 1e-3
    assert weights_fingerprint(changed) != fingerprint


def test_goodnet_refuses_a_pruned_net_of_another_model(lab3_model, sunglasses_model, faces):
    foreign = mark_derived(_pruned_copy(sunglasses_model, [0, 1, 2]), sunglasses_model)
    with pytest.raises(PairingError, match="of another model") as info:
        GoodNet(lab3_model, foreign)
    assert isinstance(info.value, ValueError)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = GoodNet(lab3_model, foreign, allow_unpaired=True)  # the caller says they belong together
        assert g.pruned_model is foreign


def test_goodnet_accepts_unfingerprinted_zeroed_channels_silently(lab3_model, faces):
    baked = copy.deepcopy(lab3_model)  # as a pruned.h5 from elsewhere: channels zeroed, no fingerprint, no mask
    with torch.no_grad():
        baked.conv_3.weight[[4, 9]] = 0
        baked.conv_3.bias[[4, 9]] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        GoodNet(lab3_model, baked)
        GoodNet(lab3_model, _pruned_copy(lab3_model, [4, 9]))


def test_goodnet_warns_when_the_pair_cannot_be_verified(lab3_model, sunglasses_model):
    other = copy.deepcopy(lab3_model)
    with torch.no_grad():
        other.fc_1.weight[0, 0] += 1.0
    with pytest.warns(UnpairedWarning, match="could not be verified"):
        GoodNet(lab3_model, other)
    with pytest.warns(UnpairedWarning):
        GoodNet(lab3_model, copy.deepcopy(sunglasses_model))  # another model, no fingerprint: not verifiable
