"""Generative specifications benchmark: certify latent-space paths of an MNIST autoencoder.

Trains (or loads with --load PREFIX) a small autoencoder with a piecewise-linear (hard-sigmoid)
decoder and a fully connected classifier on ``mnist-mini``, then certifies K paths (same-class pairs
and image/flip pairs of test images) with box, deepzono (when available), approxline at two budgets
and exactline, and prints one table: where the line domains decide what box/deepzono cannot.

    python bench/paths.py --pairs 10 --flip-pairs 10 --save /tmp/ae   # also writes /tmp/ae_{enc,dec,net,inputs}.npz
    python bench/paths.py --diffai-eps 0.05                            # DiffAI-trained classifier (refcert.train)
    refcert certify-path --encoder /tmp/ae_enc.npz --decoder /tmp/ae_dec.npz --classifier /tmp/ae_net.npz \\
        --inputs /tmp/ae_inputs.npz --pairs 5
"""
from __future__ import annotations

import argparse
import os
import time

for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # one BLAS thread: on a shared
    os.environ.setdefault(_name, "1")  # 2-core machine threaded BLAS made the timings ~6x slower and noisy

import numpy as np  # noqa: E402

import refcert  # noqa: E402
from refcert import datasets, domains  # noqa: E402
from refcert import generative as g  # noqa: E402
from refcert.commands.certify_path import certify_paths, class_pairs, table  # noqa: E402


def _data():
    try:
        return datasets.load("mnist-mini", "train"), datasets.load("mnist-mini", "test")
    except Exception as err:  # noqa: BLE001  (any missing loader/data: fall back to the ERAN CSV)
        from refcert.datasets.eran import read_eran_csv
        print(f"mnist-mini unavailable ({err}); using ERAN's mnist_test.csv")
        x, y = read_eran_csv("/work/shared/datasets/eran/mnist_test.csv")
        return (x[:80], y[:80]), (x[80:], y[80:])


def _classifier(x, y, epochs, seed, diffai_eps):
    """Standard training (generative.train_classifier), or DiffAI (refcert.train, box domain) when eps > 0."""
    net = g.classifier(hidden=100, seed=seed)
    if diffai_eps > 0:
        from refcert.train import TrainConfig, train
        config = TrainConfig(method="diffai", domain="box", eps=diffai_eps, epochs=epochs, seed=seed,
                             ramp_epochs=max(1.0, epochs / 3))
        train(net, x, y, config, progress=False)
        return net, f"DiffAI (refcert.train, box, eps {diffai_eps}, {epochs} epochs)"
    losses = g.train_classifier(x, y, net, epochs=epochs, seed=seed)
    return net, f"standard training (Adam, cross-entropy, {epochs} epochs), final loss {losses[-1]:.3f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=10, help="same-class paths")
    parser.add_argument("--flip-pairs", type=int, default=10, help="image/flip paths")
    parser.add_argument("--latent", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--diffai-eps", type=float, default=0.0,
                        help="train the classifier with DiffAI (refcert.train, box) at this eps (0: standard)")
    parser.add_argument("--save", metavar="PREFIX", help="write PREFIX_enc/_dec/_net/_inputs.npz")
    parser.add_argument("--load", metavar="PREFIX", help="load PREFIX_enc/_dec/_net.npz instead of training")
    args = parser.parse_args(argv)
    (x, y), (xt, yt) = _data()
    began = time.perf_counter()
    if args.load:
        enc, dec, clf = (refcert.load(f"{args.load}_{k}.npz") for k in ("enc", "dec", "net"))
        how = f"loaded from {args.load}_*.npz"
    else:
        enc, dec = g.autoencoder(args.latent, args.hidden, seed=args.seed)
        ae = g.train_autoencoder(x, enc, dec, epochs=args.epochs, seed=args.seed)
        clf, how = _classifier(x, y, args.epochs, args.seed, args.diffai_eps)
        how = f"autoencoder MSE {ae[0]:.4f} -> {ae[-1]:.4f}; classifier: {how}"
    print(f"trained/loaded in {time.perf_counter() - began:.1f} s: {how}")
    if args.save:
        for key, net in (("enc", enc), ("dec", dec), ("net", clf)):
            refcert.save(net, f"{args.save}_{key}.npz")
        refcert.io.npz.atomic_write(f"{args.save}_inputs.npz", lambda s: np.savez(s, x=xt[:200], y=yt[:200]))
        print(f"saved {args.save}_enc.npz {args.save}_dec.npz {args.save}_net.npz {args.save}_inputs.npz")
    for net in (enc, dec, clf):
        net.astype("float64")
    xt = xt.astype(np.float64)
    accuracy = float(np.mean(clf(xt).numpy().argmax(1) == yt))
    net = g.compose(dec, clf)
    z, z_flip = enc(xt).numpy(), enc(g.flip_horizontal(xt)).numpy()
    ok = net(z).numpy().argmax(1) == yt
    ok_flip = ok & (net(z_flip).numpy().argmax(1) == yt)
    print(f"classifier test accuracy {accuracy:.3f}; decoded reconstructions classified correctly "
          f"{ok.mean():.3f} (flip pairs available: {int(ok_flip.sum())})")
    rng = np.random.default_rng(args.seed)
    pairs = class_pairs(yt, ok, args.pairs, rng)
    flips = rng.permutation(np.nonzero(ok_flip)[0])[:args.flip_pairs]
    z_from = np.concatenate([z[[i for i, _ in pairs]], z[flips]])
    z_to = np.concatenate([z[[j for _, j in pairs]], z_flip[flips]])
    labels = [int(yt[i]) for i, _ in pairs] + [int(yt[i]) for i in flips]
    specs = [(name, name, None) for name in ("box", "deepzono") if name in domains.names()]
    specs += [("approxline:20", "approxline", 20), ("approxline:100", "approxline", 100),
              ("exactline", "exactline", None)]
    if "deepzono" not in domains.names():
        print("deepzono: not available in this checkout (refcert.domains.zonotope missing): skipped")
    began = time.perf_counter()
    results = certify_paths(net, z_from, z_to, labels, specs, skip_unsupported=True)
    print(f"{len(labels)} paths ({len(pairs)} same-class, {len(flips)} image-flip), latent {z.shape[1]}, "
          f"decoder {args.latent}-{args.hidden}-{2 * 784}-784 (hard sigmoid), classifier 784-100-10; "
          f"{time.perf_counter() - began:.1f} s")
    print(table(results))
    if "exactline" in results:
        parts = [r.parts for r in results["exactline"]]
        print(f"exactline pieces per path: median {int(np.median(parts))}, max {max(parts)}")


if __name__ == "__main__":
    main()
