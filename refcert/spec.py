"""The robustness specification as a final linear layer (DeepPoly, POPL'19, Sec. 2; DiffAI, ICML'18, Sec. 4).

A network is robust at x with label t on a set S iff min over j ≠ t of (y_t − y_j) > 0 for every
input in S.  The differences are the rows of C = [e_t − e_j]_{j≠t}, one matrix per input, applied as
one more ``linear`` layer (op "linear", weight (batch, n−1, n), no bias) *before* bounding: a
relational domain then bounds y_t − y_j directly (correlations between y_t and y_j cancel),
which is never looser and usually much tighter than subtracting separate bounds of y_t and y_j.
Every domain handles the layer through its own table (``refcert.interpret.run``).
"""
from __future__ import annotations

import numpy as np

from refcert import autodiff as ad
from refcert import backends, fp, interpret, nn
from refcert.autodiff import Tensor


def _labels_numpy(labels) -> np.ndarray:
    labels = np.asarray(backends.to_numpy(labels)).reshape(-1)
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        if not np.all(labels == np.round(labels)):
            raise ValueError(f"labels must be integers, got {labels[labels != np.round(labels)][:3].tolist()}")
    return labels.astype(np.int64)


def other_classes(labels, n_classes: int) -> np.ndarray:
    """(batch, n−1) int: for each input, the classes j ≠ t in increasing order (the rows of C)."""
    labels = _labels_numpy(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"labels must lie in 0..{n_classes - 1} (the net has {n_classes} outputs), "
                         f"got {labels.min()}..{labels.max()}")
    classes = np.arange(n_classes)
    return np.stack([classes[classes != t] for t in labels]) if labels.size else np.zeros((0, n_classes - 1), int)


def margin_matrix(labels, n_classes: int, dtype="float64") -> Tensor:
    """C (batch, n−1, n) with row r of input b equal to e_t − e_j, t = labels[b], j = other_classes[b, r]."""
    others = other_classes(labels, n_classes)
    labels = _labels_numpy(labels)
    batch = labels.shape[0]
    C = np.zeros((batch, n_classes - 1, n_classes), dtype=dtype)
    rows = np.arange(n_classes - 1)
    for b in range(batch):
        C[b, rows, labels[b]] = 1.0
        C[b, rows, others[b]] = -1.0
    return Tensor(C)


class Specification(nn.Module):
    """The layer y ↦ C y (op "linear", per-input weight C, no bias); not trainable."""
    op = "linear"

    def __init__(self, C: Tensor):
        super().__init__()
        self.params = {"weight": C, "bias": None}


def _layers(net) -> list:
    return list(net.layers) if isinstance(net, nn.Sequential) else [net]


def output_size(net) -> int:
    """Number of outputs of ``net``, read from its last layer that fixes the width.

    Walks back over elementwise layers and flattens to the last ``linear`` (or ``permute``) layer;
    raises for nets that end otherwise (use ``n_classes=`` then).
    """
    for layer in reversed(_layers(net)):
        if isinstance(layer, nn.Sequential):
            return output_size(layer)
        if layer.op in ("relu", "sigmoid", "tanh", "flatten"):
            continue
        if layer.op == "linear":
            return int(layer.params["weight"].shape[-2])
        if layer.op == "permute":
            return int(layer.params["index"].size)
        break
    raise ValueError("cannot read the number of classes from the net's last layer; pass n_classes=")


def margin_bounds(net, element, labels, n_classes: int | None = None) -> Tensor:
    """(batch, n−1) lower bounds of y_t − y_j (j ≠ t, increasing) over the set ``element``.

    Runs [net, C] through the element's domain, then takes the lower bound.  Differentiable.
    Sound because C is applied by the domain's own sound ``linear`` transformer.
    """
    out = margin_element(net, element, labels, n_classes)
    return out if isinstance(out, Tensor) else out.bounds()[0] if hasattr(out, "bounds") else out


def margin_element(net, element, labels, n_classes: int | None = None):
    """The element of [net, C] over the set ``element`` (its ``bounds()`` bound y_t − y_j, j ≠ t).

    Floating point: the net's layers are bounded for executions in the policy's precision, by default the
    net's own dtype (``fp.policy().execution`` None); the specification layer C is never executed by the
    network (the decision compares y_t and y_j exactly), so it runs with execution 'exact'.
    """
    n = output_size(net) if n_classes is None else int(n_classes)
    labels = _labels_numpy(labels)
    if n == 1:  # a single class: nothing to confuse it with
        return Tensor(np.zeros((labels.shape[0], 0)))
    execution = fp.policy().execution or nn.parameter_dtype(net) if hasattr(net, "params") else fp.policy().execution
    return _run(net, element, labels, n, execution)


def _run(net, element, labels, n: int, execution):
    with fp.use(execution=execution):
        return through(_layers(net), element, margin_matrix(labels, n, dtype=_float_dtype(net)))


def through(layers, element, C: Tensor):
    """The element of C·net(x): ``layers`` under the policy's execution precision, then the specification
    layer C (batch, rows, outputs), which the network never executes (the decision compares outputs
    exactly), under execution 'exact'.  Shared by certification and ``refcert.verify``."""
    out = interpret.run(list(layers), element)
    with fp.use(execution="exact"):
        return interpret.run([Specification(C)], out)


def _float_dtype(net) -> str:
    params = net.parameters() if hasattr(net, "parameters") else []
    return str(params[0].numpy().dtype) if params else "float64"


def worst_case_logits(net, element, labels, n_classes: int | None = None) -> Tensor:
    """(batch, n) logits z with z_j = −lb(y_t − y_j) ≥ ub(y_j − y_t) for j ≠ t and z_t = 0 (DiffAI, Sec. 4).

    CE(z, t) upper-bounds the cross-entropy of every point of the set, so it is DiffAI's abstract loss.
    """
    n = output_size(net) if n_classes is None else int(n_classes)
    lower = margin_bounds(net, element, labels, n)
    labels = _labels_numpy(labels)
    if n == 1:
        return Tensor(np.zeros((labels.shape[0], 1), dtype=_float_dtype(net)))
    others = other_classes(labels, n)
    S = np.zeros((labels.shape[0], n - 1, n), dtype=_float_dtype(net))  # S[b, r, others[b, r]] = 1
    S[np.arange(labels.shape[0])[:, None], np.arange(n - 1)[None, :], others] = 1.0
    scattered = ad.matmul(ad.reshape(-lower, shape=(labels.shape[0], 1, n - 1)), Tensor(S))
    return ad.reshape(scattered, shape=(labels.shape[0], n))
