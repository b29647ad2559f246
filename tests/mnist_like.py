"""MNIST-like test digits drawn with PIL (no MNIST data is shipped): white digits on black, 28x28, pixels 0..255.

The package's own font digits (`torch_badnet.demo.digits`, what the docs use), under the tests' name."""

from __future__ import annotations

from torch_badnet.demo.digits import font_digits as mnist_like_digits

__all__ = ["mnist_like_digits"]
