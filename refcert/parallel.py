"""Independent work items, here or on a Dask cluster: ``run(fn, items, shared=...)`` yields results as they finish.

Three jobs outgrow one machine — certifying a dataset, a benchmark suite, a fuzzing campaign — and all three
are lists of independent items.  ``run`` maps ``fn(shared, payload)`` over ``items`` (pairs (key, payload))
and yields (key, result) as each finishes:

* in this process, in order, when neither ``workers`` nor ``scheduler`` is given (no Dask import at all);
* on a ``dask.distributed.LocalCluster`` of ``workers`` processes (one thread and one BLAS thread each);
* on a running cluster at ``scheduler`` (``dask scheduler`` and ``dask worker ADDRESS`` started by hand).

``shared`` (the network, the data) is scattered once to every worker (``broadcast``) and each task gets a
reference to it, so it travels once per worker, not once per item.  Payloads and results travel with the
tasks (pickled by Dask between the client and its workers: use a cluster you trust).  A worker that dies
mid-item loses the item to the scheduler, which runs it again on another worker (up to ``retries`` times);
the client receives each key's result once, so the caller writes it once.  Keys in ``done`` are skipped
(``--resume``).  A tqdm bar (items done / total, rate, workers) goes to stderr when ``progress`` is set and
tqdm is installed.  Dask and tqdm come with ``pip install 'refcert[cluster]'``.
"""
from __future__ import annotations

import os
import sys
import time

RETRIES = 3
#: the variables that set a BLAS library's thread count: set to 1 for a LocalCluster's worker processes
#: (they inherit this process's environment) unless the user set them; ``refcert demo`` checks them too
THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def run(fn, items, *, shared=None, workers: int | None = None, scheduler: str | None = None, done=(),
        progress: bool = False, what: str = "items"):
    """Yield (key, fn(shared, payload)) for every (key, payload) of ``items`` whose key is not in ``done``."""
    skip = set(done)
    todo = [(key, payload) for key, payload in items if key not in skip]
    if workers is None and scheduler is None:
        for key, payload in todo:
            yield key, fn(shared, payload)
        return
    distributed = check(workers, scheduler)
    with _client(distributed, workers, scheduler) as client:
        ref = client.scatter(shared, broadcast=True) if shared is not None else None
        futures = {client.submit(fn, ref, payload, key=f"refcert-{what}-{key}-{time.time_ns()}", pure=False,
                                 retries=RETRIES): key for key, payload in todo}
        bar = _bar(len(todo), what) if progress else None
        try:
            for future in distributed.as_completed(futures):
                key = futures[future]
                result = future.result()
                if bar is not None:
                    bar.set_postfix_str(f"{len(client.scheduler_info()['workers'])} workers", refresh=False)
                    bar.update(1)
                yield key, result
        finally:
            if bar is not None:
                bar.close()


def check(workers, scheduler):
    """Refuse bad --workers/--scheduler before any work; the distributed module when one is given."""
    if workers is not None and workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    if workers is not None and scheduler is not None:
        raise ValueError("give --workers (a local cluster) or --scheduler (a running one), not both")
    return None if workers is None and scheduler is None else _dask()


def _dask():
    try:
        import distributed
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError("--workers and --scheduler need Dask, which is not installed; pip install "
                                  "'refcert[cluster]'", name="distributed") from err
    return distributed


class _client:
    """A Client on a fresh LocalCluster (closed afterwards) or on the scheduler at ``address``."""

    def __init__(self, distributed, workers, address):
        self.distributed, self.workers, self.address = distributed, workers, address

    def __enter__(self):
        d = self.distributed
        if self.address is not None:
            self.cluster, self.client = None, d.Client(self.address, timeout="30s")
            return self.client
        for name in THREAD_VARIABLES:
            os.environ.setdefault(name, "1")
        self.cluster = d.LocalCluster(n_workers=self.workers, threads_per_worker=1, processes=True,
                                      dashboard_address=None, silence_logs=40)
        self.client = d.Client(self.cluster)
        return self.client

    def __exit__(self, *exc):
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()
        return False


def _bar(total, what):
    try:
        from tqdm import tqdm
    except ModuleNotFoundError:
        return None
    return tqdm(total=total, desc=what, unit=what.rstrip("s") or "item", file=sys.stderr, dynamic_ncols=True)
