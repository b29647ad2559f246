"""The pruning engine for any torch nn.Module: the seam (`prunable.PrunableNet`) and its sweep (`generic`).

The lab architecture keeps its own incremental head (`torch_badnet.engine.lab_head`); every other model goes through
`PrunableNet` (layer, ranking point, channel mask) and `generic.GenericSweep` (torch.fx split at the pruned
layer, cached cut tensors, channel-wise propagation, suffix per step; a full forward per step where fx fails).
"""
