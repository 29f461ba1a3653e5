"""``refcert info``: version, active backend, device and default dtype."""
import os

import numpy as np

import refcert
from refcert import backends


def add_arguments(parser):
    parser.add_argument("--backend", help="report on this backend instead of the active one")


def run(args):
    backend = backends.get(args.backend) if args.backend else backends.current()
    print(f"refcert   {refcert.__version__}")
    print(f"backend   {backend.name}  (available: {', '.join(backends.names())}; set REFCERT_BACKEND)")
    print(f"device    {backend.device}")
    print(f"dtype     {os.environ.get('REFCERT_DTYPE', 'float32')} (parameters), inputs keep their own")
    print(f"numpy     {np.__version__}")
    print(f"domains   {', '.join(refcert.domains.names())}")
    return 0
