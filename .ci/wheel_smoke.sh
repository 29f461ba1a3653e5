#!/usr/bin/env bash
# What a user installs, tested as a user runs it: build the wheel, install it into a fresh virtual
# environment (no editable install, no checkout on the path) and run the CLI from a folder outside the
# checkout: --help, info, weights, demo --quick, certify-path on the demo's models and certify on a
# shipped net.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python -m pip wheel -q --no-deps -w "$work/dist" "$repo"
python -m venv "$work/venv"
bin="$work/venv/bin"
"$bin/python" -m pip install -q "$work"/dist/refcert-*.whl
cd "$work"
where=$(PYTHONPATH= "$bin/python" -c "import os, refcert; print(os.path.realpath(refcert.__file__))")
case "$where" in
  "$(realpath "$work")/venv/"*) echo "wheel smoke: refcert imported from the fresh venv" ;;
  *) echo "wheel smoke: refcert was imported from $where, not from the fresh venv" >&2; exit 1 ;;
esac
run() { echo "+ refcert $*"; PYTHONPATH= "$bin/refcert" "$@"; }
run --help > /dev/null
run --version
run info
run weights
run demo --quick --out "$work/demo"
run certify-path --encoder "$work/demo/path/encoder.npz" --decoder "$work/demo/path/decoder.npz" \
    --classifier "$work/demo/path/classifier.npz" --inputs mnist-mini:test --pairs 2
run certify --net convsmall_mnist_diffai_box_0.1 --inputs mnist-mini:test --n 20 --eps 0.1 --domain box --domain deeppoly
echo "wheel smoke: passed"
