"""Subcommands of the refcert CLI (see refcert/cli.py)."""
