"""``refcert certify-path``: certify that latent-space paths through a decoder keep one class.

Generative (interpolative) specifications, Mirman, Gehr, Vechev (PLDI'21, Sec. 5): encode two images
of one class (or an image and its horizontal flip), take the latent segment z_a → z_b, and certify
decoder∘classifier on it with ``refcert.segment.certify_segment`` for each domain.  Only endpoints
whose decoded image the classifier already labels correctly are used.  Without ``--encoder`` the
inputs file must hold latent codes ``z`` (N, latent) and labels ``y``.

Models to try it on: ``refcert demo`` trains a small autoencoder (its decoder ends in a hard sigmoid,
so the composite stays piecewise linear and ExactLine is exact) and an image classifier on the shipped
MNIST subset (``refcert.generative``), saves them under ``OUT/path/`` and prints the command, e.g.::

    refcert certify-path --encoder demo-out/path/encoder.npz --decoder demo-out/path/decoder.npz \\
        --classifier demo-out/path/classifier.npz --inputs mnist-mini:test --pairs 5
"""
from __future__ import annotations

import io
import json
import os
import time

import numpy as np

from refcert import domains
from refcert.autodiff import Tensor, no_grad
from refcert.commands.certify import load_inputs
from refcert.generative import compose, flip_horizontal, latent_dim
from refcert.io.npz import atomic_write
from refcert.segment import SEGMENT_DOMAINS, certify_segment
from refcert.weights import load_network

DEFAULT_DOMAINS = ["exactline", "approxline", "deepzono", "box"]


def add_arguments(parser):
    parser.add_argument("--decoder", required=True, help="decoder network (.npz, .onnx or a shipped name): z -> image")
    parser.add_argument("--classifier", required=True, help="classifier (.npz, .onnx or shipped name): image -> logits")
    parser.add_argument("--inputs", required=True,
                        help=".npz with x, y (or z, y without --encoder), ERAN .csv, or DATASET:SPLIT with --encoder "
                             "(e.g. mnist-mini:test)")
    parser.add_argument("--encoder", help="encoder network (.npz, .onnx or a shipped name): image -> z")
    parser.add_argument("--pairs", type=int, default=10, help="paths between two images of one class (default 10)")
    parser.add_argument("--flip-pairs", type=int, default=None,
                        help="paths between an image and its horizontal flip (default: as many as --pairs; "
                             "needs --encoder)")
    parser.add_argument("--domain", action="append", metavar="NAME",
                        help="exactline | approxline | approxline:BUDGET | deepzono | box (repeat); "
                             "default: those of exactline, approxline, deepzono, box available")
    parser.add_argument("--budget", type=int, default=100, help="approxline's most parts (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the pair choice")
    parser.add_argument("--plot", metavar="PNG",
                        help="draw one path: the first that the first domain does not certify (needs matplotlib)")
    parser.add_argument("--json", metavar="PATH", help="write per-path results as JSON (atomic)")


def parse_domains(requested, budget: int, explicit: bool) -> list[tuple[str, str, int | None]]:
    """[(key shown, domain, budget)]; an explicitly requested domain that is missing is an error."""
    out = []
    for spec in requested:
        name, _, b = spec.partition(":")
        if name not in SEGMENT_DOMAINS:
            raise ValueError(f"unknown path domain {spec!r}; choose from {', '.join(SEGMENT_DOMAINS)}")
        if b and name != "approxline":
            raise ValueError(f"{spec!r}: only approxline takes a budget")
        if name not in domains.names():
            if explicit:
                raise ValueError(f"domain {name!r} is not available here (have {', '.join(domains.names())})")
            continue
        part_budget = (int(b) if b.isdigit() else -1) if b else budget
        if name == "approxline" and part_budget < 1:
            raise ValueError(f"{spec!r}: the approxline budget must be a positive integer")
        out.append((f"approxline:{part_budget}" if name == "approxline" else name, name,
                    part_budget if name == "approxline" else None))
    return out


def _load_net(spec: str, what: str):
    """The --decoder/--classifier/--encoder network in float64: ``refcert.weights.load_network`` (a file or a
    shipped name; errors name the file)."""
    return load_network(spec, dtype="float64")


def _decoder_input(decoder, path: str) -> int:
    first = decoder.layers[0] if getattr(decoder, "layers", None) else decoder
    if getattr(first, "op", None) != "linear":
        raise ValueError(f"{path}: the decoder must start with a Linear layer taking the latent code")
    return first.in_features


def _predict(net, x: np.ndarray, chunk: int = 256) -> np.ndarray:
    with no_grad():
        return np.concatenate([net(Tensor(x[i:i + chunk])).numpy().argmax(axis=1)
                               for i in range(0, len(x), chunk)]) if len(x) else np.zeros(0, int)


def _encode(encoder, x: np.ndarray, chunk: int = 256) -> np.ndarray:
    with no_grad():
        return np.concatenate([encoder(Tensor(x[i:i + chunk])).numpy() for i in range(0, len(x), chunk)])


