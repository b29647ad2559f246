"""Issue 24: the pruning engine for any torch nn.Module (torch_badnet.engine).

Every step of the generic sweep equals a full forward of the model with the mask hook, on a ResNet with
BatchNorm and residual adds (layers with and without skips after the cut), an F-like CNN and the lab's own
BadNet at other layers; the ranking point rules; rank_on; the fallback where fx cannot trace; the GoodNet and
B' of a generic model, saved and loaded; fine-tuning; bad input through the API and the CLI.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import sweep_args
from test_bad_input import assert_one_line_error
from torch import nn
from torch_nets import DictOutput, ResNet, SmallCNN, TwoInputs, TwoOutputs, Untraceable, centre_head, resnet

import torch_badnet as tb
from torch_badnet.engine import generic
from torch_badnet.engine.generic import GenericSweep
from torch_badnet.engine.prunable import MaskedNet, prepare
from torch_badnet.engine.pruning import channel_scores
from torch_badnet.engine.saving import load_masked
from torch_badnet.nets.badnet import BadNet
from torch_badnet.nets.goodnet import combine
from torch_badnet.nets.pairing import PairingError


def reference_labels(net, x: torch.Tensor, channels) -> torch.Tensor:
    """The plain procedure: the mask hook on the layer, a full forward of the net's module over all of x."""
    with torch.inference_mode(), net.mask_off(channels):
        return net.module(x).argmax(1)


def engine_labels(module: nn.Module, layer: str, x: torch.Tensor, order=None, seed: int = 0):
    """Every step's labels from the generic engine (record in blocks of 100 rows, then step by step)."""
    net = prepare(module, x[:4], layer)
    engine = GenericSweep(net, x[:64])
    if order is None:
        order = torch.randperm(net.channels, generator=torch.Generator().manual_seed(seed)).tolist()
    blocks = [(x[i : i + 100], torch.zeros(x[i : i + 100].shape[0], dtype=torch.long)) for i in range(0, x.shape[0], 100)]
    cache = engine.record("set", blocks, x.shape[0], len(order), torch.device("cpu"))
    for step, channel in enumerate(order, start=1):
        engine.step(cache, channel, step)
    return net, engine, order, cache.labels


def assert_every_step_exact(module: nn.Module, layer: str, x: torch.Tensor) -> GenericSweep:
    net, engine, order, labels = engine_labels(module, layer, x)
    changed = 0
    for k in range(len(order) + 1):
        expected = reference_labels(net, x, order[:k])
        assert torch.equal(labels[k], expected), (layer, k)
        changed += int(k > 0 and not torch.equal(labels[k], labels[k - 1]))
    assert changed >= 3, f"pruning {layer} hardly changes a label: the test would prove little"
    return engine


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    return torch.randn(160, 3, 16, 16, generator=torch.Generator().manual_seed(1))  # small and fast: layer4 is 2x2


def test_resnet_every_step_equals_a_full_forward_with_the_mask_hook(pixels):
    model = resnet(6)
    engine = assert_every_step_exact(model, "layer4.1.conv2", pixels)
    split = engine.split
    # the channel-wise region reaches the pooled, flattened features: per step only fc runs
    assert [n.name for n in split.region] == ["layer4_1_conv2", "layer4_1_bn2", "add_7", "layer4_1_relu_1", "avgpool", "flatten"]
    assert [n.name for n in split.frontier] == ["flatten"] and [n.name for n in split.skips] == ["layer4_0_relu_1"]
    assert [n.op for n in split.rest.graph.nodes] == ["placeholder", "call_module", "output"]


@pytest.mark.parametrize("layer", ["layer4.0.conv2", "layer2.0.downsample.0", "conv1", "layer4.1.bn2"])
def test_resnet_other_layers_every_step_exact(pixels, layer):
    model = resnet(4, seed=3)
    engine = assert_every_step_exact(model, layer, pixels)
    assert len(engine.split.region) > 1  # the slices passed the probe


