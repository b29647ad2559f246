"""Weight import/export for torch_badnet: Keras (.h5/.keras) and ONNX <-> the PyTorch BadNet.

Depends on torch_badnet's model; torch_badnet's core never imports this package.
"""

from .loading import read_model_file

__all__ = ["read_model_file"]
