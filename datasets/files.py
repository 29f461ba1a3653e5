"""Where dataset files are looked for, and how missing ones are fetched (DESIGN.md, "Data").

Search order for each file: an explicit ``root=`` (only there, when given); otherwise ``$REFCERT_DATA``,
the user cache ``$XDG_CACHE_HOME/refcert`` (default ``~/.cache/refcert``), the system folder
``/usr/share/datasets`` (Debian's ``dataset-*`` packages), then a download into the cache where the
network allows and a checksum is known.  In each folder a file may sit in the dataset's own
subfolder (``mnist/``, ``fashion-mnist/``, ``cifar-10-batches-bin/``) or directly in it.
"""
from __future__ import annotations

import os
import pathlib
import urllib.error
import urllib.request

from refcert.io.npz import atomic_write


class DatasetNotFound(FileNotFoundError):
    """A dataset file found nowhere; the message lists where it was looked for and what to do."""


def cache_dir() -> pathlib.Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "refcert"


def search_dirs(root=None) -> list[pathlib.Path]:
    """The folders searched, in order."""
    if root is not None:
        return [pathlib.Path(root)]
    dirs = []
    if os.environ.get("REFCERT_DATA"):
        dirs.append(pathlib.Path(os.environ["REFCERT_DATA"]))
    return dirs + [cache_dir(), pathlib.Path("/usr/share/datasets")]


def candidates(folder: pathlib.Path, subdir: str, names: list[str]) -> list[pathlib.Path]:
    return [place / name for place in (folder / subdir, folder) for name in names]


def find(subdir: str, names: list[str], root=None) -> pathlib.Path | None:
    """The first existing file among ``names`` (alternative spellings of one file) in the search order."""
    for folder in search_dirs(root):
        for path in candidates(folder, subdir, names):
            if path.is_file():
                return path
    return None


def download(urls: list[str], target: pathlib.Path, timeout: float = 30.0) -> pathlib.Path | None:
    """Fetch the first URL that answers into ``target`` (atomically); None when none can be reached.

    The caller verifies the checksum of what arrived; nothing here trusts the network.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                data = response.read()
        except (urllib.error.URLError, OSError, ValueError):
            continue
        atomic_write(target, lambda stream: stream.write(data))
        return target
    return None


def not_found_message(dataset: str, subdir: str, names: list[str], root=None, hint: str = "") -> str:
    places = ", ".join(str(folder / subdir) for folder in search_dirs(root))
    return (f"dataset {dataset!r}: file {names[0]} not found (looked in {places}; the file may also sit "
            f"directly in those folders). Put the official files there, or set REFCERT_DATA=DIR with "
            f"DIR/{subdir}/{names[0]}. {hint}").strip()