def test_cnn_with_a_2d_flatten_and_the_lab_badnet_every_step_exact():
    torch.manual_seed(0)
    x = torch.randn(200, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    cnn = SmallCNN().eval()
    centre_head(cnn, cnn.fc2, x)
    assert_every_step_exact(cnn, "conv2", x)
    torch.manual_seed(0)
    lab = BadNet(20).eval()
    x = torch.rand(80, 3, 55, 47, generator=torch.Generator().manual_seed(3)) * 255
    engine = assert_every_step_exact(lab, "conv_2", x)
    assert [n.name for n in engine.split.frontier] == ["pool_2"]


def test_a_slice_op_that_differs_from_the_full_op_is_not_used(pixels, monkeypatch):
    """Where the probe finds that one channel alone does not give the full op's bits, the engine runs
    everything after the cut per step, and the labels still equal the full forward's."""
    real = generic._slice_op

    def off_by_an_ulp(gm, node, values, skips, channel):
        out = real(gm, node, values, skips, channel)
        return torch.nextafter(out, torch.full_like(out, float("inf"))) if node.name == "layer4_1_bn2" else out

    monkeypatch.setattr(generic, "_slice_op", off_by_an_ulp)
    model = resnet(4, seed=3)
    engine = assert_every_step_exact(model, "layer4.1.conv2", pixels)
    assert [n.name for n in engine.split.region] == ["layer4_1_conv2"]


def test_ranking_point_rules_and_rank_on(pixels):
    cnn = SmallCNN().eval()
    x = torch.randn(8, 1, 28, 28)
    assert prepare(cnn, x, "conv2").rank_on == "pool2"  # through one activation module
    assert prepare(cnn, x, "conv1").rank_on == "conv1"  # F.relu between conv1 and pool1: no module, no pool
    assert prepare(cnn, x).layer == "pool2"  # by default the map its flatten reads (issue 31: test_default_layer.py)
    direct = nn.Sequential(nn.Conv2d(1, 4, 3), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 13 * 13, 3)).eval()
    assert prepare(direct, x, "0").rank_on == "1"
    model = resnet(4)
    assert prepare(model, pixels[:4], "layer4.1.conv2").rank_on == "layer4.1.conv2"  # bn2 is no pool
    assert prepare(BadNet(5), torch.rand(2, 3, 55, 47) * 255, "conv_3").rank_on == "pool_3"


def test_rank_on_ranks_by_that_layers_mean_output(pixels):
    model = resnet(4)
    y = model(pixels).argmax(1)
    result = tb.prune_sweep(model, (pixels, y), (pixels[:50], y[:50]), layer="layer4.1.conv2", rank_on="layer4.1.bn2",
                            max_steps=3)
    seen = []
    handle = model.layer4[1].bn2.register_forward_hook(lambda _m, _i, out: seen.append(out.detach().clone()))
    with torch.inference_mode():
        model(pixels)
    handle.remove()
    expected = channel_scores(seen[0])
    assert np.array_equal(result.sweep.scores, expected)
    assert result.sweep.order == [int(c) for c in np.argsort(expected, kind="stable")]
    assert result.sweep.steps == 3 and result.context["model"]["rank_on"] == "layer4.1.bn2"
    default = tb.prune_sweep(model, (pixels, y), (pixels[:50], y[:50]), layer="layer4.1.conv2", max_steps=1)
    assert not np.array_equal(default.sweep.scores, expected)  # ranked on the conv's own output instead
    assert default.sweep.steps == 1


