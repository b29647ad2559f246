"""Keras models of any supported layer graph as torch modules (KerasGraphNet), and back to Keras 2 files.

    net = KerasGraphNet(config, weights)          # config: the model's JSON; weights: {layer: [arrays]}
    write_keras_graph(net, "b_prime.h5", {"conv_2": mask})

The layer registry (layers.CONVERTERS) maps each Keras class to one small converter function.
"""

from .layers import CONVERTERS, register
from .net import KerasGraphNet
from .writer import mask_problem, write_keras_graph

__all__ = ["CONVERTERS", "KerasGraphNet", "mask_problem", "register", "write_keras_graph"]
