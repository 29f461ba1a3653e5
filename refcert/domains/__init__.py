"""Abstract domains: each is a table giving every layer op a meaning (DESIGN.md, "Domains").

``get(name)`` returns a ``Domain``: its ``TRANSFORMERS`` table and the ways to build an input set:
``linf_ball(x, eps, clip)``, ``from_bounds(lower, upper)`` and ``from_affine(A, b, c, lower, upper, shape)``
(an affine image of a parameter box, for geometric specifications).  ``names()`` lists them.
Elements name their domain in a ``domain`` field, so the interpreter finds the right table.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

from refcert import autodiff as ad
from refcert import backends

#: the layer vocabulary every table must cover
OPS = ("linear", "conv2d", "normalize", "batchnorm", "flatten", "permute", "avg_pool2d", "max_pool2d",
       "relu", "sigmoid", "tanh", "add")


@dataclass(frozen=True)
class Domain:
    name: str
    transformers: dict
    from_bounds: Callable  # (lower, upper) Tensors (batch, *shape) -> element
    affine: Callable | None = None  # a faster ``from_affine`` (same arguments), where a domain has one

    def from_affine(self, A, b, c, lower, upper, shape):
        """The set {A p + b + c⊙e : p ∈ [lower, upper], e ∈ [−1, 1]ⁿ} per input of the batch, its n features
        shaped ``shape``: an affine image of a parameter box plus a per-feature error (DeepG's linear pixel
        bounds, ``refcert.geometric``).  A (batch, n, k), b and c ≥ 0 (batch, n), lower/upper (batch, k),
        all read as exact reals.  Default: the box of (p, e) through the domain's own ``linear`` transformer
        with weight [A | diag c] and bias b (a map of reals, never executed: execution 'exact'), then
        ``permute`` in the identity order to ``shape``; sound because both transformers are."""
        if self.affine is not None:
            return self.affine(A, b, c, lower, upper, shape)
        from refcert import fp
        xp = backends.current().xp
        A, b, c, lower, upper = (ad.as_tensor(t) for t in (A, b, c, lower, upper))
        batch, n, k = A.shape
        if not bool(xp.all(c.value >= 0)):  # also catches NaN
            raise ValueError("from_affine needs an error c >= 0 in every feature")
        weight = ad.concatenate([A, ad.reshape(c, shape=(batch, 1, n)) * xp.eye(n, dtype=c.value.dtype)[None]], axis=2)
        ones = xp.ones((batch, n), dtype=lower.value.dtype)
        box = self.from_bounds(ad.concatenate([lower, ad.constant(-ones)], axis=1),
                               ad.concatenate([upper, ad.constant(ones)], axis=1))
        with fp.use(execution="exact"):
            flat = self.transformers["linear"](box, weight=weight, bias=b)
        return self.transformers["permute"](flat, index=np.arange(n), shape=tuple(shape), in_shape=(n,))

    def linf_ball(self, x, eps, clip=(0.0, 1.0)):
        """The L∞ ball of radius ``eps`` around each input of the batch ``x``, intersected with ``clip``,
        as a set of reals (x, eps and clip read as exact numbers), rounded outward (``fp.policy().sound``)."""
        from refcert import fp
        x = ad.as_tensor(x)
        eps_values = ad.as_tensor(eps).numpy()
        if not (eps_values >= 0).all():  # also catches NaN
            raise ValueError(f"eps must be non-negative numbers, got {eps_values.reshape(-1)[:3].tolist()}")
        if clip is not None and clip[0] > clip[1]:
            raise ValueError(f"clip range is empty: {clip}")
        if fp.policy().sound:
            lower, upper = fp.ball(x, eps, clip, outward=True)
            return self.from_bounds(lower, upper)
        lower, upper = x - eps, x + eps
        if clip is not None:
            lower = ad.clip(lower, lower=clip[0], upper=clip[1])
            upper = ad.clip(upper, lower=clip[0], upper=clip[1])
        return self.from_bounds(lower, upper)


_REGISTRY: dict[str, Domain] = {}


def register(name: str, transformers: dict, from_bounds: Callable, from_affine: Callable | None = None) -> Domain:
    missing = [op for op in OPS if op not in transformers]
    if missing:
        raise ValueError(f"domain {name!r} lacks transformers for {missing}")
    _REGISTRY[name] = Domain(name, transformers, from_bounds, from_affine)
    return _REGISTRY[name]


def get(name: str) -> Domain:
    """The domain called ``name`` (see ``names()``); imports only the module that registers it."""
    if name not in _REGISTRY:
        _load(_MODULE_OF.get(name))
    if name not in _REGISTRY:
        raise ValueError(f"unknown domain {name!r}; choose one of {names()}")
    return _REGISTRY[name]


def names() -> list[str]:
    """Every domain, in the order of ``_MODULE_OF`` (then any registered from elsewhere)."""
    for module in dict.fromkeys(_MODULE_OF.values()):
        _load(module)
    return [n for n in _MODULE_OF if n in _REGISTRY] + [n for n in _REGISTRY if n not in _MODULE_OF]


def domain_of(element) -> Domain:
    """The domain an element belongs to: Tensors and arrays are points."""
    name = getattr(element, "domain", None)
    return get(name) if isinstance(name, str) else get("point")


def _load(module: str | None):
    """Import the module that registers a domain (None: ``point``, registered here); once each."""
    if module is None:
        if "point" not in _REGISTRY:
            from refcert.domains import point
            register("point", point.TRANSFORMERS, point.from_bounds)
        return
    if module not in _loaded:
        importlib.import_module(f"refcert.domains.{module}")  # registers its domains (``register``)
        _loaded.add(module)


#: domain name -> the module that registers it when imported (None: ``point``), in the order of ``names()``;
#: ``get`` imports only the one it needs (the first certification in a process used to import all)
_MODULE_OF: dict[str, str | None] = {
    "point": None, "box": "box",
    **dict.fromkeys(["deepzono", "zbox", "zdiag", "zswitch", "zsmooth", "hbox", "hdiag", "hswitch", "hsmooth"],
                    "zonotope"),
    **dict.fromkeys(["deeppoly", "crown-ibp", "alpha-crown"], "deeppoly"),
    **dict.fromkeys(["exactline", "approxline"], "line"),
}
_loaded: set[str] = set()
