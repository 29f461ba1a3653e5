#!/usr/bin/env bash
# The README's full-MNIST certification tables, re-run with the sound (floating-point) bounds: every
# shipped ConvSmall at eps 0.1 on all 10,000 test images (box, deeppoly, deepzono), the eps 0.3 rows as
# in the README (DiffAI on 10,000; standard and PGD on the first 1,000, DeepZono on the first 200), and
# the DiffAI ConvBig at eps 0.1 on the first 500.  Needs MNIST in $REFCERT_DATA/mnist.  On a GPU set
# REFCERT_BACKEND=cupy.  JSON per run and a summary (scripts/results_table.py) under $OUT/tables.
set -u
OUT=${OUT:-gpu_out}; mkdir -p "$OUT/tables"
W=datasets/weights
refcert() { python3 -c "import sys; from refcert.cli import main; sys.exit(main())" "$@"; }
run() {  # name eps n batch domains...  (PAR runs at a time, in the background)
  local name=$1 eps=$2 n=$3 batch=$4; shift 4
  local args=(); for d in "$@"; do args+=(--domain "$d"); done
  while [ "$(jobs -rp | wc -l)" -ge "${PAR:-1}" ]; do sleep 1; done
  ( timeout ${RUN_S:-240} refcert certify --net $W/$name.npz --inputs mnist:test --n $n --eps $eps "${args[@]}" \
      --batch-size $batch --json "$OUT/tables/${name}_${eps}_$(echo "$@" | tr ' ' '+')_$n.json" > /dev/null 2>&1 \
      || echo "   $name eps $eps n $n $*: failed or timed out" ) &
}
B=${BATCH:-64}
for net in convsmall_mnist_diffai_box_0.2 convsmall_mnist_diffai_box_0.1 convsmall_mnist_pgd_0.1 convsmall_mnist_standard; do
  run $net 0.1 10000 $B box deeppoly deepzono
done
run convsmall_mnist_diffai_box_0.3 0.3 10000 $B box deeppoly deepzono
for net in convsmall_mnist_pgd_0.3 convsmall_mnist_standard; do
  run $net 0.3 1000 $B box deeppoly; run $net 0.3 200 $B deepzono
done
run convbig_mnist_diffai_box_0.2 0.1 500 ${BIG_BATCH:-32} box deeppoly deepzono
wait
python3 scripts/results_table.py "$OUT"/tables/*.json | tee "$OUT/tables/summary.txt"
