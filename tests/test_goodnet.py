"""The GoodNet module: one shared trunk pass, B's class where B and B' agree, else the detected class."""

import copy

import torch

from torch_badnet.goodnet import GoodNet, combine
from torch_badnet.pruning import prune


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
    other = _pruned_copy(lab3_model, [5, 6])
    with torch.no_grad():
        other.output.bias.add_(torch.linspace(0, 50, 1283))
        g = GoodNet(lab3_model, other)
        assert g.pruned_model is other
        x = faces["cl"]
        assert torch.equal(g(x), combine(lab3_model(x).argmax(1), other(x).argmax(1), 1283))
