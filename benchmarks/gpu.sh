#!/usr/bin/env bash
# Every GPU figure of issues 4, 10 and 17, on a fresh GPU machine (Python 3.12, torch 2.11, no network, no
# ../shared), in under 10 minutes an invocation, the first one included.
#
# Here, once (network needed):   bash benchmarks/fetch_wheels.sh
#   -> wheels/ (airbench, pytest + fallbacks), .local/cifar10-jpeg.tar.gz, .local/airbench94_muon.py (copied from
#      ../peers/ if there: the airbench94_muon peer, see peer_airbench_muon.py), .local/COMMIT; all git-ignored.
# Then the device tool's calls (results come back from $OUT: the JSON files and gpu-log.txt):
#   run(command="OUT=$OUT bash benchmarks/gpu.sh", carry=[".local", "wheels"], timeout_s=600)
#   run(command="OUT=$OUT MODE=seeds bash benchmarks/gpu.sh", carry=[".local", "wheels"], timeout_s=600)
# OUT is required with DEVICE=cuda (the results must come back). Dry run without a GPU, at a tiny scale (2,000
# training images: airbench94_muon's batch is 2,000 whatever the flags say, so it trains 8 steps):
#   PYTHON=/work/main/.venv/bin/python DEVICE=cpu SEEDS=1 STREAM_ARGS=skip GPU_BENCH_BUDGET_S=3000 \
#     TTA_EXTRA="--train-subset 2000 --test-subset 200 --epochs 1 --batch-size 128" CLI_EXTRA="--epochs 1" \
#     bash benchmarks/gpu.sh
#
# MODE=all (default), steps most important first, each bounded by its cap; the caps add up to the budget
# (GPU_BENCH_BUDGET_S, 530 s, leaving the device call's start and transfers room within its 600 s; the caps below
# are for 530 s and scale with it, so a slow dry run can be given GPU_BENCH_BUDGET_S=3000):
#   1. (uncapped, seconds) install what the image lacks from wheels/ (into /tmp/gpuvision-site; gpuvision via
#      PYTHONPATH=src)
#   2. the cuda-marked tests (pytest -m cuda), first: a broken GPU path should fail before any timing; the cap
#      covers two cold inductor compiles (the compiled training test's and the bf16 Muon test's), ~45 s each
#   3. load_time.py: cold and warm decode of the archive through gpuvision's cache
#   4. time_to_accuracy.py: airbench94, airbench94_muon and gpuvision (its default), $SEEDS seeds (default 5)
#      alternating in that order, after a warm-up each (airbench94_muon's compiles with mode="max-autotune")
#   5. streaming.py: ResNet-18 at 128 px streamed from pinned host memory vs device-resident (warmed up first); the
#      cap covers decoding the archive at 128 px into a fresh cache (~16x the pixels of 32 px) first
#   6. time_to_accuracy.py --tools plain: the plain PyTorch loop, 1 epoch measured, projected
#   7. optional, last, its failure harmless: a fresh `python -m gpuvision train` process, start to saved model
# MODE=seeds: only step 4 with $SEEDS (default 20) seeds a tool, alternating, for the accuracy and time spread.
# MODE=bench: `gpuvision bench --device $DEVICE --quick` (issue 16: what each speed method buys) into
#   $RESULTS/bench/ (bench.json, bench.md, charts), then a one-GPU run under torchrun, which takes the DDP path
#   (issue 18: an NCCL group of one, DDP, a mid-epoch checkpoint). Dry run: PYTHON=... DEVICE=cpu MODE=bench
#   DATA=some.tar.gz
# MODE=robust (issue 19): benchmarks/robustness.py, a ResNet-18 trained with PGD-7 at 8/255 beside a normal one,
#   scored by PGD-20, APGD-CE and ART's APGD-CE on 2,000 test images; ROBUST_EXTRA adds or overrides its flags:
#   run(command="OUT=$OUT MODE=robust bash benchmarks/gpu.sh", carry=[".local", "wheels"], timeout_s=600)
# Caps (of 530 s): tests 120, load 25, comparison 230, streaming 120, plain 35; the optional CLI timing gets what
# the others left (each step ends as soon as it is done).
set -uo pipefail
cd "$(dirname "$0")/.."