def class_pairs(y: np.ndarray, ok: np.ndarray, k: int, rng) -> list[tuple[int, int]]:
    """Up to k disjoint pairs (i, j) of eligible inputs of one class, classes taken in turn."""
    by_class = {}
    for i in rng.permutation(len(y)):
        if ok[i]:
            by_class.setdefault(int(y[i]), []).append(int(i))
    queues = {c: [(v[2 * m], v[2 * m + 1]) for m in range(len(v) // 2)] for c, v in sorted(by_class.items())}
    pairs = []
    while len(pairs) < k and any(queues.values()):
        for c in list(queues):
            if queues[c] and len(pairs) < k:
                pairs.append(queues[c].pop(0))
    return pairs


def certify_paths(net, z_from: np.ndarray, z_to: np.ndarray, labels, specs, skip_unsupported=False) -> dict:
    """{key: [SegmentResult per path]} for each (key, domain, budget) in ``specs``.  With
    ``skip_unsupported`` a domain that raises NotImplementedError is left out (with a note on stdout)."""
    results = {}
    for key, name, budget in specs:
        try:
            results[key] = [certify_segment(net, a, b, int(label), domain=name, budget=budget)
                            for a, b, label in zip(z_from, z_to, labels)]
        except NotImplementedError as err:
            if not skip_unsupported:
                raise
            print(f"{key}: skipped ({err})")
    return results


def summary(results) -> dict:
    fractions = [(r.fractions_lower[r.label], r.fractions_upper[r.label]) for r in results
                 if r.fractions_lower is not None]
    return {"paths": len(results), "certified": sum(r.verdict == "verified" for r in results),
            "falsified": sum(r.verdict == "falsified" for r in results),
            "unknown": sum(r.verdict == "unknown" for r in results),
            "fraction_lower": float(np.mean([f[0] for f in fractions])) if fractions else None,
            "fraction_upper": float(np.mean([f[1] for f in fractions])) if fractions else None,
            "ms_per_path": 1000.0 * float(np.mean([r.seconds for r in results])) if results else 0.0}


def table(results: dict) -> str:
    header = (f"{'domain':<16} {'paths':>5} {'certified':>9} {'falsified':>9} {'unknown':>7} "
              f"{'label fraction [lo, hi]':>24} {'ms/path':>9}")
    lines = [header, "-" * len(header)]
    for key, res in results.items():
        s = summary(res)
        frac = "-" if s["fraction_lower"] is None else f"[{s['fraction_lower']:.3f}, {s['fraction_upper']:.3f}]"
        lines.append(f"{key:<16} {s['paths']:>5} {s['certified']:>9} {s['falsified']:>9} {s['unknown']:>7} "
                     f"{frac:>24} {s['ms_per_path']:>9.1f}")
    return "\n".join(lines)


def _path_json(results: dict, paths: list, p: int) -> dict:
    out = dict(paths[p])
    out["domains"] = {}
    for key, res in results.items():
        r = res[p]
        out["domains"][key] = {
            "verdict": r.verdict, "margin": float(r.margin) if np.isfinite(r.margin) else None,
            "fraction_lower": None if r.fractions_lower is None else float(r.fractions_lower[r.label]),
            "fraction_upper": None if r.fractions_upper is None else float(r.fractions_upper[r.label]),
            "parts": r.parts, "t_counterexample": r.t_counterexample, "ms": 1000.0 * r.seconds}
    return out


def plot_path(path: str, decoder, classifier, z_from, z_to, label: int, title: str, steps: int = 10) -> bool:
    """PNG of ``steps`` decoded images along the path with each one's class; False without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    t = np.linspace(0.0, 1.0, steps)
    z = z_from[None] + t[:, None] * (z_to - z_from)[None]
    with no_grad():
        images = decoder(Tensor(z)).numpy()
        classes = classifier(Tensor(images)).numpy().argmax(axis=1)
    side = int(round(np.sqrt(images.shape[1])))
    fig, axes = plt.subplots(1, steps, figsize=(1.3 * steps, 1.9))
    for ax, image, ti, c in zip(np.atleast_1d(axes), images, t, classes):
        ax.imshow(image.reshape(side, -1) if side * side == images.shape[1] else image[None], cmap="gray",
                  vmin=0, vmax=1)
        ax.set_title(f"t={ti:.2f}\nclass {c}", fontsize=8, color="black" if c == label else "red")
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    atomic_write(path, lambda stream: stream.write(buffer.getvalue()))
    return True


def _latents(args, decoder_in: int):
    """(encoder or None, x or None, z (N, latent), y): encoded images, or the file's own codes z."""
    if args.encoder is None:
        if not (os.path.isfile(args.inputs) and args.inputs.endswith(".npz")):
            raise ValueError(f"{args.inputs}: without --encoder the inputs must be an .npz with arrays z, y")
        with np.load(args.inputs, allow_pickle=False) as data:
            if "z" not in data.files or "y" not in data.files:
                raise ValueError(f"{args.inputs}: without --encoder the file needs arrays z and y (has {data.files})")
            z, y = data["z"].astype(np.float64), data["y"].astype(np.int64)
        if z.ndim != 2 or z.shape[1] != decoder_in or len(z) != len(y):
            raise ValueError(f"{args.inputs}: z has shape {z.shape} and y {y.shape}; "
                             f"the decoder takes latent codes of size {decoder_in}")
        return None, None, z, y
    encoder = _load_net(args.encoder, "encoder")
    if latent_dim(encoder) != decoder_in:
        raise ValueError(f"latent size mismatch: encoder {args.encoder} outputs {latent_dim(encoder)} values "
                         f"but decoder {args.decoder} takes {decoder_in}")
    x, y = load_inputs(args.inputs)
    x = x.astype(np.float64)
    try:
        z = _encode(encoder, x)
    except (ValueError, TypeError, IndexError) as err:
        raise ValueError(f"{args.inputs}: inputs of shape {x.shape[1:]} do not fit the encoder ({err})") from err
    return encoder, x, z, y.astype(np.int64)


def run(args):
    if args.pairs < 0 or (args.flip_pairs is not None and args.flip_pairs < 0):
        raise ValueError("--pairs and --flip-pairs must be >= 0")
    specs = parse_domains(args.domain or DEFAULT_DOMAINS, args.budget, explicit=bool(args.domain))
    decoder = _load_net(args.decoder, "decoder")
    classifier = _load_net(args.classifier, "classifier")
    decoder_in = _decoder_input(decoder, args.decoder)
    net = compose(decoder, classifier)
    try:
        with no_grad():
            classes = net(Tensor(np.zeros((1, decoder_in)))).shape[-1]
    except (ValueError, TypeError, IndexError) as err:
        raise ValueError(f"the decoder's output does not fit the classifier's input ({err})") from err
    encoder, x, z, y = _latents(args, decoder_in)
    if encoder is None and args.flip_pairs:
        raise ValueError("--flip-pairs needs --encoder (the flip is taken in image space)")
    flips = 0 if encoder is None else args.pairs if args.flip_pairs is None else args.flip_pairs
    rng = np.random.default_rng(args.seed)
    if y.size and (y.min() < 0 or y.max() >= classes):
        raise ValueError(f"{args.inputs}: labels {y.min()}..{y.max()} do not fit {classes} classes")
    ok = _predict(net, z) == y
    paths = [{"kind": "class", "i": i, "j": j} for i, j in class_pairs(y, ok, args.pairs, rng)]
    if flips:
        z_flip = _encode(encoder, flip_horizontal(x))
        good = np.nonzero(ok & (_predict(net, z_flip) == y))[0]
        paths += [{"kind": "flip", "i": int(i), "j": int(i)} for i in rng.permutation(good)[:flips]]
    if not paths:
        raise ValueError(f"{args.inputs}: no path to certify (need decoded endpoints the classifier labels "
                         f"correctly; {int(ok.sum())} of {len(y)} are)")
    z_from = np.stack([z[p["i"]] for p in paths])
    z_to = np.stack([z_flip[p["i"]] if p["kind"] == "flip" else z[p["j"]] for p in paths])
    labels = [int(y[p["i"]]) for p in paths]
    for p, label in zip(paths, labels):
        p["label"] = label
    began = time.perf_counter()
    results = certify_paths(net, z_from, z_to, labels, specs, skip_unsupported=not args.domain)
    elapsed = time.perf_counter() - began
    n_class, n_flip = sum(p["kind"] == "class" for p in paths), sum(p["kind"] == "flip" for p in paths)
    print(f"paths={len(paths)} ({n_class} same-class, {n_flip} image-flip; endpoints decoded and classified "
          f"correctly: {int(ok.sum())}/{len(y)})  {elapsed:.1f} s")
    print(table(results))
    if args.json:
        doc = {"decoder": args.decoder, "classifier": args.classifier, "encoder": args.encoder,
               "inputs": args.inputs, "seed": args.seed, "seconds": elapsed,
               "summary": {key: summary(res) for key, res in results.items()},
               "paths": [_path_json(results, paths, p) for p in range(len(paths))]}
        text = json.dumps(doc, indent=1).encode()
        atomic_write(args.json, lambda stream: stream.write(text))
        print(f"wrote {args.json}")
    if args.plot:
        key, res = next(iter(results.items()))  # the first path this domain does not certify, else path 0
        k = next((i for i, r in enumerate(res) if r.verdict != "verified"), 0)
        title = f"path {k} ({paths[k]['kind']}), label {labels[k]}: {res[k].verdict} by {key}"
        if plot_path(args.plot, decoder, classifier, z_from[k], z_to[k], labels[k], title):
            print(f"wrote {args.plot}")
        else:
            print("matplotlib is not installed: skipping --plot")
    return 0