def test_untraceable_model_runs_a_full_forward_per_step_and_says_so_once():
    torch.manual_seed(0)
    model = Untraceable().eval()
    x = torch.randn(120, 1, 28, 28, generator=torch.Generator().manual_seed(4))
    centre_head(model, model.fc2, x)
    y = model(x).argmax(1)
    lines: list[str] = []
    result = tb.prune_sweep(model, (x, y), (x[:40], y[:40]), log=lines.append)
    assert len(lines) == 1 and "torch.fx cannot trace" in lines[0] and "full forward per step" in lines[0]
    net = result.sweep.net
    assert result.sweep.steps == 12 == net.channels  # --max-steps defaults to all of the layer's channels
    accuracy = [100.0 * int((reference_labels(net, x, result.sweep.order[:k]) == y).sum()) / 120 for k in range(13)]
    assert result.sweep.metrics[tb.Column("pruned", "valid", "clean_acc")] == accuracy


def test_api_sweep_counts_equal_the_reference(pixels, tmp_path):
    model = resnet(4, seed=5)
    y = model(pixels).argmax(1)
    y[::4] = (y[::4] + 1) % 10
    result = tb.prune_sweep(model, (pixels, y), (pixels[:100], torch.zeros(100, dtype=torch.long)), thresholds=(2, 10))
    net = result.sweep.net
    assert net.layer == "layer4" and net.rank_on == "avgpool"  # the default: the map the global pooling reads
    assert result.sweep.steps == 32 and net.num_classes == 10
    clean = result.sweep.metrics[tb.Column("pruned", "valid", "clean_acc")]
    for k in (0, 1, 7, 32):
        assert clean[k] == 100.0 * int((reference_labels(net, pixels, result.sweep.order[:k]) == y).sum()) / 160
    written = result.save(tmp_path / "out")
    assert "sweep.csv" in written and "summary.json" in written
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert {"model", "inputs", "rule", "versions", "steps", "images", "ranking", "original", "thresholds"} <= set(summary)
    assert summary["model"]["layer"] == "layer4" and summary["model"]["num_classes"] == 10
    header = (tmp_path / "out" / "sweep.csv").read_text().splitlines()[0]
    assert header == "step,channel,fraction_pruned,valid_clean_acc,valid_asr,goodnet_valid_clean_acc,goodnet_valid_asr," \
                     "goodnet_valid_detection_rate,goodnet_valid_false_alarm_rate"


def test_pruned_goodnet_and_save_load_of_b_prime(pixels, tmp_path):
    model = resnet(4, seed=5)
    y = model(pixels).argmax(1)
    y[::3] = (y[::3] + 1) % 10
    result = tb.prune_sweep(model, (pixels, y), (pixels[:100], torch.zeros(100, dtype=torch.long)), thresholds=(2,))
    t = result.threshold(2)
    assert t.reached
    b2 = result.pruned(2)
    assert isinstance(b2, MaskedNet) and b2.pruned_channels == sorted(t.pruned_channels)
    net = result.sweep.net
    with torch.inference_mode():
        assert torch.equal(b2(pixels).argmax(1), reference_labels(net, pixels, t.pruned_channels))
        g = tb.GoodNet(model, b2).eval()
        labels = g(pixels)
        assert g.detected_class == 10 and g.num_classes == 11
        assert torch.equal(labels, combine(model(pixels).argmax(1), b2(pixels).argmax(1), 10))
        assert int((labels == 10).sum()) > 0  # B and B' disagree somewhere
    result.save(tmp_path / "out")
    path = tmp_path / "out" / "models" / "X=2" / "pruned.pt"
    payload = torch.load(path, weights_only=True)
    assert payload["layer"] == "layer4" and payload["architecture"]["kind"] == "torch"
    assert payload["architecture"]["class"].endswith("ResNet") and payload["metadata"]["x"] == 2.0
    loaded = load_masked(path, ResNet(10, 4))
    with torch.inference_mode():
        assert torch.equal(loaded(pixels), b2(pixels))
    tb.GoodNet(model, loaded)  # it records B's fingerprint: paired
    with pytest.raises(PairingError):
        tb.GoodNet(resnet(4, seed=6), loaded)
    with pytest.raises(tb.BadInputError, match="build that module in code"):
        load_masked(path)
    # a crafted file whose record names code to run (with its kwargs): refused unless the caller names that code
    payload["architecture"] = {"kind": "arch", "arch": "os:system", "arch_kwargs": json.dumps({"command": f"touch {tmp_path / 'ran'}"})}
    torch.save(payload, tmp_path / "crafted.pt")
    with pytest.raises(tb.BadInputError, match=r"holds a B' of --arch os:system; a file never chooses the code that runs"):
        load_masked(tmp_path / "crafted.pt")
    with pytest.raises(tb.BadInputError, match=r"holds a B' of --arch os:system, not of builtins:print"):
        load_masked(tmp_path / "crafted.pt", arch="builtins:print")
    assert not (tmp_path / "ran").exists()


