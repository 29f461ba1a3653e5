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
