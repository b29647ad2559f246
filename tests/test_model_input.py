"""Issue 31, items 7, 8, 11, 12: what a researcher's own model and data become in the generic sweep, never silently.

- 7: a layer whose output is not (N, C, H, W) (a transformer-like (N, tokens, dim)) is refused in one line, not
  pruned along its token positions;
- 8: uint8 pixels given to a float32 model, and a model in training mode: the sweep says what it does, in one line
  each (the caller's model keeps its mode);
- 11: a float64 or float16 model gets its data in its own dtype (said in one line) and every step equals a full
  forward of a copy of the model in that dtype with our own mask hook;
- 12: channels-last (NHWC) numpy data for a model without `input_shape`: one line naming the shape.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import torch_badnet as tb
from torch_badnet.errors import BadInputError


class Tokens(nn.Module):
    """conv -> (N, tokens, dim) -> a Linear over dim ('proj', the (N, tokens, dim) layer) -> mean over tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2)
        self.proj = nn.Linear(8, 8)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.conv(x).flatten(2).transpose(1, 2)  # (N, 49, 8)
        return self.head(self.proj(tokens).mean(1))


class Small(nn.Module):
    """conv-bn-relu-pool twice, flatten, Linear; `uint8_scale`: rescales uint8 input only (x / 255), as some do."""

    def __init__(self, uint8_scale: bool = False) -> None:
        super().__init__()
        self.uint8_scale = uint8_scale
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2))
        self.fc = nn.Linear(16 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8 and self.uint8_scale:
            x = x.float() / 255
        return self.fc(self.features(x).flatten(1))


def data(n: int = 120, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 16, 16, generator=g), torch.randint(0, 5, (n,), generator=g)


def sets(model: nn.Module, x: torch.Tensor) -> tuple[tuple, tuple]:
    """A clean set labelled by the model itself (some labels changed) and a 'poisoned' one, halves of x."""
    with torch.no_grad():
        y = model(x).argmax(1)
    y[::4] = (y[::4] + 1) % 5
    half = len(x) // 2
    return (x[:half], y[:half]), (x[half:], torch.zeros(len(x) - half, dtype=torch.long))


def reference_clean_accuracy(model: nn.Module, layer: str, order: list[int], x: torch.Tensor, y: torch.Tensor) -> list[float]:
    """Per step k: the accuracy of a full forward of a copy of `model`, with our own hook zeroing the first k channels
    of `order` in `layer`'s output (in the model's dtype throughout)."""
    copy_ = copy.deepcopy(model).eval()
    off: list[int] = []
    def zero(_m, _i, out):
        out = out.clone()
        out[:, off] = 0
        return out
    handle = copy_.get_submodule(layer).register_forward_hook(zero)
    accuracies = []
    with torch.inference_mode():
        for k in range(len(order) + 1):
            off[:] = order[:k]
            accuracies.append(100.0 * float((copy_(x).argmax(1) == y).float().mean()))
    handle.remove()
    return accuracies


def test_token_output_is_refused() -> None:
    """Item 7: a (N, tokens, dim) output would have its token positions pruned; one line instead."""
    torch.manual_seed(0)
    model = Tokens().eval()
    x = torch.rand(40, 3, 16, 16)
    y = model(x).argmax(1)
    with pytest.raises(BadInputError) as caught:
        tb.prune_sweep(model, (x[:20], y[:20]), (x[20:], y[20:]), layer="proj")
    message = str(caught.value)
    assert "\n" not in message and "'proj'" in message and "(4, 49, 8)" in message and "(N, C, H, W)" in message


def test_uint8_data_and_training_mode_are_said() -> None:
    """Item 8: uint8 pixels reach a float32 model as float32 values 0..255 (a model that rescales only uint8 input
    does not rescale them): one note line says so; a model in training mode is run in eval mode, said in one line,
    and the caller's model stays in training mode."""
    torch.manual_seed(1)
    model = Small(uint8_scale=True).train()
    x = (torch.rand(80, 3, 16, 16) * 255).to(torch.uint8)
    y = torch.randint(0, 5, (80,))
    lines: list[str] = []
    tb.prune_sweep(model, (x[:40], y[:40]), (x[40:], y[40:]), layer="features.4", log=lines.append)
    assert model.training
    notes = [line for line in lines if line.startswith("note:")]
    assert any("<clean_valid>" in n and "uint8 pixels are given to the model as float32" in n for n in notes), lines
    assert any("<poisoned_valid>" in n and "uint8" in n for n in notes), lines
    assert any("training mode" in n and "eval mode" in n for n in notes), lines
    lines.clear()
    tb.prune_sweep(model.eval(), (x[:40].float(), y[:40]), (x[40:].float(), y[40:]), layer="features.4", log=lines.append)
    said = [line for line in lines if "pixels are given" in line or "training mode" in line or "dtype" in line]
    assert not said, lines  # float32 data, eval mode: nothing to say (fx cannot trace the `if`: that note stays)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_model_dtype(dtype: torch.dtype) -> None:
    """Item 11: a float64 / float16 model is fed its own dtype (one note line), and every step's clean accuracy
    equals a full forward in that dtype with our own mask hook."""
    torch.manual_seed(2)
    model = Small().eval().to(dtype)
    x, _ = data()
    clean, poisoned = sets(model, x.to(dtype))
    lines: list[str] = []
    result = tb.prune_sweep(model, (clean[0].float(), clean[1]), (poisoned[0].float(), poisoned[1]), layer="features.4",
                            log=lines.append)
    name = str(dtype).removeprefix("torch.")
    assert any(line.startswith("note:") and name in line for line in lines), lines
    order = result.sweep.order
    ours = result.sweep.metrics[tb.Column("pruned", "valid", "clean_acc")]
    assert list(ours) == pytest.approx(reference_clean_accuracy(model, "features.4", order, clean[0].to(dtype), clean[1]),
                                       abs=0)


def test_nhwc_numpy_data_is_named() -> None:
    """Item 12: NHWC numpy pixels for a model that takes (N, C, H, W) and has no input_shape: one line with the shape."""
    torch.manual_seed(3)
    model = Small().eval()
    x, y = data(60)
    nhwc = np.ascontiguousarray(x.permute(0, 2, 3, 1).numpy())
    with pytest.raises(BadInputError) as caught:
        tb.prune_sweep(model, (nhwc[:30], y[:30].numpy()), (nhwc[30:], y[30:].numpy()))
    message = str(caught.value)
    assert "\n" not in message and "<clean_valid>" in message and "(30, 16, 16, 3)" in message
    assert "(30, 3, 16, 16)" in message
