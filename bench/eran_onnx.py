"""The README's line "Verified of the first 20 ERAN MNIST test images, ε = 0.02, ERAN's ONNX nets".

    python bench/eran_onnx.py [--shared ../shared] [--n 20] [--eps 0.02]

Loads the two MNIST ONNX nets (ERAN's, as the DNNV benchmarks ship them) from SHARED/networks and ERAN's
MNIST test CSV from SHARED/datasets/eran, certifies the first N images (no attack) with box, deepzono,
crown-ibp and deeppoly, and prints the verified counts.  The guarantee covers float32 executions, as the
files are float32, unless a net has weights outside float32's normal range (convSmall has subnormal
weights, whose float32 products depend on flush-to-zero): then float64 executions, and the line says so.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import refcert  # noqa: E402
from refcert.datasets.eran import read_eran_csv  # noqa: E402

NETS = {"mnist_relu_3_50": "dnnv__mnist_relu_3_50.onnx", "convSmall": "dnnv__convSmallRELU__Point.onnx"}
DOMAINS = ("box", "deepzono", "crown-ibp", "deeppoly")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=str(REPO.parent / "shared"))
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--eps", type=float, default=0.02)
    args = parser.parse_args(argv)
    shared = pathlib.Path(args.shared)
    x, y = read_eran_csv(shared / "datasets" / "eran" / "mnist_test.csv")
    x, y = x[:args.n], y[:args.n]
    for name, file in NETS.items():
        net = refcert.load_onnx(shared / "networks" / file)
        shape = tuple(net.input_shape)
        try:
            refcert.nn.check_range(net, "float32")
            execution = "float32"
        except ValueError:  # e.g. subnormal float32 weights: the guarantee is given for float64 executions
            execution = "float64"
        results = refcert.certify(net, x.reshape((len(x),) + shape), y, args.eps, domain=list(DOMAINS), attack=False,
                                  batch_size=1, execution=execution)
        counts = " / ".join(str(results[d].verdicts.count("verified")) for d in DOMAINS)
        print(f"{name}: {counts}  (clean accuracy {results[DOMAINS[0]].accuracy:.2f}; {' / '.join(DOMAINS)}; "
              f"{execution} executions)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
