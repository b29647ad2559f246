"""The embedded demo: a backdoored BadNet and its data, built from a seed in the lab's own layout.

The lab's data cannot be shipped, so `torch-badnet demo` renders procedural faces of ~100 identities,
poisons a share of them with purple sunglasses (target label 0), trains the lab architecture on them (a
pruning-aware backdoor, so pruning alone leaves it in place as in the lab's net) and caches the result as a
workspace: data/cl/{valid,test}.h5, data/bd/bd_{valid,test}.h5, models/bd_net.h5.
"""

from .workspace import DemoConfig, DemoWorkspace, default_workdir, ensure_workspace

__all__ = ["DemoConfig", "DemoWorkspace", "default_workdir", "ensure_workspace"]
