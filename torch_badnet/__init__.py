"""torch-badnet: the Fine-Pruning defense against backdoored face classifiers (BadNets), in PyTorch.

`BadNet` and `GoodNet` are imported lazily so that `torch-badnet --help` does not wait for torch.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["BadNet", "GoodNet", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "BadNet":
        from .model import BadNet

        return BadNet
    if name == "GoodNet":
        from .goodnet import GoodNet

        return GoodNet
    raise AttributeError(f"module 'torch_badnet' has no attribute {name!r}")