START=$SECONDS
BUDGET=${GPU_BENCH_BUDGET_S:-530}
MODE=${MODE:-all}
PY=${PYTHON:-python3}
DATA=${DATA:-.local/cifar10-jpeg.tar.gz}
DEVICE=${DEVICE:-cuda}
if [ "$MODE" = seeds ]; then SEEDS=${SEEDS:-20}; else SEEDS=${SEEDS:-5}; fi
# the peers need their files: airbench94_muon's only where fetch_wheels.sh found it (then it runs second)
if [ -f .local/airbench94_muon.py ]; then TOOLS=airbench,airbench_muon,gpuvision; else TOOLS=airbench,gpuvision; fi
TOOLS=${TOOLS_OVERRIDE:-$TOOLS}
TTA_EXTRA=${TTA_EXTRA:-}   # extra time_to_accuracy.py flags (scaling down for a dry run)
STREAM_ARGS=${STREAM_ARGS:---steps 100 --batch-size 256}  # streaming.py flags; STREAM_ARGS=skip leaves it out
CLI_EXTRA=${CLI_EXTRA:-}   # extra `gpuvision train` flags for the CLI timing (e.g. --epochs 1 in a dry run)
SITE=/tmp/gpuvision-site
if [ "$DEVICE" = cuda ] && [ -z "${OUT:-}" ]; then
  echo "OUT is required with DEVICE=cuda: the device tool brings back only what is written under \$OUT" >&2
  exit 2
fi
RESULTS=${OUT:-benchmarks/results}
mkdir -p "$RESULTS"
export GPUVISION_BENCH_RESULTS=$RESULTS PYTHONUNBUFFERED=1
export GPUVISION_CACHE=${GPUVISION_CACHE:-/tmp/gpuvision-cache}

step() {  # step NAME CAP_S COMMAND...: run it for at most CAP_S (of 530, scaled) and what is left of the budget
  local name=$1 cap=$(($2 * BUDGET / 530)) t rc
  shift 2
  t=$((BUDGET - (SECONDS - START)))
  ((t > cap)) && t=$cap
  if ((t < 20)); then
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
          "pygments": "pygments", "safetensors": "safetensors", "yaml": "pyyaml", "timm": "timm",
          "pytest": "pytest", "pluggy": "pluggy", "iniconfig": "iniconfig", "packaging": "packaging",
          "pytest_timeout": "pytest-timeout", "art": "adversarial-robustness-toolbox", "six": "six",
          "tqdm": "tqdm"}
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

time_cli() {  # a fresh process, start to saved model, written as JSON beside the other results
  local started=$EPOCHREALTIME out
  out=$(mktemp -d)/model  # a fresh --out: an earlier run's leftovers there would be refused
  # shellcheck disable=SC2153,SC2086  # exported by the caller for `bash -c`; CLI_EXTRA is a list of flags
  "$PY" -m gpuvision train --data "$DATA" --out "$out" --val-fraction 0 --eval-every 0 \
    --checkpoint-every 0 --device "$DEVICE" --json $CLI_EXTRA >/dev/null || return 1
  "$PY" -c "import json, sys; json.dump({'benchmark': 'cli_train', 'device': '$DEVICE', 'wall_s': float(sys.argv[2])
    - float(sys.argv[1])}, open('$RESULTS/cli-train.json', 'w'))" "$started" "$EPOCHREALTIME"
  cat "$RESULTS/cli-train.json"
}

