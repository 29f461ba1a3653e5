"""The README's picture of a geometric specification: writes bench/geometric.png (NumPy and zlib only).

    python bench/geometric_picture.py [--spec rotate:15] [--index 9]

Five panels, left to right, for one shipped MNIST test image (mnist-mini): the image, its transformations
at the two ends of the parameter box (for rotate:15, −15° and +15°), then the width of each pixel's bound
over the whole box in one piece — (a) interval bounds (hi − lo) and (b) DeepG's linear bounds (2c, the
band around the plane A p + b).  Gray levels 0 (black) to 1 (white) for images and widths alike.
Prints the mean widths.
"""
from __future__ import annotations

import argparse
import pathlib
import struct
import sys
import zlib

import numpy as np

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from refcert import datasets, geometric  # noqa: E402

SCALE, GAP = 6, 8


def write_png(path, gray):
    """An 8-bit grayscale PNG of ``gray`` (H, W) in [0, 1]."""
    pixels = (np.clip(gray, 0, 1) * 255 + 0.5).astype(np.uint8)
    raw = b"".join(b"\x00" + row.tobytes() for row in pixels)
    chunk = lambda kind, data: (struct.pack(">I", len(data)) + kind + data  # noqa: E731
                                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    header = struct.pack(">IIBBBBB", pixels.shape[1], pixels.shape[0], 8, 0, 0, 0, 0)
    pathlib.Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                                   + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="rotate:15")
    parser.add_argument("--index", type=int, default=9)
    args = parser.parse_args(argv)
    x, _ = datasets.load("mnist-mini", "test")
    image = x[args.index].astype(np.float64)
    geo = geometric.parse(args.spec)
    lo, hi = geometric.interval_bounds(image, geo, geo.lower, geo.upper)
    _, _, c = geometric.linear_bounds(image, geo, geo.lower, geo.upper)
    panels = [image[0], geometric.transform(image, geo, geo.lower)[0], geometric.transform(image, geo, geo.upper)[0],
              (hi - lo)[0], 2 * c.reshape(image.shape)[0]]
    big = [np.kron(p, np.ones((SCALE, SCALE))) for p in panels]
    gap = np.ones((big[0].shape[0], GAP))
    picture = np.concatenate(sum(([p, gap] for p in big), [])[:-1], axis=1)
    out = pathlib.Path(__file__).with_name("geometric.png")
    write_png(out, picture)
    print(f"{args.spec}, image {args.index}: mean width (a) interval {np.mean(hi - lo):.3f}, (b) linear "
          f"{np.mean(2 * c):.3f}; wrote {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
