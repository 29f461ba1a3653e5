"""Scale-out on Dask: items per second with 1 and 2 local workers, and the per-item overhead of the Dask path.

    python bench/scale.py [--net convsmall_mnist_diffai_box_0.1] [--images 64] [--chunk 4] [--tiny 400] [--repeat 3]

1. DeepPoly certification of a shipped ConvSmall on mnist-mini test images, chunks of ``--chunk`` images as
   the work items (``refcert.commands.certify.certify_span``, batch 1): a LocalCluster of 1 and of 2
   workers, runs interleaved and repeated, median items per second and the ratio 2 / 1 (the goal: ≥ 1.8 on
   this 2-core machine).  The cluster's start-up is not counted (it is paid once per command).
2. Per-item overhead: ``--tiny`` items that do nothing, in-process against a 1-worker cluster; the
   difference per item is what Dask adds (scheduling, pickling, a round trip) — the goal: ≤ 5 ms.
"""
from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


from refcert import datasets, parallel, weights  # noqa: E402
from refcert.commands.certify import certify_span  # noqa: E402


def nothing(shared, payload):
    return payload


def _timed(fn, items, shared, workers):
    """Seconds for the items on a fresh LocalCluster (start-up excluded: the first item warms it)."""
    distributed = parallel._dask()
    with parallel._client(distributed, workers, None) as client:
        ref = client.scatter(shared, broadcast=True)
        client.gather(client.map(fn, [ref] * workers, items[:workers], pure=False))  # warm every worker
        began = time.perf_counter()
        client.gather(client.map(fn, [ref] * len(items), items, pure=False))
        return time.perf_counter() - began


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--net", default="convsmall_mnist_diffai_box_0.1")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=4)
    parser.add_argument("--tiny", type=int, default=400)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    net = weights.load(args.net)
    x, y = datasets.load("mnist-mini", "test")
    x, y = x[:args.images], y[:args.images]
    options = {"eps": 0.1, "names": ["deeppoly"], "attack": False, "pgd_steps": 1, "batch_size": 1, "seed": 0,
               "execution": None, "alpha": (20, 0.1)}
    shared = {"net": net, "x": x, "y": y, "options": options}
    items = [(i, s, min(s + args.chunk, len(x))) for i, s in enumerate(range(0, len(x), args.chunk))]
    rates = {1: [], 2: []}
    for _ in range(args.repeat):
        for workers in (1, 2):
            rates[workers].append(len(items) / _timed(certify_span, items, shared, workers))
    one, two = statistics.median(rates[1]), statistics.median(rates[2])
    print(f"DeepPoly on {args.net}, {len(x)} images in {len(items)} items of {args.chunk}; median of {args.repeat}")
    print(f"| workers | items/s | images/s |\n|---|---|---|\n| 1 | {one:.2f} | {one * args.chunk:.1f} |\n"
          f"| 2 | {two:.2f} | {two * args.chunk:.1f} |\nratio 2 / 1 workers: {two / one:.2f}")
    tiny = list(range(args.tiny))
    local = []
    dask = []
    for _ in range(args.repeat):
        began = time.perf_counter()
        for key, _ in parallel.run(nothing, [(i, i) for i in tiny], shared={"net": net}):
            pass
        local.append((time.perf_counter() - began) / len(tiny))
        dask.append(_timed(nothing, tiny, {"net": net}, 1) / len(tiny))
    overhead = 1000 * (statistics.median(dask) - statistics.median(local))
    print(f"per-item overhead of the Dask path (1 worker, {args.tiny} empty items): {overhead:.2f} ms "
          f"(in-process {1e6 * statistics.median(local):.1f} µs per item)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
