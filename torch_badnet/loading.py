"""`load_model`: any supported model file -> an eval-mode BadNet (the converter is imported only here, on use)."""

from __future__ import annotations

import os

from .model import BadNet


def load_model(path: str | os.PathLike[str]) -> BadNet:
    """Load B (or B') from a Keras .h5/.hdf5/.keras file, a torch-badnet .pt checkpoint or an .onnx graph.

    Returns an eval-mode `BadNet` (logits out; input (N, 3, 55, 47) pixels 0..255) with `net.source` telling
    the file's path, sha256 and format. No code stored in the file is ever run. Bad files raise
    `torch_badnet.errors.BadInputError` with a one-line reason.

    >>> import torch_badnet as tb
    >>> bd = tb.load_model("bd_net.h5")
    >>> bd(tb.load_images(["face.png"])).argmax(1)
    """
    from .convert.loading import load_model as load  # lazy: the core never imports the converter at import time

    return load(path).model.eval()
