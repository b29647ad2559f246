"""torch-badnet: the Fine-Pruning defense against backdoored face classifiers (BadNets), in PyTorch.

The public API (names are imported lazily, so `torch-badnet --help` does not wait for torch):

    import torch_badnet as tb
    bd = tb.load_model("bd_net.h5")                      # eval-mode BadNet: .h5/.keras/.pt/.onnx
    result = tb.prune_sweep(bd, clean_valid="cl/valid.h5", poisoned_valid="bd/bd_valid.h5",
                            clean_test="cl/test.h5", poisoned_test="bd/bd_test.h5", thresholds=(2, 4, 10))
    result.save("results/")                              # the files `torch-badnet sweep --out results/` writes
    batch = tb.prune_batch("models.csv", "many/")        # every model of a manifest, as `torch-badnet batch`
    b4 = result.pruned(4)                                # B'_4 as a BadNet
    g = tb.GoodNet(bd, b4)                               # labels in [0, N]; N = backdoor detected
    x = tb.load_images(["face.png"])                     # (n, 3, 55, 47) float32 pixels 0..255
    run = tb.finetune(bd, b4, clean_valid="cl/valid.h5") # fine-pruning, as `torch-badnet finetune`
"""

from __future__ import annotations

import os
from importlib import import_module
from typing import Any

__version__ = "0.1.0"

# MKL's strict reproducibility mode: its GEMMs give the same bits on any number of threads (see
# nets/precision.py). MKL reads this at its first call, so before anything here imports torch.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

_EXPORTS = {
    "BadNet": "nets.badnet",
    "GoodNet": "nets.goodnet",
    "load_model": "nets.loading",
    "load_images": "data.images",
    "load_image": "data.images",
    "load_lab_set": "data.lab_sets",
    "load_trigger": "data.triggers",
    "Trigger": "data.triggers",
    "prune_sweep": "defense.pipeline",
    "prune_batch": "batch.run",
    "finetune": "defense.pipeline",
    "DefenseResult": "defense.pipeline",
    "FinetuneRun": "defense.pipeline",
    "FinetuneConfig": "defense.finetune_config",
    "Column": "defense.metric_columns",
    "BadInputError": "errors",
    "exact_float32": "nets.precision",
    "save_checkpoint": "nets.checkpoint",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'torch_badnet' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
