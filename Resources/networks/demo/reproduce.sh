#!/usr/bin/env bash
# Reproduce the shipped demo networks and their held-out table (about 30 minutes on a 2-core CPU).
#   bash Resources/networks/demo/reproduce.sh [WORKDIR]     (default: ./mrhnet-demo-build)
# Simulated brains only (mrhnet phantom, medium size):
#   AF trains on six brains (C1, C1-d1 .. C1-d5), each with its own test-time shift (seeds 2..7) and
#   noise seed, and validates on C1-d6 with shift 8 (best epoch kept);
#   NF and MBP are made from that AF network by transfer on C1, C1-d1, C1-d2 without shift (noise seed 0,
#   the brains the demo's baselines train on) and validate on C1-d3;
#   held out: brain R2 with noise seed 7 and test-time shift 1 (what `mrhnet demo` evaluates); shift
#   seed 1 is used by no training or validation brain.
# Subject folders that already exist in WORKDIR are reused (simulation is deterministic).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
WORK="${1:-mrhnet-demo-build}"
mkdir -p "$WORK"
cd "$WORK"
D=data
NOTE="trained on SIMULATED brains (mrhnet phantom, medium size) for demonstration only; not valid for real data"

phantom() {  # phantom FOLDER BRAIN [options]: simulate one brain unless its folder exists
    local folder=$1 brain=$2
    shift 2
    [ -d "$folder/$brain" ] || mrhnet phantom "$folder" --brains "$brain" --size medium "$@"
}
SHIFTED=()
for i in 2 3 4 5 6 7 8; do  # C1 with shift 2, C1-d1 with shift 3, ..., C1-d6 with shift 8
    brain=$([ $i = 2 ] && echo C1 || echo C1-d$((i - 2)))
    phantom $D/s$i $brain --seed $i --shift $i
    SHIFTED+=($D/s$i/$brain)
done
for brain in C1 C1-d1 C1-d2 C1-d3; do phantom $D/plain $brain --seed 0; done
phantom $D/heldout R2 --seed 7 --shift 1

AF_TRAIN=("${SHIFTED[@]:0:6}")
PLAIN=($D/plain/C1 $D/plain/C1-d1 $D/plain/C1-d2)
mrhnet train "${AF_TRAIN[@]}" --target af --depth 3 --epochs 20 --val "${SHIFTED[6]}" --keep-best \
    --threads 1 --seed 0 --description "Demo MRH-AF, depth 3, shifted brains, $NOTE" --out mrh-af-demo.mrhnet
for t in nf mbp; do
    mrhnet finetune mrh-af-demo.mrhnet "${PLAIN[@]}" --target $t --epochs 20 --lr 0.01 --val $D/plain/C1-d3 \
        --keep-best --threads 1 --seed 0 \
        --description "Demo MRH-${t^^} (transfer from demo AF), depth 3, $NOTE" --out mrh-$t-demo.mrhnet
done
for t in af nf mbp; do mrhnet train --plot mrh-$t-demo.run && cp mrh-$t-demo.run/curve.png curve-$t.png; done

MODELS=(mrh-af-demo.mrhnet mrh-nf-demo.mrhnet mrh-mbp-demo.mrhnet)
# held-out table, baselines trained as the demo trains them (C1, C1-d1, C1-d2 without shift) ...
python "$HERE/heldout.py" $D/heldout/R2 "${MODELS[@]}" --baseline-train "${PLAIN[@]}" \
    --json heldout-plain.json | tee heldout-plain.txt
# ... and on the AF network's own shifted training brains
python "$HERE/heldout.py" $D/heldout/R2 "${MODELS[@]}" --baseline-train "${AF_TRAIN[@]}" \
    --json heldout-shifted.json | tee heldout-shifted.txt