def test_finetuning_a_generic_b_prime(pixels):
    model = resnet(4, seed=5)
    y = model(pixels).argmax(1)
    y[::3] = (y[::3] + 1) % 10
    config = tb.FinetuneConfig(epochs=1, patience=1, tolerance=100.0, batch_size=64)
    result = tb.prune_sweep(model, (pixels, y), (pixels[:100], torch.zeros(100, dtype=torch.long)), thresholds=(2,),
                            finetune=config)
    tuned = result.finetuned[2.0].model
    before = result.pruned(2)
    assert isinstance(tuned, MaskedNet) and tuned.pruned_channels == before.pruned_channels
    old, new = before.net.state_dict(), tuned.net.state_dict()
    assert torch.equal(old["conv1.weight"], new["conv1.weight"])  # the first conv stays fixed (as the lab's conv_1)
    assert not torch.equal(old["layer1.0.conv1.weight"], new["layer1.0.conv1.weight"])  # every other layer trains
    assert not torch.equal(old["fc.weight"], new["fc.weight"])
    assert torch.equal(old["layer4.1.bn2.running_mean"], new["layer4.1.bn2.running_mean"])  # BN statistics frozen
    seen = []
    tuned.net.layer4.register_forward_hook(lambda _m, _i, out: seen.append(out))  # the default layer
    with torch.inference_mode():
        tuned(pixels[:8])
    assert bool((seen[0][:, before.pruned_channels] == 0).all())  # the pruned channels stay off


def test_bad_input_through_the_api(pixels):
    model = resnet(4)
    data = (pixels[:20], torch.zeros(20, dtype=torch.long))
    with pytest.raises(tb.BadInputError, match=r"no layer 'layer9'.*layer4\.1\.conv2"):
        tb.prune_sweep(model, data, data, layer="layer9")
    with pytest.raises(tb.BadInputError, match="no channel dimension"):
        tb.prune_sweep(model, data, data, layer="fc")
    with pytest.raises(tb.BadInputError, match="--rank-on"):
        tb.prune_sweep(model, data, data, layer="layer4.1.conv2", rank_on="layer3.1.conv2")
    small = (torch.randn(20, 1, 28, 28), torch.zeros(20, dtype=torch.long))
    with pytest.raises(tb.BadInputError, match="returns a tuple of 2 outputs"):
        tb.prune_sweep(TwoOutputs().eval(), small, small)
    with pytest.raises(tb.BadInputError, match=r"returns a dict \(logits, features\).*wrap it .* returns the logits alone"):
        tb.prune_sweep(DictOutput().eval(), small, small)
    with pytest.raises(tb.BadInputError, match="2 inputs"):
        tb.prune_sweep(TwoInputs().eval(), small, small)
    with pytest.raises(tb.BadInputError, match="outside"):
        tb.prune_sweep(model, (pixels[:20], torch.full((20,), 10)), data)  # label 10 of a 10-class model


