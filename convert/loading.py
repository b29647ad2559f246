"""Load a BadNet from any supported model file: .pt (checkpoint), .h5/.keras (Keras), .onnx."""

from __future__ import annotations

import os
from pathlib import Path

from torch_badnet.data.files import check_is_file, file_sha256
from torch_badnet.errors import BadInputError
from torch_badnet.nets.badnet import BadNet
from torch_badnet.nets.checkpoint import LoadedModel, load_checkpoint

KERAS_SUFFIXES = (".h5", ".hdf5", ".keras")


def read_model_file(path: str | os.PathLike[str], arch: str | None = None, arch_kwargs: str | dict | None = None,
                    allow_pickle: bool = False) -> LoadedModel:
    """Dispatch on the file suffix; every path ends in a validated, eval-mode BadNet (the lab architecture) or,
    for a Keras file of another architecture, a KerasGraphNet; an ONNX graph of another architecture, a .pt2
    program, `arch` (module:callable, called with `arch_kwargs`) with a state_dict file, or (only with
    `allow_pickle`) a whole pickled torch model give that torch module (docs/models.md).

    `input_scale` of the result is the scale the file records (None: no record; see torch_badnet.nets.rescale).
    """
    from .torch_sources import KWARGS_FLAG, explain_torch_file, load_arch

    path = check_is_file(path)
    suffix = path.suffix.lower()
    if arch is not None:
        return load_arch(path, arch, arch_kwargs)
    if arch_kwargs:
        raise BadInputError(KWARGS_FLAG, "needs --arch (the module:callable it is passed to)")
    if suffix == ".pt2":
        from .export_program import load_pt2

        return load_pt2(path)
    if suffix == ".safetensors":
        from torch_badnet.nets.pt_files import ARCH_ADVICE

        raise BadInputError(path, f"is a state_dict (weights without their architecture): {ARCH_ADVICE}")
    if suffix == ".pt" or suffix == ".pth":
        try:
            return load_checkpoint(path)
        except BadInputError:
            explained = explain_torch_file(path, allow_pickle)
            if explained is None:
                raise
            return explained
    if suffix in KERAS_SUFFIXES:
        from .keras_h5 import load_keras

        try:
            model, source_format, scale = load_keras(path)
        except BadInputError:
            _weights_only_hint(path)
            raise
        mean, std = (getattr(model, "mean", None), getattr(model, "std", None))  # what the file records
        return LoadedModel(model, str(path), source_format, file_sha256(path), input_scale=scale, mean=mean, std=std)
    if suffix == ".onnx":
        from .onnx_import import load_onnx_any

        model = load_onnx_any(path)
        if not isinstance(model, BadNet):
            return LoadedModel(model, str(path), "onnx-graph", file_sha256(path))
        scale = None if model.input_scale == 1.0 else model.input_scale  # a Mul/Div of the input: the graph's record
        return LoadedModel(model, str(path), "onnx", file_sha256(path), input_scale=scale)
    raise BadInputError(path, f"unknown model file type '{suffix}' (expected .h5, .keras, .pt, .pth, .pt2, .onnx, "
                              "or a state_dict .safetensors with --arch)")


def _weights_only_hint(path: Path) -> None:
    """A published weights-only file of another architecture (A, B, C, F's bd_weights.h5) cannot be built: say
    so, and which file holds its model (one BadInputError)."""
    from torch_badnet.nets.known_models import KNOWN_OTHER_MODELS, REPOSITORY
    from torch_badnet.nets.rescale import git_blob_id

    known = KNOWN_OTHER_MODELS.get(git_blob_id(path))
    if known and "weights" in known[0]:
        full = known[0].split(" ")[0].rsplit("/", 1)[0] + "/bd_net.h5"
        raise BadInputError(path, f"is {known[0]} of {REPOSITORY}: weights only, of an architecture other than the lab's "
                                  f"(its config is in {full}): load that full model instead") from None
