"""``refcert certify``: prove robustness of a network on a set of inputs, with one or more domains.

The network is an ``.npz`` written by ``refcert.save``, an ONNX model or a shipped name (``refcert
weights``), read by ``refcert.weights.load_network``.  Inputs come from an ``.npz`` file (arrays ``x``
(N, *shape) in [0, 1] and ``y`` (N,)), an ERAN CSV (label, then 0..255 pixels) or a dataset split; an
ONNX network gets them in its file's layout (``_layout``).  Prints one summary row per domain;
``--json`` writes every input's verdict, counterexamples in the inputs' layout.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time

import numpy as np

from refcert import datasets, nn
from refcert import parallel
from refcert.commands import add_alpha_arguments, add_parallel_arguments
from refcert.commands.parts import Parts
from refcert.domains import alpha
from refcert.certify import CONCRETE_BATCH, certify, check_domains
from refcert.io.npz import atomic_write
from refcert.weights import load_network

DEFAULT_DOMAINS = ["deepzono"]


def add_arguments(parser):
    parser.add_argument("--net", required=True,
                        help="the network: an .npz written by refcert.save, an .onnx file, or the name of a shipped "
                             "network (list them with: refcert weights)")
    parser.add_argument("--inputs", required=True,
                        help="inputs: .npz with arrays x, y, an ERAN .csv, or DATASET:SPLIT (e.g. mnist:test, "
                             "read by refcert.datasets from $REFCERT_DATA or the cache)")
    parser.add_argument("--eps", type=float, default=None,
                        help="L∞ radius in pixel space ([0, 1] scale); with --spec an extra ball on top (default 0)")
    parser.add_argument("--spec", metavar="SPEC",
                        help="a geometric specification instead of (or, with --eps, besides) the ball: rotate:DEG, "
                             "translate:DX,DY, scale:LO,HI, shear:M, brightness:B, contrast:LO,HI, joined by '+' "
                             "(e.g. rotate:10+brightness:0.05); images (C, H, W)")
    parser.add_argument("--splits", type=int, default=1,
                        help="--spec: pieces per parameter, each certified on its own (default 1)")
    parser.add_argument("--bounds", choices=("linear", "interval"), default="linear",
                        help="--spec: pixel bounds per piece, DeepG's linear bounds in the parameters (default) or "
                             "intervals (the baseline)")
    parser.add_argument("--domain", action="append", metavar="NAME",
                        help="abstract domain (repeat for several); default deepzono")
    parser.add_argument("--n", type=int, default=None, help="certify only the first N inputs")
    parser.add_argument("--json", metavar="PATH", help="write per-input results as JSON (atomic); while the run "
                        "goes, finished chunks stream to PATH.parts.jsonl (removed at the end), which --resume reads")
    add_parallel_arguments(parser, "chunks of inputs", "continue an interrupted run with the same options and "
                           "--json: skip the chunks in PATH.parts.jsonl")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="inputs per abstract run (default: 32 for box and on a GPU, else 1: on a CPU the "
                             "zonotope domains and DeepPoly are fastest at 1, see bench/certify.py); PGD always "
                             "takes >= 128 at once")
    parser.add_argument("--seed", type=int, default=0, help="seed of PGD's random starts")
    parser.add_argument("--pgd-steps", type=int, default=40, help="PGD steps per undecided input (default 40)")
    parser.add_argument("--no-attack", action="store_true", help="skip PGD: verdicts only verified/unknown")
    parser.add_argument("--execution", choices=("float32", "float64"), default=None,
                        help="the precision whose executions 'verified' covers (default: the net's dtype)")
    add_alpha_arguments(parser)


def load_inputs(path: str):
    """(x float (N, *shape), y int64 (N,)) from .npz, ERAN .csv or a dataset split ``name:split``; clear
    errors naming the file."""
    name, colon, split = path.partition(":")
    if colon and not os.path.exists(path) and name in datasets.names():
        return datasets.load(name, split)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such inputs file")
    if path.endswith(".csv"):
        from refcert.datasets.eran import read_eran_csv
        return read_eran_csv(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in ("x", "y") if k not in data.files]
            if missing:
                raise ValueError(f"{path}: missing array(s) {missing}; found {data.files}")
            x, y = data["x"], data["y"]
    except (OSError, EOFError) as err:  # ValueError from pickled arrays / bad zip
        raise ValueError(f"{path}: not a readable .npz file ({err})") from err
    if not np.issubdtype(x.dtype, np.number) or not np.issubdtype(y.dtype, np.number):
        raise ValueError(f"{path}: x and y must be numeric arrays, got {x.dtype} and {y.dtype}")
    if x.shape[:1] != y.reshape(-1).shape[:1] or y.ndim != 1:
        raise ValueError(f"{path}: x has {x.shape[0] if x.ndim else 0} inputs but y has shape {y.shape}")
    return x.astype(np.float32) if x.dtype != np.float64 else x, y


class _Progress:
    """tqdm when installed, else a counter on stderr; shown from the first finished chunk on (so an error in
    the first one stays a clean one-line message)."""

    def __init__(self, total: int, label: str, enabled: bool = True):
        self.total, self.label, self.done, self.enabled, self.bar = total, label, 0, enabled, None

    def update(self, count: int):
        self.done += count
        if not self.enabled:
            return
        if self.bar is None:
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=self.total, desc=self.label, file=sys.stderr, leave=False)
            except ImportError:
                self.bar = False
        if self.bar:
            self.bar.update(count)
        else:
            print(f"\r{self.label}: {self.done}/{self.total}", end="", file=sys.stderr, flush=True)

    def close(self):
        if self.bar:
            self.bar.close()
        else:
            print(file=sys.stderr)


def _table(results) -> str:
    header = f"{'domain':<12} {'n':>5} {'accuracy':>9} {'verified':>9} {'falsified':>10} {'unknown':>8} {'ms/image':>9}"
    lines = [header, "-" * len(header)]
    for res in results.values():
        s = res.summary()
        lines.append(f"{s['domain']:<12} {s['n']:>5} {100 * s['accuracy']:>8.1f}% {100 * s['verified']:>8.1f}% "
                     f"{100 * s['falsified']:>9.1f}% {100 * s['unknown']:>7.1f}% {s['ms_per_image']:>9.2f}")
    return "\n".join(lines)


def _json(results, args, elapsed, input_shape) -> dict:
    """Per-input verdicts; counterexamples are flattened (reshape to ``input_shape``), margins null if infinite."""
    out = {"net": args.net, "inputs": args.inputs, "eps": args.eps, "seed": args.seed, "seconds": elapsed,
           "input_shape": list(input_shape), "domains": {}}
    if args.spec is not None:
        out.update(spec=args.spec, splits=args.splits, bounds=args.bounds)
    for name, res in results.items():
        out["domains"][name] = {
            "summary": res.summary(),
            "inputs": [{"index": i, "label": int(res.labels[i]), "predicted": int(res.predicted[i]),
                        "verdict": res.verdicts[i],
                        "margin": float(res.margins[i]) if np.isfinite(res.margins[i]) else None,
                        "ms": 1000.0 * float(res.times[i]),
                        "counterexample": None if res.counterexamples[i] is None
                        else np.asarray(res.counterexamples[i]).reshape(-1).tolist(),
                        **({"parameters": res.extra["parameters"][i]} if "parameters" in res.extra else {})}
                       for i in range(len(res.verdicts))]}
    return out


def _check_numbers(args):
    """Refuse the options certify cannot honour before any work, naming the option."""
    if args.eps is None and args.spec is None:
        raise ValueError("give --eps (an L∞ ball) or --spec (a geometric specification), or both")
    if args.spec is not None:
        from refcert import geometric
        geometric.parse(args.spec)  # a bad specification fails here, naming its part
        if args.splits < 1:
            raise ValueError(f"--splits must be >= 1, got {args.splits}")
    args.eps = 0.0 if args.eps is None else args.eps
    if not (math.isfinite(args.eps) and args.eps >= 0):
        raise ValueError(f"--eps must be a finite number >= 0, got {args.eps}")
    for option, value in (("--n", args.n), ("--batch-size", args.batch_size), ("--pgd-steps", args.pgd_steps)):
        if value is not None and value < 1:
            raise ValueError(f"{option} must be >= 1, got {value}")


def _declared_input(net):
    """The input shape the network declares, without batch: an ONNX file's, or the ``in_shape`` of a
    first ``Permute`` layer (an NHWC net saved as .npz); None when its layers do not fix one."""
    if getattr(net, "onnx_input_shape", None) is not None:
        return tuple(net.input_shape), "its ONNX file"  # the file's input, without its batch axis
    first = net
    while isinstance(first, nn.Sequential) and first.layers:
        first = first.layers[0]
    if getattr(first, "op", None) == "permute":
        return tuple(first.params["in_shape"]), "its first Permute layer"
    return None, None


def _layout(net, shape):
    """None, or (flat indices ``idx``, the net's input shape): the net's flat input k is element idx[k]
    of a flat input of ``shape``.

    Only a network that declares its input shape (``_declared_input``) changes the layout: (C, H, W)
    images go to an NHWC net as (H, W, C), other inputs of its size are read in C order.  A permutation
    moves an L∞ ball and the [0, 1] box onto the same sets, so verdicts are unchanged."""
    declared, source = _declared_input(net)
    if declared is None:
        return None
    shape = tuple(shape)
    index = np.arange(int(np.prod(shape))).reshape((1,) + shape)
    if index.size != int(np.prod(declared)):
        raise ValueError(f"inputs of shape {shape} do not fit the network's input {declared} ({source})")
    if len(shape) == 3 and shape != declared and (shape[1], shape[2], shape[0]) == declared:
        index = index.transpose(0, 2, 3, 1)
    idx = index.reshape(-1)
    same = declared == shape and np.array_equal(idx, np.arange(idx.size))
    return None if same else (idx, declared)


def run(args):
    names = check_domains(list(dict.fromkeys(args.domain or DEFAULT_DOMAINS)))
    _check_numbers(args)
    net = load_network(args.net)
    x, y = load_inputs(args.inputs)
    if args.n is not None:
        x, y = x[:args.n], y[:args.n]
    if len(x) == 0:
        raise ValueError(f"{args.inputs}: no inputs to certify")
    layout = _layout(net, x.shape[1:])
    if args.spec is not None and layout is not None:  # transformations act on (C, H, W): the net takes them so
        net, layout = nn.Sequential(nn.Permute(layout[0], layout[1], x.shape[1:]), net), None
    if args.spec is not None and x.ndim != 4:
        raise ValueError(f"--spec transforms images (C, H, W); the inputs have shape {x.shape[1:]}")
    x_net = x if layout is None else x.reshape(len(x), -1)[:, layout[0]].reshape((len(x),) + layout[1])
    began = time.perf_counter()
    chunk = max(args.batch_size or 1, CONCRETE_BATCH)
    spans = [(i, (i, start, min(start + chunk, len(x)))) for i, start in enumerate(range(0, len(x), chunk))]
    options = {"eps": args.eps, "names": names, "attack": not args.no_attack, "pgd_steps": args.pgd_steps,
               "batch_size": args.batch_size, "seed": args.seed, "execution": args.execution,
               "alpha": (args.alpha_iterations, args.alpha_lr), "spec": args.spec, "splits": args.splits,
               "bounds": args.bounds}
    parallel.check(args.workers, args.scheduler)
    if args.resume and not args.json:
        raise ValueError("--resume continues the run whose --json PATH is given (its PATH.parts.jsonl)")
    stream = None if not args.json else Parts(args.json + ".parts.jsonl", {
        "net": args.net, "inputs": args.inputs, "n": len(x), "chunk": chunk,
        **{k: (list(v) if isinstance(v, tuple) else v) for k, v in options.items()}})
    done = {} if stream is None else {int(k): _decode_part(v) for k, v in stream.start(args.resume).items()}
    distributed = args.workers is not None or args.scheduler is not None
    progress = _Progress(len(x) * len(names), "certify", enabled=not distributed)
    shared = {"net": net, "x": x_net, "y": y, "options": options}
    for index, part in parallel.run(certify_span, spans, shared=shared, workers=args.workers,
                                    scheduler=args.scheduler, done=done, progress=distributed, what="chunks"):
        done[index] = part
        if stream is not None:
            stream.add(index, _encode_part(part))
        progress.update(len(part[names[0]].verdicts) * len(names))
    progress.close()
    merged = {name: _merge([done[i][name] for i in sorted(done)]) for name in names}
    if layout is not None:  # counterexamples back in the inputs' layout
        for res in merged.values():
            res.counterexamples = [None if p is None else _undo(layout[0], p, x.shape[1:]) for p in res.counterexamples]
    elapsed = time.perf_counter() - began
    what = f"spec={args.spec} (splits {args.splits}, {args.bounds} bounds)  " if args.spec else ""
    print(f"{what}eps={args.eps}  net={args.net}  inputs={args.inputs} ({len(x)})  {elapsed:.1f} s")
    print(_table(merged))
    if args.json:
        text = json.dumps(_json(merged, args, elapsed, x.shape[1:]), indent=1).encode()
        atomic_write(args.json, lambda out: out.write(text))
        stream.finish()
        print(f"wrote {args.json}")
    return 0


def certify_span(shared, span):
    """One work item: certify inputs start..stop−1 (chunk ``index``); PGD's generator is seeded by
    (seed, index), so a chunk's verdicts do not depend on where or in which order chunks run."""
    index, start, stop = span
    o = shared["options"]
    with alpha.use(iterations=o["alpha"][0], lr=o["alpha"][1]):
        return certify(shared["net"], shared["x"][start:stop], shared["y"][start:stop], o["eps"], domain=o["names"],
                       attack=o["attack"], pgd_steps=o["pgd_steps"], batch_size=o["batch_size"],
                       rng=np.random.default_rng([o["seed"], index]), execution=o["execution"],
                       spec=o.get("spec"), splits=o.get("splits", 1), bounds=o.get("bounds", "linear"))


def _encode_part(part: dict) -> dict:
    """{domain: CertifyResult} as JSON (floats exact: Python floats hold float32 and float64 values)."""
    return {name: {"domain": r.domain, "eps": r.eps, "labels": r.labels.tolist(), "predicted": r.predicted.tolist(),
                   "verdicts": list(r.verdicts), "margins": r.margins.astype(float).tolist(),
                   "counterexamples": [None if c is None else [str(np.asarray(c).dtype), list(np.shape(c)),
                                                              np.asarray(c).reshape(-1).tolist()]
                                       for c in r.counterexamples],
                   "times": r.times.tolist(), "attack_seconds": r.attack_seconds,
                   "parameters": r.extra.get("parameters")} for name, r in part.items()}


def _decode_part(data: dict) -> dict:
    from refcert.certify import CertifyResult
    return {name: CertifyResult(d["domain"], d["eps"], np.asarray(d["labels"], dtype=np.int64),
                                np.asarray(d["predicted"], dtype=np.int64), d["verdicts"], np.asarray(d["margins"]),
                                [None if c is None else np.asarray(c[2], dtype=c[0]).reshape(c[1])
                                 for c in d["counterexamples"]],
                                np.asarray(d["times"]), d["attack_seconds"],
                                {} if d.get("parameters") is None else {"parameters": d["parameters"]})
            for name, d in data.items()}


def _undo(layout, point, shape):
    """A point in the net's layout back in the inputs' ``shape`` (``_layout``'s inverse)."""
    flat = np.empty(layout.size, dtype=np.asarray(point).dtype)
    flat[layout] = np.asarray(point).reshape(-1)
    return flat.reshape(shape)


def _merge(parts):
    """One CertifyResult from the per-chunk results of one domain."""
    from refcert.certify import CertifyResult
    if not parts:
        raise ValueError("no inputs to certify")
    first = parts[0]
    extra = {"parameters": sum((p.extra["parameters"] for p in parts), [])} if "parameters" in first.extra else {}
    return CertifyResult(first.domain, first.eps, np.concatenate([p.labels for p in parts]),
                         np.concatenate([p.predicted for p in parts]), sum((p.verdicts for p in parts), []),
                         np.concatenate([p.margins for p in parts]), sum((p.counterexamples for p in parts), []),
                         np.concatenate([p.times for p in parts]), sum(p.attack_seconds for p in parts), extra)