def test_bad_input_through_the_cli_writes_nothing(cli, lab_files, lab3_path, tmp_path):
    out = tmp_path / "out"
    line = assert_one_line_error(cli(*sweep_args(lab_files, lab3_path, out, "--layer", "conv_9")), "--layer", "conv_9")
    assert "conv_1, conv_2, conv_3, conv_4" in line
    assert_one_line_error(cli(*sweep_args(lab_files, lab3_path, out, "--layer", "fc_1")), "--layer", "no channel dimension")
    assert_one_line_error(cli(*sweep_args(lab_files, lab3_path, out, "--layer", "conv_3", "--rank-on", "pool_2")),
                          "--rank-on", "(N, 60, H, W) or (N, 60)")
    assert not out.exists()


def test_cli_sweeps_another_layer_of_the_lab_net(cli, lab_files, lab3_path, tmp_path):
    """--layer conv_2 on the lab net runs the generic engine: the same files and columns, conv_2's 40 channels."""
    out = tmp_path / "out"
    code, stdout, err = cli(*sweep_args(lab_files, lab3_path, out, "--layer", "conv_2", "--max-steps", "5", "--no-plot"))
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 5 and len(summary["ranking"]["order"]) == 40
    assert summary["model"]["layer"] == "conv_2" and summary["model"]["rank_on"] == "pool_2"
    lab = (Path(out).parent / "lab")
    assert cli(*sweep_args(lab_files, lab3_path, lab, "--max-steps", "5", "--no-plot"))[0] == 0
    assert (out / "sweep.csv").read_text().splitlines()[0] == (lab / "sweep.csv").read_text().splitlines()[0]
    assert "B' clean" in stdout


def test_keras_f_through_the_generic_engine(real_dir):
    """MNIST F (a Keras-origin KerasGraphNet): conv_2 by default, ranked on pool_2, every step exact."""
    from mnist_like import mnist_like_digits

    net = tb.load_model(real_dir / "models" / "F_mnist_all_all_bd_net.h5")
    x, y = mnist_like_digits(150)
    x = torch.as_tensor(np.asarray(x)).float().reshape(-1, *net.input_shape)
    engine = assert_every_step_exact(net, "conv_2", x)
    assert engine.net.rank_on == "pool_2" and [n.name for n in engine.split.frontier] == ["pool_2"]
    result = tb.prune_sweep(net, (x, torch.as_tensor(np.asarray(y))), (x[:50], torch.zeros(50, dtype=torch.long)), max_steps=4)
    assert result.sweep.net.layer == "conv_2" and result.sweep.steps == 4 and result.context["model"]["num_classes"] == 10


def test_keras_origin_b_prime_saved_as_pt_and_h5(real_dir, tmp_path):
    """A KerasGraphNet's B': pruned.pt rebuilds from its recorded Keras config (no module given, no code run), and
    pruned.h5 (the pruned channels' kernel and bias zeroed) loads back with B''s labels."""
    from mnist_like import mnist_like_digits

    net = tb.load_model(real_dir / "models" / "F_mnist_all_all_bd_net.h5")
    x, y = mnist_like_digits(120)
    x, y = torch.as_tensor(np.asarray(x)).float().reshape(-1, *net.input_shape), torch.as_tensor(np.asarray(y))
    result = tb.prune_sweep(net, (x, y), (x[:40], torch.zeros(40, dtype=torch.long)), thresholds=(2,))
    assert result.threshold(2).reached
    written = result.save(tmp_path / "out")
    assert {"models/X=2/pruned.pt", "models/X=2/pruned.h5"} <= set(written)
    b2 = result.pruned(2)
    loaded = load_masked(tmp_path / "out" / "models" / "X=2" / "pruned.pt")
    h5 = tb.load_model(tmp_path / "out" / "models" / "X=2" / "pruned.h5")
    with torch.inference_mode():
        assert type(loaded.net).__name__ == "KerasGraphNet" and torch.equal(loaded(x), b2(x))
        assert torch.equal(h5(x).argmax(1), b2(x).argmax(1))
