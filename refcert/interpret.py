"""The one interpreter loop: run a network's layers on any domain element (DESIGN.md).

``run(layers, x)`` looks up the table of x's domain and applies ``table[layer.op](x, **layer.arguments(x))``
layer by layer.  Two structural layers are handled here: ``Sequential`` (run its layers in order) and
``Residual`` (run the block and the shortcut on the same input, merge with the table's ``add``, which
is told the branch point ``origin`` so domains can keep shared noise symbols shared).
"""
from __future__ import annotations

from refcert import autodiff as ad
from refcert import domains


def run(layers, x):
    """Push x (a Tensor/array batch or an abstract element) through ``layers`` in order."""
    if not hasattr(x, "domain"):
        x = ad.as_tensor(x)
    table = domains.domain_of(x).transformers
    for layer in layers:
        kind = getattr(layer, "structure", None)
        if kind == "sequential":
            x = run(layer.layers, x)
        elif kind == "residual":
            x = table["add"](run(layer.block.layers, x), run(layer.shortcut.layers, x), origin=x)
        else:
            if layer.op not in table:
                raise NotImplementedError(
                    f"domain {domains.domain_of(x).name!r} has no transformer for layer op {layer.op!r}")
            x = table[layer.op](x, **layer.arguments(x))
    return x
