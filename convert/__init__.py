"""Weight import/export for torch_badnet: Keras (.h5/.keras) and ONNX <-> the PyTorch BadNet.

Depends on torch_badnet's model; torch_badnet's core never imports this package.
"""

from .loading import load_model

__all__ = ["load_model"]
