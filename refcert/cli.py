"""The ``refcert`` command line: one subcommand module per job, each with ``add_arguments`` and ``run``.

Subcommands are listed in ``COMMANDS`` (name -> module under ``refcert.commands``); a module is
imported only when its command runs, so ``refcert info`` starts fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "demo": ("refcert.commands.demo", "train three ways on shipped data, certify, print the table"),
    "train": ("refcert.commands.train", "train a network (standard, pgd, diffai, crown-ibp)"),
    "certify": ("refcert.commands.certify", "prove robustness of a network on inputs"),
    "verify": ("refcert.commands.verify", "decide a VNN-LIB property on an ONNX network (VNN-COMP result)"),
    "fuzz": ("refcert.commands.fuzz", "differential fuzzing of a verifier against the exact oracle"),
    "certify-path": ("refcert.commands.certify_path", "certify that latent-space paths through a decoder keep one class"),
    "approx": ("refcert.commands.approx", "build a network whose interval analysis approximates f"),
    "info": ("refcert.commands.info", "version, backend, device and dtype"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="refcert", description="certifiable neural networks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        sub_parser.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(sub_parser)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except (ValueError, OSError, RuntimeError) as err:  # user-facing errors: one clear line, no traceback
        print(f"refcert {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
