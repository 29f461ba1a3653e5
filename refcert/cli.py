"""The ``refcert`` command line: one subcommand module per job, each with ``add_arguments`` and ``run``.

Subcommands are listed in ``COMMANDS`` (name -> module under ``refcert.commands``).  Only the module of
the command being run is imported (``refcert --help`` imports none), so a command whose optional
dependency is missing cannot break the others.  ``args.started`` is the process's start on the
``time.monotonic`` clock (the call's, when ``main`` is given argv): time limits (``verify --timeout``)
count from it, start-up included.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

COMMANDS = {
    "demo": ("refcert.commands.demo", "train three ways on shipped data, certify, print the table"),
    "train": ("refcert.commands.train", "train a network (standard, pgd, diffai, crown-ibp)"),
    "certify": ("refcert.commands.certify", "prove robustness of a network on inputs"),
    "verify": ("refcert.commands.verify", "decide a VNN-LIB property on a network (VNN-COMP result)"),
    "weights": ("refcert.commands.weights", "list the shipped trained networks (names for --net)"),
    "fuzz": ("refcert.commands.fuzz", "differential fuzzing of a verifier against the exact oracle"),
    "certify-path": ("refcert.commands.certify_path", "certify that latent-space paths through a decoder keep one class"),
    "approx": ("refcert.commands.approx", "build a network whose interval analysis approximates f"),
    "info": ("refcert.commands.info", "version, backend, device and dtype"),
}

# What a missing third-party module means for the user: the extra that installs it.
EXTRAS = {"onnx": "onnx", "onnxruntime": "onnx", "scipy": "exact", "matplotlib": "plot", "maraboupy": "fuzz",
          "cupy": "gpu", "tqdm": "cluster", "dask": "cluster", "distributed": "cluster"}


def process_started() -> float:
    """When this process started, on the ``time.monotonic`` clock (Linux: from /proc; else about now)."""
    now = time.monotonic()
    try:
        with open("/proc/self/stat") as stream:
            start_ticks = int(stream.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as stream:
            uptime = float(stream.read().split()[0])
        age = uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return now
    return now - age if 0.0 <= age < 600.0 else now


def _version() -> str:
    from importlib import metadata
    try:
        return metadata.version("refcert")
    except metadata.PackageNotFoundError:
        return "unknown"


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s module is imported to add its arguments (None: all of them)."""
    parser = argparse.ArgumentParser(prog="refcert", description="certifiable neural networks")
    parser.add_argument("--version", action="version", version=f"refcert {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        sub_parser.set_defaults(_module=module)
        if command is None or name == command:
            _import(name, module).add_arguments(sub_parser)
    return parser


def _missing(err: ModuleNotFoundError) -> str | None:
    """'needs the optional package X ...; pip install ...' when err is a missing optional dependency."""
    top = (err.name or "").split(".")[0]
    if top not in EXTRAS:
        return None
    hint = f"pip install 'refcert[{EXTRAS[top]}]'" if EXTRAS[top] else f"pip install {top}"
    return f"needs the optional package {top!r}, which is not installed; {hint}"


def _import(name: str, module: str):
    """Import a command's module; a missing optional dependency becomes a one-line error naming the extra."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        message = _missing(err)
        if message is None:
            raise
        raise CommandUnavailable(f"refcert {name} {message}") from err


class CommandUnavailable(RuntimeError):
    """A command's optional dependency is missing."""


def _chosen(argv: list[str]) -> str | None:
    """The subcommand named in argv (the first argument that is one), without importing anything."""
    for token in argv:
        if token in COMMANDS:
            return token
        if not token.startswith("-"):
            return None
    return None


def main(argv=None) -> int:
    # Time limits count from the process's start when run as the ``refcert`` command; when main() is
    # called from Python (tests, notebooks) the process is older than the call, so count from the call.
    started = process_started() if argv is None else time.monotonic()
    argv = list(sys.argv[1:] if argv is None else argv)
    command = _chosen(argv)
    try:
        parser = build_parser(command) if command else build_parser("")
        args = parser.parse_args(argv)
    except CommandUnavailable as err:
        print(f"refcert: error: {err}", file=sys.stderr)
        return 1
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    args.started = started
    try:
        return int(_import(args.command, args._module).run(args) or 0)
    except (ValueError, OSError, RuntimeError) as err:  # user-facing errors: one clear line, no traceback
        print(f"refcert {args.command}: error: {err}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as err:  # an optional dependency imported inside a command
        message = _missing(err)
        if message is None:
            raise
        print(f"refcert {args.command}: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\nrefcert {args.command}: interrupted", file=sys.stderr)
        return 130

if __name__ == "__main__":
    sys.exit(main())
