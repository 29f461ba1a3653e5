"""The robustness specification as a final linear layer (DeepPoly, POPL'19, Sec. 2; DiffAI, ICML'18, Sec. 4).

A network is robust at x with label t on a set S iff min over j ≠ t of (y_t − y_j) > 0 for every
input in S.  The differences are the rows of C = [e_t − e_j]_{j≠t}, one matrix per input, applied as
one more ``linear`` layer (op "linear", weight (batch, n−1, n), no bias) *before* bounding: a
relational domain then bounds y_t − y_j directly (correlations between y_t and y_j cancel),
which is never looser and usually much tighter than subtracting separate bounds of y_t and y_j.
Every domain handles the layer through its own table (``refcert.interpret.run``).

Elision (Gowal et al. 2018, "On the effectiveness of interval bound propagation", Sec. 3): when the net
ends in an affine layer y = W h + b, C·y = (C W) h + C b is one affine map of the last hidden layer h.
Its interval over h's box is never looser, and usually much tighter, than C applied to the interval of y
(y_t and y_j share h).  ``margin_bounds`` and ``through_bounds`` intersect every domain's bounds with it
(``elided``): Box gains the most; relational domains gain where their own bounds were intersected with
the loose interval of y.
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
        if layer.op in ("relu", "sigmoid", "tanh", "flatten", "normalize", "batchnorm"):  # shape-keeping
            continue
        if layer.op == "linear":
            return int(layer.params["weight"].shape[-2])
        if layer.op == "permute":
            return int(layer.params["index"].size)
        break
    raise ValueError("cannot read the number of classes from the net's last layer (it should end in a Linear "
                     "or Permute layer, then elementwise ones)")


def margin_bounds(net, element, labels, n_classes: int | None = None) -> Tensor:
    """(batch, n−1) lower bounds of y_t − y_j (j ≠ t, increasing) over the set ``element``.

    Runs [net, C] through the element's domain, takes the lower bound and intersects it with the
    elided interval bound (``through_bounds``).  Differentiable.  Sound because C is applied by the
    domain's own sound ``linear`` transformer and ``elided`` is sound.
    """
    n = output_size(net) if n_classes is None else int(n_classes)
    labels = _labels_numpy(labels)
    if n == 1:  # a single class: nothing to confuse it with
        return Tensor(np.zeros((labels.shape[0], 0)))
    execution = fp.policy().execution or nn.parameter_dtype(net) if hasattr(net, "params") else fp.policy().execution
    with fp.use(execution=execution):
        return through_bounds(_layers(net), element, margin_matrix(labels, n, dtype=_float_dtype(net)))[0]


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


def through_bounds(layers, element, C: Tensor):
    """(lower, upper) of C·net(x) over ``element``: ``through``'s element's bounds, intersected with the
    elided interval (``elided``) when the layers end in an affine layer.  Execution as ``through``."""
    layers = _flat(list(layers))
    last = last_affine(layers)
    if last is None or not hasattr(element, "bounds"):
        out = through(layers, element, C)
        return out.bounds() if hasattr(out, "bounds") else (out, out)
    hidden = interpret.run(layers[:last], element)
    out = through(layers[last:], hidden, C)
    lower, upper = out.bounds() if hasattr(out, "bounds") else (out, out)
    folded = elided(hidden, layers[last], layers[last + 1:], C)
    if folded is None:
        return lower, upper
    return ad.maximum(lower, folded[0]), ad.minimum(upper, folded[1])


def _flat(layers: list) -> list:
    """Nested Sequentials opened (Residual blocks stay whole)."""
    out = []
    for layer in layers:
        out += _flat(list(layer.layers)) if isinstance(layer, nn.Sequential) else [layer]
    return out


def last_affine(layers: list):
    """The index of a final ``linear`` layer with one weight for every input (only reshapes after it), or None."""
    for k in range(len(layers) - 1, -1, -1):
        op = getattr(layers[k], "op", None)
        if op == "flatten":
            continue
        if op == "linear" and layers[k].params["weight"].ndim == 2:
            return k
        return None
    return None


def elided(hidden, layer, after: list, C: Tensor):
    """Sound (lower, upper) of C·y with y = W h + b the network's last layer (``layer``, executed in the
    policy's precision; ``after``: only flattens) and h in ``hidden``'s bounds: the interval of the folded
    map (C W) h + C b (Box's linear transformer, execution 'exact', differentiable), widened by R, the error
    of folding C W and C b in floats and of executing y: R = F·|C|(|W| M + |b|), M ≥ |h|, F ≥ the execution
    precision's γ for a sum of fan-in + 1 terms plus float64's for the folding (``fp.radius``).  Sound:
    the executed y' = y + e with |e| ≤ γ(|W| M + |b|) and C y' = (CW)h + Cb + Ce; the computed C W and C b
    are each within float64's γ_m |C||W|, γ_m |C||b| of the exact ones (proofs/floating_point.md §5).
    None for a hidden element without bounds.  Not sound policy: R = 0."""
    from refcert.domains import box
    if any(getattr(a, "op", None) != "flatten" for a in after):
        return None
    h_lower, h_upper = (hidden.lower, hidden.upper) if hasattr(hidden, "upper") else hidden.bounds()
    h_lower, h_upper = ad.reshape(h_lower, shape=(h_lower.shape[0], -1)), ad.reshape(h_upper, shape=(h_upper.shape[0], -1))
    W, b = layer.params["weight"], layer.params["bias"]
    if W.shape[-1] != h_lower.shape[-1] or C.shape[-1] != W.shape[0]:
        return None
    C = ad.as_tensor(C)
    folded_w = ad.matmul(C, ad.reshape(W, shape=(1,) + tuple(W.shape)))           # (batch, rows, in)
    folded_b = None if b is None else ad.reshape(ad.matmul(C, ad.reshape(b, shape=(1, -1, 1))), shape=C.shape[:2])
    with fp.use(execution="exact"):
        image = box.linear(box.Box(h_lower, h_upper), weight=folded_w, bias=folded_b)
    lower, upper = image.lower, image.upper
    if fp.policy().sound:
        with ad.no_grad():
            M = box.magnitude(box.Box(h_lower, h_upper))
            xp = backends.current().xp
            size = ad.matmul(M, ad.constant(xp.abs(W.value).T))                      # |W| M  (batch, out)
            size = size if b is None else size + ad.constant(xp.abs(b.value))
            size = ad.reshape(ad.matmul(ad.abs(C), ad.reshape(size, shape=(size.shape[0], -1, 1))), shape=C.shape[:2])
            n = W.shape[-1] + W.shape[0] + 2
            R = fp.radius(size, n, execution=fp.execution_dtype(W.value.dtype, size.dtype))
        lower, upper = fp.down(lower - R), fp.up(upper + R)
    return lower, upper


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
