#!/usr/bin/env bash
# Train chapter 1's language models on one GPU, then what depends on the target (chapter 2's draft heads,
# chapter 6's SAE). The target's dropout and the draft's are swept in parallel processes on the one GPU,
# each run filling BUDGET seconds; tools/pick_lm.py keeps the run with the lowest NLL on the held-out
# "select" half. Logs and the new checkpoints land in $OUT (two archives).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_train}
BUDGET=${BUDGET:-300}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 ARLIB_DATA=${ARLIB_DATA:-$PWD/data/cache}
mkdir -p "$OUT" /tmp/sweep
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/device.txt" 2>&1
for d in ${TARGET_DROPOUTS:-0.1 0.2 0.3}; do
  timeout 520 python3 -m arlib.recipes shakespeare-target --dropout $d --time-budget "$BUDGET" --out /tmp/sweep/target-$d \
    --no-progress > "$OUT/target-$d.log" 2>&1 &
done
for d in ${DRAFT_DROPOUTS:-0.0 0.1}; do
  timeout 520 python3 -m arlib.recipes shakespeare-draft --dropout $d --time-budget "$BUDGET" --out /tmp/sweep/draft-$d \
    --no-progress > "$OUT/draft-$d.log" 2>&1 &
done
wait
python3 tools/pick_lm.py shakespeare-target /tmp/sweep/target-* > "$OUT/pick.log" 2>&1
python3 tools/pick_lm.py shakespeare-draft /tmp/sweep/draft-* >> "$OUT/pick.log" 2>&1
cat "$OUT/pick.log"
tar -cf "$OUT/lm.tar" -C data/checkpoints shakespeare-target.safetensors shakespeare-target.json \
  shakespeare-draft.safetensors shakespeare-draft.json
LEFT=$(( ${DEADLINE:-575} - SECONDS ))  # the dependents get what is left of the deadline
if [ "${SKIP_DEPENDENTS:-0}" != 1 ]; then
  timeout "$(( LEFT > 30 ? LEFT : 30 ))" python3 -m arlib.recipes shakespeare-heads --no-progress ${HEAD_STEPS:+--steps $HEAD_STEPS} > "$OUT/heads.log" 2>&1 &
  timeout "$(( LEFT > 30 ? LEFT : 30 ))" python3 -m arlib.recipes shakespeare-sae --no-progress ${SAE_STEPS:+--steps $SAE_STEPS} > "$OUT/sae.log" 2>&1 &
  wait
  tail -n 2 "$OUT/heads.log" "$OUT/sae.log"
  tar -cf "$OUT/dependents.tar" -C data/checkpoints shakespeare-heads.safetensors shakespeare-heads.json \
    shakespeare-sae.safetensors shakespeare-sae.json
fi
tail -n 3 "$OUT"/*.log
