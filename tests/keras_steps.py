"""The lab's pruning procedure, literally, in Keras: zero a Conv2D's kernel[..., c] and bias[c] channel by channel
and predict every set again (tests/test_keras_reference.py on lab3, tests/test_keras_procedure.py on F and a residual
model)."""

from __future__ import annotations

from typing import Any

import numpy as np


def keras_procedure(model: Any, layer: str, order: list[int], sets: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """{set: (len(order) + 1, n) labels}, row k after zeroing kernel[..., c] and bias[c] of `layer` for the first k
    channels of `order` (cumulatively, with set_weights). `sets`: NHWC inputs as the model takes them, predicted as
    one batch per step (the same per-image results, a fraction of the calls)."""
    names = list(sets)
    everything = np.concatenate([sets[name] for name in names])
    bounds = np.cumsum([0] + [len(sets[name]) for name in names])
    conv = model.get_layer(layer)
    kernel, bias = conv.get_weights()
    steps = np.empty((len(order) + 1, len(everything)), dtype=np.int64)
    steps[0] = np.asarray(model.predict_on_batch(everything)).argmax(1)
    for step, channel in enumerate(order, start=1):
        kernel[..., channel] = 0
        bias[channel] = 0
        conv.set_weights([kernel, bias])
        steps[step] = np.asarray(model.predict_on_batch(everything)).argmax(1)
    return {name: steps[:, bounds[i] : bounds[i + 1]] for i, name in enumerate(names)}
