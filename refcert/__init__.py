"""refcert: a small, readable reference implementation of certifiable neural networks.

Abstract interpretation (Box, the zonotope family, DeepPoly) proves a network's prediction constant
on a whole input set; DiffAI trains networks to be provable.  See README.md and DESIGN.md.
"""
from refcert import backends, nn  # noqa: F401  (refcert.backends is installed from backends/)
from refcert import domains  # noqa: F401
from refcert.autodiff import Tensor, no_grad  # noqa: F401
from refcert.io.npz import ModelFileError, load, save  # noqa: F401

from refcert.certify import certify  # noqa: E402,F401  (binds the function over the submodule's name)

__version__ = "0.1.0"


def __getattr__(name):
    """Lazy entry points that live in modules importing more of the package."""
    if name in ("load_onnx", "export_onnx"):
        from refcert.io import onnx as onnx_io
        return getattr(onnx_io, name)
    raise AttributeError(f"module 'refcert' has no attribute {name!r}")
