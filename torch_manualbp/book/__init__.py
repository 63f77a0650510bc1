r"""The book's own modules, ``mnist_loader``, ``network`` and ``network2``, with its names and signatures, over the
package: numpy in, numpy out, float64, Python 3.

``mnist_loader`` reads the shipped IDX files (``data/mnist``) into the book's lists of column vectors.
"""

from . import mnist_loader

__all__ = ["mnist_loader"]