main() {
  [ -f "$DATA" ] || { echo "no $DATA: run benchmarks/fetch_wheels.sh here first and carry .local"; return 2; }
  nvidia-smi -L 2>/dev/null || echo "(no nvidia-smi)"
  install_missing || { echo "install from wheels/ failed: is wheels/ carried?"; return 2; }
  export PYTHONPATH=$PWD/src:$PWD/benchmarks:$SITE${PYTHONPATH:+:$PYTHONPATH}
  "$PY" -c "import sys, torch, gpuvision, airbench, matplotlib, torchvision
print('python', sys.version.split()[0], 'torch', torch.__version__, 'gpuvision', gpuvision.__version__,
      'gpu', torch.cuda.is_available() and torch.cuda.get_device_name())" ||
    { echo "gpuvision or a dependency does not import (see above)"; return 2; }

  if [ "$MODE" = bench ]; then
    step "gpuvision bench --quick" 440 "$PY" -m gpuvision bench --device "$DEVICE" --quick --data "$DATA" \
      --out "$RESULTS/bench"
    # The DDP path on one GPU (issue 18): a launched single process joins an NCCL group and trains through DDP.
    step "1-GPU DDP (torchrun)" 90 "$PY" -m torch.distributed.run --standalone --nproc-per-node 1 -m gpuvision train \
      --data "$DATA" --epochs 1 --val-fraction 0.1 --checkpoint-every 100st --device "$DEVICE" --json \
      --out "$(mktemp -d)/ddp" > "$RESULTS/ddp-1gpu.json"
  elif [ "$MODE" = robust ]; then
    # shellcheck disable=SC2086  # ROBUST_EXTRA is a list of flags
    step "robustness: resnet18" 530 "$PY" benchmarks/robustness.py --device "$DEVICE" --data "$DATA" \
      --model resnet18 --adversarial pgd --adv-steps 7 --epochs 15 --batch-size 512 --compile off \
      --out-dir "$RESULTS" ${ROBUST_EXTRA:-}
  elif [ "$MODE" = seeds ]; then
    # shellcheck disable=SC2086  # TTA_EXTRA is a list of flags
    step "time to accuracy: $SEEDS seeds a tool, alternating" 530 "$PY" benchmarks/time_to_accuracy.py \
      --device "$DEVICE" --data "$DATA" --seeds "$SEEDS" --tools "$TOOLS" --no-cli-run $TTA_EXTRA
  else
    # Only the files holding cuda tests: the others import extras (fastapi, cryptography, ...) the GPU image may
    # lack, and one collection error stops pytest. tests/conftest.py finds the archive in .local/ without ../shared.
    # shellcheck disable=SC2046  # one word per file
    step "cuda tests" 120 "$PY" -m pytest -q -m cuda -p no:cacheprovider $(grep -rl "pytest.mark.cuda" tests)
    step "load time" 25 "$PY" benchmarks/load_time.py --data "$DATA" --repeat 3
    # shellcheck disable=SC2086
    step "time to accuracy: $TOOLS" 230 "$PY" benchmarks/time_to_accuracy.py --device "$DEVICE" \
      --data "$DATA" --seeds "$SEEDS" --tools "$TOOLS" --no-cli-run $TTA_EXTRA
    if [ "$STREAM_ARGS" = skip ]; then
      echo "== streaming: skipped (STREAM_ARGS=skip)"
    else
      # shellcheck disable=SC2086
      step "streaming" 120 "$PY" benchmarks/streaming.py --device "$DEVICE" --data "$DATA" --image-size 128 \
        --out-dir "$RESULTS" $STREAM_ARGS
    fi
    # shellcheck disable=SC2086
    step "time to accuracy: plain" 35 "$PY" benchmarks/time_to_accuracy.py --device "$DEVICE" --data "$DATA" \
      --tools plain --plain-epochs 1 --no-cli-run $TTA_EXTRA
    export -f time_cli
    export PY DATA DEVICE RESULTS CLI_EXTRA
    step "CLI process (optional)" 530 bash -c time_cli || echo "== CLI process: no figure (every other result is saved)"
  fi

  echo "== done in $((SECONDS - START)) s; results in $RESULTS:"
  ls -la "$RESULTS"
}

main 2>&1 | tee -a "$RESULTS/gpu-log.txt"  # the whole log comes back with the results
exit "${PIPESTATUS[0]}"
