"""`convert --verify`: run the source in real Keras and the converted file in PyTorch on the same inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from torch_badnet.errors import BadInputError
from torch_badnet.nets.badnet import INPUT_SHAPE, BadNet

from .keras_model import load_into_keras, to_keras
from .loading import KERAS_SUFFIXES, read_model_file

VERIFY_INPUTS = 256
VERIFY_SEED = 0


def verify_against_keras(source_model: BadNet, src: Path, converted: Path) -> str:
    """Compare Keras (the source file loaded by Keras itself, or the source weights) with the converted file.

    Returns a one-line report; raises BadInputError if any predicted class differs.
    """
    keras_model = load_into_keras(str(src)) if src.suffix.lower() in KERAS_SUFFIXES else to_keras(source_model)
    x = np.random.default_rng(VERIFY_SEED).uniform(0, 255, size=(VERIFY_INPUTS, *INPUT_SHAPE)).astype(np.float32)
    keras_input = source_model.scale_input(torch.from_numpy(x)).numpy()  # Keras takes pixels * the input scale
    expected = np.asarray(keras_model.predict_on_batch(keras_input.transpose(0, 2, 3, 1)), dtype=np.float64)
    with torch.no_grad():
        got = read_model_file(converted).model(torch.from_numpy(x)).softmax(1).double().numpy()
    diff = float(np.abs(expected - got).max())
    same = int((expected.argmax(1) == got.argmax(1)).sum())
    if same != VERIFY_INPUTS:
        raise BadInputError(converted, f"differs from Keras: {VERIFY_INPUTS - same} of {VERIFY_INPUTS} classes differ "
                                       f"(max |softmax difference| {diff:.2e})")
    return f"verified against Keras on {VERIFY_INPUTS} random inputs: classes identical, max |softmax difference| {diff:.2e}"
