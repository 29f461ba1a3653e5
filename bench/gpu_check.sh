#!/usr/bin/env bash
# refcert's GPU check as one script, run from the repository root on a machine with CUDA and CuPy:
#   1. install refcert (offline, editable) and print the device;
#   2. the backend-agnostic tests with REFCERT_BACKEND=cupy;
#   3. bench/certify.py on the cupy backend (random and shipped DiffAI nets);
#   4. bench/train_epoch.py on the cupy backend (standard vs DiffAI epoch-time ratio);
#   5. refcert certify of the shipped DiffAI ConvBig on the first $CERT_N MNIST test images (box, deepzono).
# STEPS picks the steps (default "tests bench epoch certify"); "sound" runs bench/soundness.py on cupy and
# "tables" runs bench/sound_tables.sh (the README's certification tables with the sound bounds).
# Optional: TRAIN_S=seconds also trains a DiffAI-box ConvBig on full MNIST (how the shipped one was made).
# Needs MNIST in $REFCERT_DATA/mnist; writes logs (and nets) under $OUT (default gpu_out).  Wheels in .whl/
# (autograd, array-api-strict: test dependencies missing on the GPU image) are installed first.
set -u
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 OPENBLAS_NUM_THREADS=4
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . > "$OUT/install.log" 2>&1 || { cat "$OUT/install.log"; exit 1; }
nvidia-smi -L
python3 -c "import refcert, cupy, numpy; from refcert import backends; print('refcert on', backends.get('cupy').device, 'cupy', cupy.__version__, 'numpy', numpy.__version__)" || exit 1
refcert() { python3 -c "import sys; from refcert.cli import main; sys.exit(main())" "$@"; }

STEPS=${STEPS:-tests bench epoch certify}
has() { case " $STEPS " in *" $1 "*) return 0;; esac; return 1; }

if has tests; then
echo "== agnostic tests on cupy"
REFCERT_BACKEND=cupy timeout ${TEST_S:-70} python3 -m pytest -q -m agnostic -n 6 -p no:cacheprovider -rf > "$OUT/tests_cupy.txt" 2>&1
tail -15 "$OUT/tests_cupy.txt"
fi

if has sound; then
echo "== bench/soundness.py on cupy (sound vs plain bounds)"
REFCERT_BACKEND=cupy timeout ${SOUND_S:-150} python3 bench/soundness.py --skip-points --quick --max-memory-gb 0 --timing-budget ${SOUND_S:-150} 2>&1 | tee "$OUT/bench_soundness.txt"
fi

if has tables; then
echo "== certification tables with sound bounds (bench/sound_tables.sh)"
REFCERT_BACKEND=cupy OUT="$OUT" bash bench/sound_tables.sh
fi

if has bench; then
echo "== bench/certify.py on cupy"
timeout $((${BENCH_S:-120} + 40)) python3 bench/certify.py --backend cupy --max-memory-gb 0 --budget ${BENCH_S:-120} --limit 15 \
  --domains box deepzono hswitch deeppoly crown-ibp --batches 32 256 2>&1 | tee "$OUT/bench_certify.txt"
fi

if has epoch; then
echo "== bench/train_epoch.py on cupy"
REFCERT_BACKEND=cupy timeout ${EPOCH_S:-90} python3 bench/train_epoch.py --methods diffai:box diffai:hbox diffai:hswitch \
  diffai:deepzono pgd --batches 10 2>&1 | tee "$OUT/bench_train_epoch.txt"
fi

if [ "${TRAIN_S:-0}" -gt 0 ]; then
  echo "== DiffAI ConvBig training (${TRAIN_S}s limit; model.npz is rewritten after every epoch)"
  REFCERT_BACKEND=cupy timeout "$TRAIN_S" refcert train --model convbig --data mnist --method diffai --domain box \
    --eps 0.2 --epochs 12 --ramp-epochs 4 --lr-step 9 --batch-size 100 --seed 0 --out "$OUT/convbig" --quiet \
    > "$OUT/train.log" 2>&1
  tail -3 "$OUT/train.log"; rm -f "$OUT/convbig/checkpoint.npz"
fi

has certify || exit 0
echo "== certify the shipped DiffAI ConvBig on cupy (first ${CERT_N:-4000} MNIST test images)"
REFCERT_BACKEND=cupy timeout ${CERT_S:-170} refcert certify --net datasets/weights/convbig_mnist_diffai_box_0.2.npz \
  --inputs mnist:test --n ${CERT_N:-4000} --eps 0.1 --domain box --domain deepzono --json "$OUT/convbig_cert.json" \
  2>&1 | tr '\r' '\n' | grep -v "it/s\|s/it" | tail -8
