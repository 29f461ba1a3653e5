"""Subcommands of the refcert CLI (see refcert/cli.py), and the options several of them share."""


def add_alpha_arguments(parser):
    """--alpha-iterations and --alpha-lr: the settings of the alpha-crown domain (refcert.domains.alpha)."""
    from refcert.domains import alpha
    defaults = alpha.Settings()
    parser.add_argument("--alpha-iterations", type=int, default=defaults.iterations, metavar="N",
                        help=f"alpha-crown: gradient steps on the ReLU slopes (default {defaults.iterations}; "
                             "0 gives DeepPoly's bound)")
    parser.add_argument("--alpha-lr", type=float, default=defaults.lr, metavar="LR",
                        help=f"alpha-crown: Adam's step size on the slopes (default {defaults.lr})")


def add_parallel_arguments(parser, items: str, resume_help: str):
    """--workers, --scheduler and --resume: run the command's ``items`` through refcert.parallel."""
    parser.add_argument("--workers", type=int, metavar="N", help=f"run the {items} on a local Dask cluster of N "
                        "processes (one BLAS thread each); needs pip install 'refcert[cluster]'")
    parser.add_argument("--scheduler", metavar="ADDRESS", help=f"run the {items} on a running Dask cluster "
                        "(started with 'dask scheduler' and 'dask worker ADDRESS'), e.g. tcp://10.0.0.1:8786")
    parser.add_argument("--resume", action="store_true", help=resume_help)
