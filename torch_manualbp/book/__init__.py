r"""The book's own modules, ``mnist_loader``, ``network``, ``network2`` and ``network3``, with its names and signatures,
over the package: for the first three numpy in, numpy out, float64, Python 3, and training through
:class:`torch_manualbp.MiniBatchSGD`.

The interactive session of chapter 1 runs as printed, in about a second an epoch instead of minutes::

    >>> import random, numpy as np; random.seed(0); np.random.seed(0)  # only to reproduce the line below
    >>> from torch_manualbp.book import mnist_loader, network
    >>> training_data, validation_data, test_data = mnist_loader.load_data_wrapper()
    >>> net = network.Network([784, 30, 10])
    >>> net.SGD(training_data, 30, 10, 3.0, test_data=test_data)
    Epoch 0: 8987 / 10000
    ...

and chapter 3's ``network2.Network([784, 30, 10], cost=network2.CrossEntropyCost)`` likewise. Chapter 6's
``network3``, which needed Theano, runs on torch tensors (float32, as Theano's ``floatX``) and the package's
hand-written layers, ``ConvPool2d`` and ``FullyConnected``::

    >>> from torch_manualbp.book import network3
    >>> from torch_manualbp.book.network3 import Network, ConvPoolLayer, FullyConnectedLayer, SoftmaxLayer
    >>> training_data, validation_data, test_data = network3.load_data_shared()
    >>> net = Network([FullyConnectedLayer(n_in=784, n_out=100), SoftmaxLayer(n_in=100, n_out=10)], 10)
    >>> net.SGD(training_data, 60, 10, 0.1, validation_data, test_data)
    Training mini-batch number 0
    ...

``docs/from_the_book.md`` maps each of the book's names to the package's API.
"""

from . import mnist_loader, network, network2, network3

__all__ = ["mnist_loader", "network", "network2", "network3"]
