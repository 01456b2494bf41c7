#!/usr/bin/env bash
# Reproduce the shipped demo networks (about 10 minutes on a 2-core CPU) and their held-out numbers.
#   bash Resources/networks/demo/reproduce.sh [WORKDIR]     (default: ./mrhnet-demo-build)
# Simulated brains only: C1, C1-d1, C1-d2 train, C1-d3 validates (best epoch kept), R2 is held out.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
WORK="${1:-mrhnet-demo-build}"
mkdir -p "$WORK"
cd "$WORK"
D=data
COMMON=(--val $D/C1-d3 --keep-best --threads 1 --seed 0)
NOTE="trained on SIMULATED brains (mrhnet phantom, medium size) for demonstration only; not valid for real data"

mrhnet phantom $D --brains C1 C1-d1 C1-d2 C1-d3 R2 --size medium --seed 0
mrhnet train $D/C1 $D/C1-d1 $D/C1-d2 --target af --depth 3 --epochs 20 "${COMMON[@]}" \
    --description "Demo MRH-AF, depth 3, $NOTE" --out mrh-af-demo.mrhnet
mrhnet finetune mrh-af-demo.mrhnet $D/C1 --target nf --epochs 20 --lr 0.01 "${COMMON[@]}" \
    --description "Demo MRH-NF (transfer from demo AF), depth 3, $NOTE" --out mrh-nf-demo.mrhnet
mrhnet finetune mrh-af-demo.mrhnet $D/C1 --target mbp --epochs 20 --lr 0.01 "${COMMON[@]}" \
    --description "Demo MRH-MBP (transfer from demo AF), depth 3, $NOTE" --out mrh-mbp-demo.mrhnet
python "$HERE/heldout.py" $D/R2 mrh-af-demo.mrhnet mrh-nf-demo.mrhnet mrh-mbp-demo.mrhnet | tee heldout.jsonl
