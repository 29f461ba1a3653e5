"""Optimisers over ``parameters()``: SGD (momentum, weight decay) and Adam (Kingma & Ba, 2015).

``step()`` updates each parameter's value in place from its ``.grad``; ``zero_grad()`` clears them.
"""
from __future__ import annotations

import math

from refcert import backends


class Optimizer:
    def __init__(self, parameters, lr: float):
        self.parameters = list(parameters)
        if not self.parameters:
            raise ValueError("optimizer got an empty parameter list")
        if not lr > 0:
            raise ValueError(f"learning rate must be positive, got {lr}")
        self.lr = float(lr)

    def zero_grad(self):
        for p in self.parameters:
            p.grad = None


class SGD(Optimizer):
    def __init__(self, parameters, lr: float = 0.01, momentum: float = 0.0, weight_decay: float = 0.0):
        super().__init__(parameters, lr)
        self.momentum, self.weight_decay = float(momentum), float(weight_decay)
        self.velocity = [None] * len(self.parameters)

    def step(self):
        """PyTorch's SGD (no dampening): g = grad + wd p; v = momentum v + g (v = g at first); p -= lr v."""
        for i, p in enumerate(self.parameters):
            if p.grad is None:
                continue
            g = p.grad + self.weight_decay * p.value if self.weight_decay else p.grad
            if self.momentum:
                self.velocity[i] = g if self.velocity[i] is None else self.momentum * self.velocity[i] + g
                g = self.velocity[i]
            p.value = p.value - self.lr * g


class Adam(Optimizer):
    def __init__(self, parameters, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(parameters, lr)
        self.beta1, self.beta2 = betas
        self.eps, self.weight_decay = float(eps), float(weight_decay)
        xp = backends.current().xp
        self.m = [xp.zeros_like(p.value) for p in self.parameters]
        self.v = [xp.zeros_like(p.value) for p in self.parameters]
        self.t = 0                                # steps taken
        self.steps = [0] * len(self.parameters)   # steps each parameter took (one without .grad is skipped)

    def step(self):
        """PyTorch's Adam (L2 weight decay): m, v moving averages; p -= lr * m_hat / (sqrt(v_hat) + eps)."""
        xp = backends.current().xp
        self.t += 1
        for i, p in enumerate(self.parameters):
            if p.grad is None:
                continue
            self.steps[i] += 1
            correction1 = 1.0 - self.beta1 ** self.steps[i]
            correction2 = 1.0 - self.beta2 ** self.steps[i]
            step_size = self.lr * math.sqrt(correction2) / correction1
            g = p.grad + self.weight_decay * p.value if self.weight_decay else p.grad
            # m = beta1 m + (1 - beta1) g, written as g + beta1 (m - g) so the optimiser's own state is
            # updated in place: allocating fresh temporaries costs more than the arithmetic here
            m, v, g_squared = self.m[i], self.v[i], g * g
            m -= g
            m *= self.beta1
            m += g
            v -= g_squared
            v *= self.beta2
            v += g_squared
            denominator = xp.sqrt(v)
            denominator += self.eps * math.sqrt(correction2)
            update = m / denominator
            update *= step_size
            p.value = p.value - update    # a new array: a value held elsewhere (a graph, a snapshot) stays as it was


def clip_grad_norm(parameters, max_norm: float) -> float:
    """Scale gradients so their joint L2 norm is at most ``max_norm``; returns the norm before."""
    xp = backends.current().xp
    grads = [p.grad for p in parameters if p.grad is not None]
    total = math.sqrt(sum(float(xp.sum(g * g)) for g in grads))
    if total > max_norm > 0:
        for p in parameters:
            if p.grad is not None:
                p.grad = p.grad * (max_norm / (total + 1e-12))
    return total
