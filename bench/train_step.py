"""Time one training step (forward + backward + Adam) of refcert against PyTorch CPU, in one run.

Models: an MLP 784-256-256-10 and DiffAI's ConvSmall (normalise, conv 16 k4 s2, conv 32 k4 s2, FC 100,
FC 10) on MNIST-shaped float32 batches of 128.  Both libraries start from the same weights and see
the same batch; the first losses are compared so the two really compute the same thing.  PyTorch is
optional: without it only refcert's numbers are printed.  Thread counts are pinned (default 2) for
both libraries, so the ratio compares like with like.

    python bench/train_step.py [--threads 2] [--steps 100] [--batch 128] [--profile mlp|convsmall]
"""
import argparse
import os
import sys


def _parse():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="BLAS / PyTorch threads (default 2)")
    parser.add_argument("--steps", type=int, default=100, help="timed steps per model and library (default 100)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--profile", choices=["mlp", "convsmall"], help="cProfile refcert's steps instead")
    return parser.parse_args()


ARGS = _parse() if __name__ == "__main__" else None
if ARGS is not None:  # BLAS reads these once, when NumPy is first imported
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[variable] = str(ARGS.threads)

import time  # noqa: E402

import numpy as np  # noqa: E402

from refcert import autodiff as ad  # noqa: E402
from refcert import nn  # noqa: E402
from refcert.optim import Adam  # noqa: E402

GOALS = {"mlp": 1.5, "convsmall": 3.0}  # refcert / PyTorch time ratio to stay under


def mlp(rng):
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 256, rng=rng), nn.ReLU(), nn.Linear(256, 256, rng=rng),
                         nn.ReLU(), nn.Linear(256, 10, rng=rng))


def convsmall(rng):
    return nn.Sequential(nn.Normalize(mean=[0.1307], std=[0.3081]),
                         nn.Conv2d(1, 16, 4, stride=2, rng=rng), nn.ReLU(),
                         nn.Conv2d(16, 32, 4, stride=2, rng=rng), nn.ReLU(), nn.Flatten(),
                         nn.Linear(32 * 5 * 5, 100, rng=rng), nn.ReLU(), nn.Linear(100, 10, rng=rng))


def refcert_step(net, optimizer):
    def step(x, y):
        optimizer.zero_grad()
        loss = ad.cross_entropy(net(x), y)
        loss.backward()
        optimizer.step()
        return loss.item()
    return step


def torch_model(net):
    """The same network in PyTorch, with refcert's weights copied in."""
    import torch

    class Normalize(torch.nn.Module):
        def __init__(self, mean, std):
            super().__init__()
            self.mean, self.std = (torch.tensor(a.numpy()).reshape(1, -1, 1, 1) for a in (mean, std))

        def forward(self, x):
            return (x - self.mean) / self.std

    layers = []
    for layer in net.layers:
        p = layer.params
        if layer.op == "normalize":
            layers.append(Normalize(p["mean"], p["std"]))
            continue
        if layer.op in ("relu", "flatten"):
            layers.append({"relu": torch.nn.ReLU, "flatten": torch.nn.Flatten}[layer.op]())
            continue
        w = p["weight"].shape
        module = (torch.nn.Linear(w[1], w[0]) if layer.op == "linear" else
                  torch.nn.Conv2d(w[1], w[0], w[2], stride=p["stride"], padding=p["padding"]))
        with torch.no_grad():
            module.weight.copy_(torch.from_numpy(p["weight"].numpy()))
            module.bias.copy_(torch.from_numpy(p["bias"].numpy()))
        layers.append(module)
    return torch.nn.Sequential(*layers)


def torch_step(model):
    import torch
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step(x, y):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        return loss.item()
    return step


def time_steps(steps_by_library, x_by_library, y_by_library, steps, rounds=5, warmup=3):
    """Median wall time of one step (ms) and the first loss, per library.

    The libraries take turns (``rounds`` blocks of ``steps // rounds`` steps each), so a change in the
    machine's load during the run affects both alike.
    """
    first, times = {}, {name: [] for name in steps_by_library}
    for name, step in steps_by_library.items():
        first[name] = step(x_by_library[name], y_by_library[name])
        for _ in range(warmup - 1):
            step(x_by_library[name], y_by_library[name])
    for _ in range(rounds):
        for name, step in steps_by_library.items():
            x, y = x_by_library[name], y_by_library[name]
            for _ in range(max(1, steps // rounds)):
                start = time.perf_counter()
                step(x, y)
                times[name].append(time.perf_counter() - start)
    return {name: (1000.0 * float(np.median(t)), first[name]) for name, t in times.items()}


def main():
    args = ARGS
    try:
        import torch
        torch.set_num_threads(args.threads)
    except ImportError:
        torch = None
        print("PyTorch not installed: printing refcert's numbers only (pip install torch for the ratio)")
    rng = np.random.default_rng(0)
    x = rng.uniform(0.0, 1.0, (args.batch, 1, 28, 28)).astype("float32")
    y = rng.integers(0, 10, args.batch)
    rows = []
    for name, make in (("mlp", mlp), ("convsmall", convsmall)):
        net = make(np.random.default_rng(1))
        peer = torch_model(net) if torch is not None else None  # copy weights before refcert trains
        if args.profile == name:
            return _profile(refcert_step(net, Adam(net.parameters(), lr=1e-3)), x, y, args.steps)
        libraries = {"refcert": refcert_step(net, Adam(net.parameters(), lr=1e-3))}
        xs, ys = {"refcert": x}, {"refcert": y}
        if peer is not None:
            libraries["torch"] = torch_step(peer)
            xs["torch"], ys["torch"] = torch.from_numpy(x), torch.from_numpy(y)
        results = time_steps(libraries, xs, ys, args.steps)
        ours, our_loss = results["refcert"]
        theirs, their_loss = results.get("torch", (None, None))
        rows.append((name, ours, theirs, our_loss, their_loss))
    _print_table(rows, args)


def _profile(step, x, y, steps):
    import cProfile
    import pstats
    step(x, y)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(steps):
        step(x, y)
    profiler.disable()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


def _print_table(rows, args):
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"train step, batch {args.batch}, float32, {args.threads} threads, median of {args.steps} steps, "
          f"load average {load:.2f}")
    print(f"{'model':<10} {'refcert ms':>11} {'PyTorch ms':>11} {'ratio':>7} {'goal':>6}  first loss (refcert / PyTorch)")
    for name, ours, theirs, our_loss, their_loss in rows:
        if theirs is None:
            print(f"{name:<10} {ours:>11.2f} {'-':>11} {'-':>7} {GOALS[name]:>5.1f}x  {our_loss:.5f}")
            continue
        ratio = ours / theirs
        flag = "ok" if ratio <= GOALS[name] else "MISSED"
        print(f"{name:<10} {ours:>11.2f} {theirs:>11.2f} {ratio:>6.2f}x {GOALS[name]:>5.1f}x  "
              f"{our_loss:.5f} / {their_loss:.5f}  {flag}")
        if abs(our_loss - their_loss) > 1e-4 * max(1.0, abs(their_loss)):
            print(f"  warning: first losses differ ({our_loss} vs {their_loss}): the models are not the same",
                  file=sys.stderr)


if __name__ == "__main__":
    main()
