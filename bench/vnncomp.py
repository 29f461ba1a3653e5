"""VNN-COMP 2021 development instances: `refcert verify` against the competition tools' answers.

    python bench/vnncomp.py [--instances ../shared/vnncomp2021/instances.csv] [--scale 0.1] [--out DIR]

Runs ``refcert verify --instances`` (one process, each instance's competition timeout times ``--scale``),
then prints per benchmark: instances, solved (sat or unsat), wrong (sat where the tools agree on unsat or
the reverse), unknown/timeout, and how many each tool solved (from the CSV's answer columns), with the
total at the bottom.  The scale is stated in the output: the tools ran on far faster hardware.
"""
from __future__ import annotations

import argparse
import csv
import pathlib
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from refcert import cli  # noqa: E402

TOOLS = ("a-b-CROWN", "nnenum", "ERAN", "VeriNet", "oval", "Marabou")
SOLVED_WORDS = {"sat", "unsat", "violated", "holds"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", default=str(REPO.parent / "shared" / "vnncomp2021" / "instances.csv"))
    parser.add_argument("--scale", type=float, default=0.1, help="timeout scale factor (default 0.1)")
    parser.add_argument("--out", default="vnncomp-out", help="folder for results.csv and counterexamples")
    args = parser.parse_args(argv)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    cli.main(["verify", "--instances", args.instances, "--out", str(out / "results.csv"),
              "--timeout-scale", str(args.scale)])
    elapsed = time.monotonic() - began
    with open(args.instances, newline="") as stream:
        tools = {(r["onnx"], r["vnnlib"]): r for r in csv.DictReader(stream)}
    with open(out / "results.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    table = {}
    for row in rows:
        entry = table.setdefault(row.get("benchmark", ""), {"n": 0, "solved": 0, "wrong": 0, "open": 0,
                                                               **{t: 0 for t in TOOLS}})
        entry["n"] += 1
        entry["solved"] += row["answer"] in ("sat", "unsat") and row.get("wrong") != "1"
        entry["wrong"] += row.get("wrong") == "1"
        entry["open"] += row["answer"] not in ("sat", "unsat")
        reference = tools.get((row["onnx"], row["vnnlib"]), {})
        for tool in TOOLS:
            entry[tool] += reference.get(tool, "").strip().lower() in SOLVED_WORDS
    total = {key: sum(entry[key] for entry in table.values()) for key in ["n", "solved", "wrong", "open", *TOOLS]}
    header = f"{'benchmark':16} {'n':>3} {'solved':>6} {'wrong':>5} {'open':>4}   " + " ".join(f"{t:>9}" for t in TOOLS)
    print(f"\nrefcert verify, timeouts × {args.scale:g}, {elapsed:.0f} s in all; tools: instances each solved")
    print(header)
    print("-" * len(header))
    for name, entry in sorted(table.items()) + [("total", total)]:
        print(f"{name:16} {entry['n']:>3} {entry['solved']:>6} {entry['wrong']:>5} {entry['open']:>4}   "
              + " ".join(f"{entry[t]:>9}" for t in TOOLS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
