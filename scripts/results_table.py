"""Print a Markdown results table from ``refcert certify --json`` files (one row per net and ε).

    python scripts/results_table.py runs/cert_*.json

Rows are grouped by (net, ε, number of inputs); each file may hold several domains.  Columns: n, clean accuracy,
PGD accuracy (1 − falsified: a verified input has no counterexample, every other input was attacked),
and % verified per domain with its ms per image.
"""
from __future__ import annotations

import json
import sys


def rows(paths):
    table = {}
    for path in paths:
        with open(path) as stream:
            report = json.load(stream)
        for domain, result in report["domains"].items():
            summary = result["summary"]
            key = (report["net"], report["eps"], summary["n"])
            row = table.setdefault(key, {"n": summary["n"], "clean": summary["accuracy"], "domains": {}})
            row["pgd"] = min(row.get("pgd", 1.0), 1.0 - summary["falsified"])
            row["domains"][domain] = (summary["verified"], summary["ms_per_image"])
    return table


def main(argv=None) -> int:
    table = rows(argv if argv is not None else sys.argv[1:])
    names = sorted({d for row in table.values() for d in row["domains"]})
    print("| net | ε | n | clean | PGD | " + " | ".join(f"{d} (ms/img)" for d in names) + " |")
    print("|---" * (5 + len(names)) + "|")
    for (net, eps, _), row in sorted(table.items(), key=lambda item: (item[0][1], item[0][0], -item[0][2])):
        cells = [f"{100 * row['domains'][d][0]:.1f}% ({row['domains'][d][1]:.0f})" if d in row["domains"] else "-"
                 for d in names]
        print(f"| {net} | {eps} | {row['n']} | {100 * row['clean']:.1f}% | {100 * row['pgd']:.1f}% | "
              + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
