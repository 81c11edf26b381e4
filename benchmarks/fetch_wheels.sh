#!/usr/bin/env bash
# Prepare, on this machine (with network), everything benchmarks/gpu.sh needs on a fresh GPU machine that has none:
#   wheels/                      airbench 0.1.8 (PyPI has only an sdist: built here into a pure-python wheel), pytest
#                                (gpu.sh runs the cuda-marked tests first) and cp312 wheels of the small libraries
#                                gpuvision imports that a torch-2.11 GPU image might lack (gpu.sh installs only those
#                                actually missing there)
#   .local/cifar10-jpeg.tar.gz   the data (../shared does not travel to the GPU machine)
#   .local/airbench94_muon.py    the airbench94_muon peer, from ../peers/ (or $MUON_PEER) if saved there
#   .local/COMMIT                `git rev-parse --short HEAD` (+dirty), in case .git does not travel
# Both folders are git-ignored; together they stay well under the 64 MiB a device call may carry (checked below).
#
#   bash benchmarks/fetch_wheels.sh            then the device tool's call given in benchmarks/gpu.sh's header
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
DATA=${DATA:-../shared/data/cifar10-jpeg.tar.gz}
LIMIT_MIB=50

mkdir -p wheels .local
"$PY" -m pip wheel -q --no-deps -w wheels airbench==0.1.8

# The GPU image's Python is 3.12 on x86-64 (manylinux); pure-python wheels match these flags too.
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
  -d wheels rich==15.0.0 markdown-it-py==4.3.0 mdurl==0.1.2 pygments==2.21.0 safetensors==0.8.0 pyyaml==6.0.4 \
  timm==1.0.31 pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1 packaging==26.4 pytest-timeout==2.4.0 \
  adversarial-robustness-toolbox==1.20.1 six==1.17.0 tqdm==4.70.1

cp -u "$DATA" .local/cifar10-jpeg.tar.gz
# The airbench94_muon peer is never part of the repository: copied only from where the user saved it.
if [ -f "${MUON_PEER:-../peers/airbench94_muon.py}" ]; then cp -u "${MUON_PEER:-../peers/airbench94_muon.py}" .local/; fi
dirty=$(git status --porcelain --untracked-files=no | grep -q . && echo "+dirty" || true)
echo "$(git rev-parse --short HEAD)$dirty" > .local/COMMIT

ls -la wheels
size=$(du -sm wheels .local | awk '{s += $1} END {print s}')
echo "wheels/ + .local/: ${size} MiB (limit ${LIMIT_MIB} MiB here, 64 MiB per device call with the repository)"
if (( size > LIMIT_MIB )); then
  echo "too large: remove old files from wheels/ (one version of each package)" >&2
  exit 1
fi
