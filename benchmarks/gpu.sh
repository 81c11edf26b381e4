#!/usr/bin/env bash
# Every GPU figure of issue 4 in one go, on a fresh GPU machine (Python 3.12, torch 2.11, no network), in < 9 min.
#
# Here, once (network needed):   bash benchmarks/fetch_wheels.sh
#   -> wheels/ (airbench + fallbacks), .local/cifar10-jpeg.tar.gz, .local/COMMIT; all git-ignored, ~25 MiB.
# Then the device tool's call (results come back from $OUT: the JSON files and gpu-log.txt):
#   run(command="bash benchmarks/gpu.sh", carry=[".local", "wheels"], timeout_s=600)
# Without $OUT (on any CUDA machine) results go to benchmarks/results/.
# Dry run without a GPU, at a tiny scale:
#   PYTHON=.venv/bin/python DEVICE=cpu SEEDS=1 OUT=/tmp/gpuout STREAM_ARGS=skip \
#     TTA_EXTRA="--train-subset 500 --test-subset 200 --epochs 1 --batch-size 128" bash benchmarks/gpu.sh
#
# Steps, most important first, each printed as soon as it is done and bounded by its own cap and by what is left
# of the whole budget (GPU_BENCH_BUDGET_S, default 530 s):
#   1. install what the image lacks from wheels/ (into /tmp/gpuvision-site; gpuvision itself via PYTHONPATH=src)
#   2. load_time.py: cold and warm decode of the archive through gpuvision's cache
#   3. time_to_accuracy.py: gpuvision and airbench94 over $SEEDS seeds (default 5)
#   4. streaming.py: ResNet-18 at 128 px streamed from pinned host memory vs device-resident
#   5. time_to_accuracy.py --tools plain: the plain PyTorch loop, 1 epoch measured, projected to 9.9
set -uo pipefail
cd "$(dirname "$0")/.."

START=$SECONDS
BUDGET=${GPU_BENCH_BUDGET_S:-530}
PY=${PYTHON:-python3}
DATA=${DATA:-.local/cifar10-jpeg.tar.gz}
SEEDS=${SEEDS:-5}
DEVICE=${DEVICE:-cuda}
TTA_EXTRA=${TTA_EXTRA:-}   # extra time_to_accuracy.py flags (scaling down for a dry run)
STREAM_ARGS=${STREAM_ARGS:---steps 100 --batch-size 256}  # streaming.py flags; STREAM_ARGS=skip leaves it out
SITE=/tmp/gpuvision-site
RESULTS=${OUT:-benchmarks/results}
mkdir -p "$RESULTS"
export GPUVISION_BENCH_RESULTS=$RESULTS PYTHONUNBUFFERED=1
export GPUVISION_CACHE=${GPUVISION_CACHE:-/tmp/gpuvision-cache}

step() {  # step NAME CAP_S COMMAND...: run it for at most CAP_S and what is left of the budget
  local name=$1 cap=$2 t rc
  shift 2
  t=$((BUDGET - (SECONDS - START)))
  ((t > cap)) && t=$cap
  if ((t < 30)); then
    echo "== SKIPPED $name: only ${t} s left"
    return 1
  fi
  echo "== $name (at $((SECONDS - START)) s; at most ${t} s)"
  timeout --kill-after=10 "$t" "$@"
  rc=$?
  echo "== $name: exit $rc at $((SECONDS - START)) s"
  return $rc
}

install_missing() {  # module -> distribution; find_spec imports nothing, so the check is quick
  local missing
  missing=$("$PY" - <<'EOF'
import importlib.util
wanted = {"airbench": "airbench", "rich": "rich", "markdown_it": "markdown-it-py", "mdurl": "mdurl",
          "pygments": "pygments", "safetensors": "safetensors", "yaml": "pyyaml", "timm": "timm"}
print(" ".join(dist for module, dist in wanted.items() if importlib.util.find_spec(module) is None))
EOF
  )
  if [ -n "$missing" ]; then
    echo "installing from wheels/: $missing"
    # shellcheck disable=SC2086  # one word per distribution
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --find-links wheels \
      --target "$SITE" $missing || return 1
  fi
}

main() {
  [ -f "$DATA" ] || { echo "no $DATA: run benchmarks/fetch_wheels.sh here first and carry .local"; return 2; }
  nvidia-smi -L 2>/dev/null || echo "(no nvidia-smi)"
  install_missing || { echo "install from wheels/ failed: is wheels/ carried?"; return 2; }
  export PYTHONPATH=$PWD/src:$SITE${PYTHONPATH:+:$PYTHONPATH}
  "$PY" -c "import sys, torch, gpuvision, airbench, matplotlib, torchvision
print('python', sys.version.split()[0], 'torch', torch.__version__, 'gpuvision', gpuvision.__version__,
      'gpu', torch.cuda.is_available() and torch.cuda.get_device_name())" ||
    { echo "gpuvision or a dependency does not import (see above)"; return 2; }

  step "load time" 90 "$PY" benchmarks/load_time.py --data "$DATA" --repeat 3

  # shellcheck disable=SC2086  # TTA_EXTRA is a list of flags
  step "time to accuracy: gpuvision, airbench" 330 "$PY" benchmarks/time_to_accuracy.py --device "$DEVICE" \
    --data "$DATA" --seeds "$SEEDS" --tools gpuvision,airbench --cli-timeout 240 $TTA_EXTRA

  if [ ! -f benchmarks/streaming.py ] || [ "$STREAM_ARGS" = skip ]; then
    echo "== streaming: skipped (no benchmarks/streaming.py, or STREAM_ARGS=skip)"
  else
    # shellcheck disable=SC2086
    step "streaming" 180 "$PY" benchmarks/streaming.py --device "$DEVICE" --data "$DATA" --image-size 128 \
      --out-dir "$RESULTS" $STREAM_ARGS
  fi

  # shellcheck disable=SC2086
  step "time to accuracy: plain" 150 "$PY" benchmarks/time_to_accuracy.py --device "$DEVICE" --data "$DATA" \
    --tools plain --plain-epochs 1 $TTA_EXTRA

  echo "== done in $((SECONDS - START)) s; results in $RESULTS:"
  ls -la "$RESULTS"
}

main 2>&1 | tee -a "$RESULTS/gpu-log.txt"  # the whole log comes back with the results
exit "${PIPESTATUS[0]}"
