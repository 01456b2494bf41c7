#!/usr/bin/env bash
# Install the MRHNet engine (and, with --test, the test dependencies) into the current Python (>= 3.10).
#
#   bash scripts/install.sh          # engine + `mrhnet` command
#   bash scripts/install.sh --test   # also pytest, slicer-core, trame-slicer, playwright + system chromium
#
# torch: an existing installation is kept. Otherwise a machine with an NVIDIA driver gets pip's default
# (CUDA) build; a machine without one gets torch==2.13.0 (on this project's CPU machines that pin is the
# CPU build on local disk; an unpinned torch would pull several GB of CUDA packages).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PIP=("$PY" -m pip install --disable-pip-version-check -q)

if "$PY" -c "import torch" 2>/dev/null; then
  echo "torch $("$PY" -c 'import torch; print(torch.__version__)') already installed"
elif command -v nvidia-smi >/dev/null 2>&1; then
  "${PIP[@]}" "torch>=2.1,<3"
else
  "${PIP[@]}" "torch==2.13.0"
fi

if [ "${1:-}" = "--test" ]; then
  "${PIP[@]}" -e ".[test]"
  if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "warning: chromium not installed; browser tests will be skipped"
  fi
else
  "${PIP[@]}" -e .
fi
echo "mrhnet installed: $("$PY" -c 'import MRHNetLib; print(MRHNetLib.__version__)')"
