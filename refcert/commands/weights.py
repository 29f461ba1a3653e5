"""``refcert weights``: the shipped trained networks (``refcert.weights``), usable by name as ``--net``.

Prints one row per network: its name, architecture, training method and eps, and what the manifest
records at the certification ``eps``: clean accuracy, accuracy under PGD and certified accuracy per
domain (fractions of ``n`` test images).  ``--path NAME`` prints the file; ``--json`` the manifest.
"""
from __future__ import annotations

import json

from refcert import weights

DOMAINS = ("box", "deeppoly", "deepzono", "alpha-crown")


def add_arguments(parser):
    parser.add_argument("--path", metavar="NAME", help="print the file of the shipped network NAME")
    parser.add_argument("--json", action="store_true", help="print every manifest entry (with name and path) as JSON")


def _percent(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _table() -> str:
    names = weights.names()
    wide = max([34] + [len(name) for name in names])                        # columns fit the longest entry
    model_wide = max([9] + [len(weights.info(name)["model"]) for name in names])
    header = (f"{'name':<{wide}} {'model':<{model_wide}} {'method':<10} {'eps_train':>9} {'eps':>5} {'n':>6} "
              f"{'clean':>7} {'pgd':>7}" + "".join(f" {d:>{max(8, len(d))}}" for d in DOMAINS))
    lines = [header, "-" * len(header)]
    for name in names:
        entry = weights.info(name)
        res = entry.get("results", {})
        method = entry["method"] + (f"-{entry['domain']}" if entry.get("domain") else "")
        eps_train = "-" if entry.get("eps_train") is None else f"{entry['eps_train']:g}"
        lines.append(f"{name:<{wide}} {entry['model']:<{model_wide}} {method:<10} {eps_train:>9} {entry.get('eps', 0):>5g} "
                     f"{res.get('n', 0):>6} {_percent(res.get('clean')):>7} {_percent(res.get('pgd')):>7}"
                     + "".join(f" {_percent(res.get(d)):>{max(8, len(d))}}" for d in DOMAINS))
    return "\n".join(lines)


def run(args):
    if args.path:
        print(weights.path(args.path))
        return 0
    if args.json:
        entries = [{"name": name, "path": str(weights.path(name)), **weights.info(name)} for name in weights.names()]
        print(json.dumps(entries, indent=1))
        return 0
    print(_table())
    print("\naccuracy: clean, under PGD, and certified per domain at eps, as recorded (--json: on which images)")
    print("certify one: refcert certify --net NAME --inputs mnist:test --eps 0.1 --domain deeppoly")
    return 0
