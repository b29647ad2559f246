"""Load a BadNet from any supported model file: .pt (checkpoint), .h5/.keras (Keras), .onnx."""

from __future__ import annotations

import os

from torch_badnet.checkpoint import LoadedModel, load_checkpoint
from torch_badnet.errors import BadInputError
from torch_badnet.files import check_is_file, file_sha256

KERAS_SUFFIXES = (".h5", ".hdf5", ".keras")


def load_model(path: str | os.PathLike[str]) -> LoadedModel:
    """Dispatch on the file suffix; every path ends in a validated, eval-mode BadNet."""
    path = check_is_file(path)
    suffix = path.suffix.lower()
    if suffix == ".pt" or suffix == ".pth":
        return load_checkpoint(path)
    if suffix in KERAS_SUFFIXES:
        from .keras_h5 import load_keras

        model, source_format = load_keras(path)
        return LoadedModel(model, str(path), source_format, file_sha256(path))
    if suffix == ".onnx":
        from .onnx_import import load_onnx

        model = load_onnx(path)
        return LoadedModel(model, str(path), "onnx", file_sha256(path))
    raise BadInputError(path, f"unknown model file type '{suffix}' (expected .h5, .keras, .pt or .onnx)")
