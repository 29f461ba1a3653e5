"""``refcert train``: train a model-zoo network (standard, pgd, diffai, crown-ibp) and save it.

    refcert train --model convsmall --data mnist --method diffai --domain box --eps 0.1 --out runs/a

Writes ``OUT/model.npz`` (for ``refcert certify``), ``OUT/checkpoint.npz`` and ``OUT/metrics.csv``
after every epoch.  One run at a time uses OUT (``refcert.runs``); a folder holding a run needs
``--resume`` (continue it, nothing lost) or ``--overwrite`` (start again).  Ctrl-C stops after leaving
OUT resumable and prints the command that continues the run.
"""
from __future__ import annotations

import shlex
import sys

import numpy as np

import refcert
from refcert import datasets, models
from refcert.checkpoint import copy_weights
from refcert.train import LOSS_FORMS, METHODS, SCHEDULES, TrainConfig, accuracy, train


def add_arguments(parser):
    options = []  # for resume_command

    def add(*flags, **kwargs):
        options.append(parser.add_argument(*flags, **kwargs))
    add("--model", default="convsmall", choices=models.names(), help="architecture (refcert.models)")
    add("--data", default="mnist-mini", choices=datasets.names(), help="dataset (default mnist-mini)")
    add("--data-root", help="folder holding the dataset files (default: $REFCERT_DATA, ~/.cache/refcert)")
    add("--limit", type=int, help="train on the first N training images only")
    add("--method", default="standard", choices=METHODS)
    add("--domain", default="box", help="diffai: domain of the abstract loss (default box: interval bound "
        "propagation, one pass, an epoch about 3x a standard one, practical on a CPU; zonotope domains such as "
        "hswitch or deepzono give tighter bounds but make an epoch some 500x slower on a CPU, fine on a GPU)")
    add("--eps", type=float, default=0.1, help="final training radius, pixel space (default 0.1)")
    add("--epochs", type=int, default=10)
    add("--batch-size", type=int, default=64)
    add("--lr", type=float, default=1e-3)
    add("--optimizer", default="adam", choices=("adam", "sgd"))
    add("--kappa", type=float, default=0.5, help="final weight of the abstract loss (default 0.5)")
    add("--ramp-epochs", type=float, default=1.0, help="epochs over which eps and kappa ramp up")
    add("--ramp-start", type=float, default=0.0, help="epochs of clean training before the ramp (default 0)")
    add("--schedule", default="linear", choices=SCHEDULES, help="shape of the ramp: linear, or smooth (Shi et al. "
        "NeurIPS'21: (t/m)^4 over the first quarter of the ramp, then linear)")
    add("--loss-form", default="ce", choices=LOSS_FORMS, help="abstract loss form (default ce)")
    add("--lr-step", type=int, default=0, help="decay the learning rate every N epochs (0: never)")
    add("--lr-gamma", type=float, default=0.1, help="learning-rate decay factor")
    add("--clip-grad", type=float, default=1.0, help="gradient-norm clip (0: off)")
    add("--pgd-steps", type=int, default=7, help="pgd method: attack steps per batch")
    add("--spec", default="", metavar="SPEC", help="train for a geometric specification (as certify --spec, e.g. "
        "rotate:15): clean images randomly transformed; diffai/crown-ibp's abstract loss on a random piece of "
        "the parameter box per image (interval pixel bounds), plus the --eps ball (use --eps 0 for none)")
    add("--splits", type=int, default=1, help="--spec: the abstract loss's piece is 1/SPLITS of each parameter's "
        "range (certify with the same --splits)")
    add("--seed", type=int, default=0, help="seed of the initial weights, data order and PGD")
    add("--out", default="run", help="output folder (default ./run)")
    add("--resume", action="store_true", help="continue the run saved in --out")
    add("--overwrite", action="store_true", help="start again in an --out that holds a run (deletes its model.npz, "
        "checkpoint.npz and metrics.csv)")
    add("--init-scheme", default="default", choices=models.INITS, help="initial weights: PyTorch's default, or "
        "ibp (Shi et al. NeurIPS'21: N(0, (sqrt(2 pi)/fan-in)^2), biases 0, interval widths stable with depth)")
    add("--init", metavar="NET.npz", help="start from these weights (a refcert.save file of the same --model), "
        "e.g. a standard-trained net to fine-tune with diffai")
    add("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(_options=options)


def resume_command(args) -> str:
    """The command that continues this run: ``refcert train``, the options that differ from their
    defaults (so the same settings), ``--resume`` and no ``--overwrite``."""
    words = ["refcert", "train"]
    for action in args._options:
        value = getattr(args, action.dest)
        if action.dest not in ("resume", "overwrite") and value != action.default:
            words += action.option_strings[:1] + ([] if action.nargs == 0 else [str(value)])
    return shlex.join(words + ["--resume"])


def run(args):
    net = models.get(args.model, args.data, seed=args.seed, init=args.init_scheme)
    if args.init:  # a checkpoint found by --resume replaces these weights
        copy_weights(net, refcert.load(args.init), f"--init {args.init}")
    config = TrainConfig(method=args.method, domain=args.domain, eps=args.eps, epochs=args.epochs,
                         batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer, kappa=args.kappa,
                         ramp_epochs=args.ramp_epochs, ramp_start=args.ramp_start, schedule=args.schedule,
                         loss_form=args.loss_form, lr_step=args.lr_step,
                         lr_gamma=args.lr_gamma, clip_grad=args.clip_grad, pgd_steps=args.pgd_steps,
                         seed=args.seed, spec=args.spec, splits=args.splits).check()
    x, y = datasets.load(args.data, "train", root=args.data_root)
    x_test, y_test = datasets.load(args.data, "test", root=args.data_root)
    if args.limit is not None:
        if args.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {args.limit}")
        x, y = x[:args.limit], y[:args.limit]
    try:
        rows = train(net, x, y, config, out=args.out, resume=args.resume, overwrite=args.overwrite,
                     val=(x_test[:1000], y_test[:1000]), progress=not args.quiet)
    except KeyboardInterrupt:
        print(f"\nrefcert train: interrupted; {args.out} keeps every finished epoch. To continue:\n"
              f"{resume_command(args)}", file=sys.stderr)
        return 130
    test_accuracy = accuracy(net, x_test, y_test)
    done = rows[-1]["epoch"] if rows else 0
    print(f"{args.model} on {args.data}, {args.method}: {done} epochs, test accuracy {100 * test_accuracy:.1f}% "
          f"({len(y_test)} images); model in {args.out}/model.npz")
    what = f"--spec {args.spec} --splits {args.splits} --domain deeppoly" if args.spec else "--domain deepzono"
    print(f"certify it: refcert certify --net {args.out}/model.npz --inputs INPUTS --eps {args.eps} {what}")
    return 0 if np.isfinite(test_accuracy) else 1
