"""Loading B and B' from any supported model file, with the model's input scale resolved.

The converter (`torch_badnet.convert`) is imported only here, inside the functions, on use.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from ..errors import BadInputError
from .badnet import BadNet
from .checkpoint import LoadedModel

TORCH_SOURCES = ("onnx-graph", "pt2", "arch", "pickle")  # formats of a torch module that takes its data as given


def load_model_file(path: str | os.PathLike[str], rescale: str | float | None = None,
              log: Callable[[str], None] | None = None, mean: Sequence[str | float] | None = None,
              std: Sequence[str | float] | None = None, pruned: str | os.PathLike[str] | None = None,
              arch: str | None = None, arch_kwargs: str | dict | None = None, allow_pickle: bool = False,
              goodnet_ok: bool = False) -> LoadedModel:
    """Any supported model file -> LoadedModel whose net has its input scale set: the file's own record, else
    `rescale` (1, "1/255" or a positive float), else the record of `pruned` (the B' file the model is used with:
    the preprocessing of its sweep), else a published file's known scale, else 1; and, for a Keras graph model,
    its per-channel `mean` / `std` likewise. A flag contradicting a record is a BadInputError. A recognized
    published file, or a preprocessing taken from `pruned`, is announced through `log` (one line).
    `arch` / `arch_kwargs` / `allow_pickle`: see `convert.read_model_file`; such a torch module (and any ONNX graph
    or .pt2 program) takes its data as given: a --rescale other than 1, a --mean or a --std for it is refused in
    one line. A GoodNet graph (`export --pruned`'s .onnx) is refused unless `goodnet_ok` (eval, classify)."""
    from ..convert import read_model_file  # lazy: the core never imports the converter at import time
    from .goodnet import answers_labels, goodnet_graph_refusal
    from .pruned_record import read_pruned_record
    from .rescale import (
        FLAG,
        MEAN_FLAG,
        STD_FLAG,
        parse_channel_values,
        parse_rescale,
        pruned_record_note,
        resolve_input_scale,
        resolve_normalization,
    )

    flag = parse_rescale(str(rescale)) if rescale is not None else None
    flags = (parse_channel_values(mean, MEAN_FLAG), parse_channel_values(std, STD_FLAG))
    loaded = read_model_file(path, arch, arch_kwargs, allow_pickle)
    if answers_labels(loaded.model) and not goodnet_ok:
        raise goodnet_graph_refusal(path)
    if loaded.source_format in TORCH_SOURCES:
        given = [name for name, value in ((FLAG, flag if flag != 1.0 else None), (MEAN_FLAG, flags[0]), (STD_FLAG, flags[1]))
                 if value is not None]
        if given:
            raise BadInputError(given[0], f"{path} is a torch model that takes its data as given; put the scaling or "
                                          "normalisation in the model itself")
        return loaded
    record = read_pruned_record(pruned) if pruned is not None else None  # (nets.pruned_record)
    notes = [resolve_input_scale(loaded.model, path, loaded.input_scale, flag, record),
             resolve_normalization(loaded.model, path, (loaded.mean, loaded.std), flags, record)]
    if record is not None and loaded.input_scale is None and (loaded.mean, loaded.std) == (None, None):
        notes.append(pruned_record_note(record, (flag, *flags) if hasattr(loaded.model, "mean") else (flag, 0, 0)))
    for note in notes:
        if note and log:
            log(note)
    return loaded


def load_pruned_file(path: str | os.PathLike[str], model: BadNet, model_path: str | os.PathLike[str] | None = None,
                     allow_unpaired: bool = False, log: Callable[[str], None] | None = None) -> LoadedModel:
    """B' for `model` (B, read from `model_path`): as many classes as B, B's input scale (a file recording
    another is an error) and, unless `allow_unpaired`, derived from B (pairing.check_pair): a B' recording
    another B's weights fingerprint is a BadInputError naming both files; an unverifiable pair (no fingerprint,
    weights beyond zeroed conv_3 channels differ) is one warning line through `log`, as is a B' with no pruned
    channel (`sanity.unpruned_warning`)."""
    from ..convert import read_model_file
    from ..defense.finetuning import effective_mask
    from ..defense.sanity import unpruned_warning
    from ..engine.pruning import pruned_channels
    from .goodnet import answers_labels, goodnet_graph_refusal
    from .pairing import check_pair, require_derived
    from .rescale import match_input_scale

    loaded = read_model_file(path)
    pruned = loaded.model.eval()
    if answers_labels(pruned):
        raise goodnet_graph_refusal(path)
    if not isinstance(pruned, BadNet):  # e.g. a Keras graph's pruned.h5 beside a lab-architecture --model
        given = f"--model {model_path}" if model_path else "--model"
        raise BadInputError(path, f"holds a {type(pruned).__name__}, but {given} reads as the lab BadNet: give --model "
                                  "the file its sweep read (the pair must be of one architecture)")
    if pruned.num_classes != model.num_classes:
        raise BadInputError(path, f"has {pruned.num_classes} classes but the model has {model.num_classes}")
    match_input_scale(pruned, path, loaded.input_scale, model)
    unpruned = unpruned_warning(path, len(pruned_channels(effective_mask(pruned))))
    if unpruned and log:
        log(unpruned)
    if not allow_unpaired:
        require_derived(path, f"--model {model_path}" if model_path else "--model", lambda: check_pair(model, pruned), log,
                        "it records no fingerprint, and its weights differ from the model's beyond zeroed conv_3 channels")
    return loaded


def load_model(path: str | os.PathLike[str], rescale: str | float | None = None,
               mean: Sequence[float] | None = None, std: Sequence[float] | None = None, arch: str | None = None,
               arch_kwargs: dict | str | None = None, allow_pickle: bool = False) -> BadNet:
    """Load B (or B') from a Keras .h5/.hdf5/.keras file, a torch-badnet .pt checkpoint or an .onnx graph.

    Returns an eval-mode `BadNet` (logits out; input (N, 3, 55, 47) pixels 0..255) with `net.source` telling
    the file's path, sha256 and format. A Keras model of another architecture comes back as a `KerasGraphNet`
    (logits out; input (N, C, H, W) pixels as its data files hold them, its preprocessing inside: `input_scale`,
    then per-channel `mean` / `std`, which a published file's defaults set, e.g. CIFAR-10 B's).
    `rescale` is the model's input scale, as the CLI's --rescale: 1 (the lab's raw pixels), "1/255" (the
    CSAW-HackML-2020 competition's BadNets) or a positive float; by default the scale the file records, else a
    published file's known scale, else 1 (`net.input_scale`). Any other torch model: an ONNX graph, a torch.export
    program (.pt2), `arch="mypkg.models:resnet18"` (with `arch_kwargs`) and a state_dict file (.pt, .pth,
    .safetensors), or with `allow_pickle=True` a whole pickled model (docs/models.md). No code stored in the file is
    ever run (except, with `allow_pickle`, the pickle's). Bad files
    raise `torch_badnet.errors.BadInputError` with a one-line reason.

    >>> import torch_badnet as tb
    >>> bd = tb.load_model("bd_net.h5")
    >>> bd(tb.load_images(["face.png"])).argmax(1)
    """
    return load_model_file(path, rescale, mean=mean, std=std, arch=arch, arch_kwargs=arch_kwargs,
                           allow_pickle=allow_pickle).model.eval()

