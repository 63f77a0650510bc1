r"""The book's own modules, ``mnist_loader``, ``network`` and ``network2``, with its names and signatures, over the
package: numpy in, numpy out, float64, Python 3, and training through :class:`torch_manualbp.MiniBatchSGD`.

The interactive session of chapter 1 runs as printed, in about a second an epoch instead of minutes::

    >>> import random, numpy as np; random.seed(0); np.random.seed(0)  # only to reproduce the line below
    >>> from torch_manualbp.book import mnist_loader, network
    >>> training_data, validation_data, test_data = mnist_loader.load_data_wrapper()
    >>> net = network.Network([784, 30, 10])
    >>> net.SGD(training_data, 30, 10, 3.0, test_data=test_data)
    Epoch 0: 8987 / 10000
    ...

and chapter 3's ``network2.Network([784, 30, 10], cost=network2.CrossEntropyCost)`` likewise. ``docs/from_the_book.md``
maps each of the book's names to the package's API.
"""

from . import mnist_loader, network, network2

__all__ = ["mnist_loader", "network", "network2"]
