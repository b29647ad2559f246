"""Issue 31, item 4: the pruning order of exactly equal scores is channel-index order, on every CPU.

Channels that score exactly 0 (dark on every clean validation image) are common and are what Fine-Pruning prunes
first. numpy's default argsort orders equal values by its CPU-specific kernel (AVX-512, AVX2, baseline), so the
order, and with it every later step, changed with the CPU. Both engines (the lab's and the generic one) are run
here in child processes under numpy's default kernels and with its AVX2 / AVX-512 kernels switched off
(NPY_DISABLE_CPU_FEATURES): the same order, dark channels first in index order.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from torch_badnet.engine.pruning import pruning_order

DISABLE = "X86_V4 AVX512_ICL AVX512_SPR AVX2 FMA3 X86_V3"  # numpy's dispatched kernels off: its baseline sort
DEAD_GENERIC = [1, 2, 4, 5, 7, 8, 10, 11, 13, 14, 16, 17, 19, 20, 22, 23, 25, 26, 28, 29, 31, 33, 40, 41]
DEAD_LAB = [0, 3, 4, 6, 9, 11, 12, 15, 18, 20, 21, 24, 27, 30, 33, 36, 37, 39, 42, 45, 48, 51, 54, 57]

CHILD = r"""
import json, sys
import torch
from torch import nn
import torch_badnet as tb
from torch_badnet.nets.badnet import BadNet

dead_generic, dead_lab = json.loads(sys.argv[1])

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 48, 3)
        self.act = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(48 * 7 * 7, 5)

    def forward(self, x):
        return self.fc(self.pool(self.act(self.conv(x))).flatten(1))

torch.manual_seed(0)
net = Net().eval()
with torch.no_grad():
    net.conv.bias[dead_generic] = -1e3  # dark after the ReLU on every input: a score of exactly 0
x = torch.rand(64, 3, 16, 16)
y = net(x).argmax(1)
generic = tb.prune_sweep(net, (x[:32], y[:32]), (x[32:], y[32:]), layer="conv", thresholds=(50,)).sweep

bd = BadNet(num_classes=7).eval()
with torch.no_grad():
    bd.conv_3.bias[dead_lab] = -1e3
px = torch.rand(40, 3, 55, 47) * 255
py = bd(px).argmax(1)
lab = tb.prune_sweep(bd, (px[:20], py[:20]), (px[20:], py[20:]), thresholds=(50,)).sweep
print(json.dumps({name: {"order": s.order, "scores": [float(v) for v in s.scores]} for name, s in (("generic", generic), ("lab", lab))}))
"""


def orders(disable: str | None) -> dict[str, list[int]]:
    env = {k: v for k, v in os.environ.items() if k != "NPY_DISABLE_CPU_FEATURES"}
    if disable:
        env["NPY_DISABLE_CPU_FEATURES"] = disable
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps([DEAD_GENERIC, DEAD_LAB])], capture_output=True,
                          text=True, env=env, cwd=Path(__file__).parent, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_equal_scores_in_index_order() -> None:
    scores = np.zeros(64, dtype=np.float32)
    scores[::3] = np.arange(22, dtype=np.float32) + 1
    zeros = [c for c in range(64) if c % 3]
    assert pruning_order(scores) == zeros + list(range(0, 64, 3))


def test_both_engines_same_order_on_any_numpy_kernel() -> None:
    """Dark channels (score exactly 0: the biased-off ones and any the random weights leave dark) first, by index, in
    the generic engine and the lab's; the same whole order with numpy's AVX2 / AVX-512 sorts switched off."""
    default, baseline = orders(None), orders(DISABLE)
    for engine, dead, channels in (("generic", DEAD_GENERIC, 48), ("lab", DEAD_LAB, 60)):
        order, scores = default[engine]["order"], default[engine]["scores"]
        zeros = [c for c in range(channels) if scores[c] == 0.0]
        assert set(dead) <= set(zeros), engine
        assert order[: len(zeros)] == zeros, engine
        assert sorted(order) == list(range(channels)), engine
    assert baseline == default
