"""``refcert train``: train a model-zoo network (standard, pgd, diffai, crown-ibp) and save it.

    refcert train --model convsmall --data mnist --method diffai --domain hswitch --eps 0.1 --out runs/a

Writes ``OUT/model.npz`` (for ``refcert certify``), ``OUT/checkpoint.npz`` and ``OUT/metrics.csv``
after every epoch; ``--resume`` continues a stopped run in OUT with nothing lost.
"""
from __future__ import annotations

import numpy as np

import refcert
from refcert import datasets, models
from refcert.checkpoint import copy_weights
from refcert.train import LOSS_FORMS, METHODS, TrainConfig, accuracy, train


def add_arguments(parser):
    parser.add_argument("--model", default="convsmall", choices=models.names(), help="architecture (refcert.models)")
    parser.add_argument("--data", default="mnist-mini", choices=datasets.names(), help="dataset (default mnist-mini)")
    parser.add_argument("--data-root", help="folder holding the dataset files (default: $REFCERT_DATA, ~/.cache/refcert)")
    parser.add_argument("--limit", type=int, help="train on the first N training images only")
    parser.add_argument("--method", default="standard", choices=METHODS)
    parser.add_argument("--domain", default="hswitch", help="diffai: domain of the abstract loss (default hswitch)")
    parser.add_argument("--eps", type=float, default=0.1, help="final training radius, pixel space (default 0.1)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--optimizer", default="adam", choices=("adam", "sgd"))
    parser.add_argument("--kappa", type=float, default=0.5, help="final weight of the abstract loss (default 0.5)")
    parser.add_argument("--ramp-epochs", type=float, default=1.0, help="epochs over which eps and kappa ramp up")
    parser.add_argument("--loss-form", default="ce", choices=LOSS_FORMS, help="abstract loss form (default ce)")
    parser.add_argument("--lr-step", type=int, default=0, help="decay the learning rate every N epochs (0: never)")
    parser.add_argument("--lr-gamma", type=float, default=0.1, help="learning-rate decay factor")
    parser.add_argument("--clip-grad", type=float, default=1.0, help="gradient-norm clip (0: off)")
    parser.add_argument("--pgd-steps", type=int, default=7, help="pgd method: attack steps per batch")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial weights, data order and PGD")
    parser.add_argument("--out", default="run", help="output folder (default ./run)")
    parser.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    parser.add_argument("--init", metavar="NET.npz", help="start from these weights (a refcert.save file of the "
                        "same --model), e.g. a standard-trained net to fine-tune with diffai")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args):
    config = TrainConfig(method=args.method, domain=args.domain, eps=args.eps, epochs=args.epochs,
                         batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer, kappa=args.kappa,
                         ramp_epochs=args.ramp_epochs, loss_form=args.loss_form, lr_step=args.lr_step,
                         lr_gamma=args.lr_gamma, clip_grad=args.clip_grad, pgd_steps=args.pgd_steps,
                         seed=args.seed).check()
    x, y = datasets.load(args.data, "train", root=args.data_root)
    x_test, y_test = datasets.load(args.data, "test", root=args.data_root)
    if args.limit is not None:
        if args.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {args.limit}")
        x, y = x[:args.limit], y[:args.limit]
    net = models.get(args.model, args.data, seed=args.seed)
    if args.init and not args.resume:
        copy_weights(net, refcert.load(args.init), f"--init {args.init}")
    rows = train(net, x, y, config, out=args.out, resume=args.resume, val=(x_test[:1000], y_test[:1000]),
                 progress=not args.quiet)
    test_accuracy = accuracy(net, x_test, y_test)
    done = rows[-1]["epoch"] if rows else 0
    print(f"{args.model} on {args.data}, {args.method}: {done} epochs, test accuracy {100 * test_accuracy:.1f}% "
          f"({len(y_test)} images); model in {args.out}/model.npz")
    print(f"certify it: refcert certify --net {args.out}/model.npz --inputs INPUTS --eps {args.eps} --domain deepzono")
    return 0 if np.isfinite(test_accuracy) else 1
