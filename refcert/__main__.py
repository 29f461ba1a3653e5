"""``python -m refcert ...``: the same as the ``refcert`` command."""
import sys

from refcert.cli import main

sys.exit(main())
