"""fmbench: softmax regression on Fashion-MNIST, one module per framework.

Infrastructure (NumPy only): :mod:`impls.data` (the loader), :mod:`impls.config`,
:mod:`impls.protocol`, :mod:`impls.training` (the shared ``fit`` loop) and
:mod:`impls.registry`. Each remaining module is one implementation, imported
lazily through the registry.
"""

__version__ = "0.1.0"
