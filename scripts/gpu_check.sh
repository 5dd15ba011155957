#!/usr/bin/env bash
# The one command to run on a GPU host: install the carried wheels, then measure and test.
#
#   bash scripts/gpu_check.sh                 # all stages, results in $OUT (or ./gpu-out)
#   bash scripts/gpu_check.sh --only fm,train # some stages (names below)
#   GPU_CHECK_BUDGET=300 bash scripts/gpu_check.sh
#
# Stages (each under its own timeout, all under one budget, default 480 s, so a hung stage
# cannot eat the machine's lease):
#   env      GPU, driver, versions, glibc, ffcv import, our CUDA kernels compiled via NVRTC
#   pytest   pytest -m gpu (kernels, training, GPU decode)
#   fm       benchmarks/bench_kmeans.py at 1.28M x 512, K=2000 (SIMT vs tensor-core GEMM vs torch)
#            plus full FM (k-means, 20 Lloyd iterations, voting)
#   build    synth source of 42,000 train images at 160 px (16 workers)
#   loaders  ffcv CPU decode / GPU decode / WebDataset, full and 40 % / 20 % of classes kept
#   train    ResNet-18 at 160 px from each loader vs the synthetic-input ceiling (same run)
#   models   one ResNet-50 and ResNet-101 step at batch 1024 / 192 px (memory check)
#
# Output ($OUT): summary.md (every stage's status and Markdown section; publish it here with
# `python benchmarks/publish_gpu.py summary.md`) and logs.txt (every stage's full output).
# At most 8 files come back from the device tool, so everything else stays in $WORK.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
OUT=${OUT:-$REPO/gpu-out}
WORK=${GPU_CHECK_WORK:-/tmp/gpu-check}
BUDGET=${GPU_CHECK_BUDGET:-480}
STAGES="env fm build loaders train pytest models"
while [ $# -gt 0 ]; do
  case "$1" in
    --only) STAGES=${2//,/ }; shift 2 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
mkdir -p "$OUT" "$WORK/md" "$WORK/logs"
rm -f "$WORK"/md/* "$WORK"/logs/*
export PYTHONUNBUFFERED=1
T0=$(date +%s)
PY=${PYTHON:-python3}
DATA=$WORK/data

# -- wheels carried in .whl (ffcv, webdataset, ...): no network on the host ---------------
if [ "${GPU_CHECK_SMOKE:-0}" != 1 ] && ls .whl/*.whl >/dev/null 2>&1; then
  if ! $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$WORK/site" .whl/*.whl > "$WORK/logs/00-install.log" 2>&1; then
    echo "gpu_check: installing .whl/*.whl failed (see logs.txt)" >&2
  fi
  export PYTHONPATH=$REPO:$WORK/site${PYTHONPATH:+:$PYTHONPATH}
else
  echo "gpu_check: no .whl/ here; run scripts/gpu_wheels.sh on the CPU machine and carry .whl" \
    > "$WORK/logs/00-install.log"
  export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
fi

STATUS=()
run_stage() {  # name limit_s command...
  local name=$1 limit=$2; shift 2
  local left=$(( BUDGET - ($(date +%s) - T0) ))
  if [ "$left" -lt 20 ]; then STATUS+=("| $name | skipped (budget spent) | 0 |"); return; fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (limit ${limit}s)"
  local s=$(date +%s)
  # the running stage logs straight into $OUT, so a lease that ends mid-stage still returns it
  timeout --kill-after=10 "$limit" "$@" > "$OUT/current-stage.log" 2>&1
  local rc=$? dt=$(( $(date +%s) - s ))
  mv "$OUT/current-stage.log" "$WORK/logs/$name.log"
  local what="ok"
  [ $rc -ne 0 ] && what="**failed (rc $rc)**"
  [ $rc -eq 124 ] && what="**timed out after ${limit}s**"
  STATUS+=("| $name | $what | $dt |")
  echo "   $what in ${dt}s"
  tail -n 3 "$WORK/logs/$name.log" | sed 's/^/   /'
  write_summary
}
write_summary() {  # rewritten after every stage: a lease cut short still returns what ran
  {
    echo "# GPU check"
    echo
    echo "Host: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -n1 || echo 'no nvidia-smi'); $(nproc) cores; $(. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME")."
    echo "Command: \`bash scripts/gpu_check.sh${STAGES:+ --only ${STAGES// /,}}\`; date $(date -u '+%Y-%m-%d %H:%M UTC'); total $(( $(date +%s) - T0 )) s of a ${BUDGET} s budget."
    echo
    echo "| stage | result | seconds |"
    echo "| --- | --- | ---: |"
    printf '%s\n' "${STATUS[@]}"
    echo
    for f in "$WORK"/md/*.md; do [ -f "$f" ] && { cat "$f"; echo; }; done
  } > "$OUT/summary.md"
  for f in "$WORK"/logs/*.log; do echo "######## $(basename "$f")"; cat "$f"; done > "$OUT/logs.txt"
}
want() { [[ " $STAGES " == *" $1 "* ]]; }
B="$PY benchmarks/bench_gpu.py"
SYNTH="synth:num_superclasses=20,classes_per_superclass=5,train_per_class=400,val_per_class=10,image_size=160,num_targets=0"
FM_ARGS=(--iters 20 --repeats ${FM_REPEATS:-5})
LOADER_ARGS=(--loaders "${GPU_CHECK_LOADERS:-ffcv:cpu,ffcv:gpu,wds:cpu,wds:gpu}")
TRAIN_ARGS=(--epochs ${TRAIN_EPOCHS:-3} --loaders "${GPU_CHECK_LOADERS:-ffcv:cpu,ffcv:gpu,wds:cpu,wds:gpu}")
MODEL_ARGS=()
if [ "${GPU_CHECK_SMOKE:-0}" = 1 ]; then
  # CPU rehearsal of every stage at toy sizes (tests/test_gpu_check.py): same plumbing, no GPU.
  SYNTH="synth:tiny,num_targets=0"
  FM_ARGS=(--cpu-smoke --n 3000 --k 16 --targets 200 --iters 3)
  LOADER_ARGS=(--device cpu --batch-size 32 --resolution 32 --workers 1)
  TRAIN_ARGS=(--device cpu --recipe resnet18_tiny_cpu --batch-size 32 --resolution 32 --workers 1
              --epochs 2 --ceiling-steps 2 --ceiling-warmup 1 --set model.width=8)
  MODEL_ARGS=(--device cpu --archs resnet18 --batch-size 4 --resolution 32 --steps 1)
fi

want env && run_stage env 60 $B env --md "$WORK/md/1-env.md"
: > "$WORK/md/3-fm.md"  # exists, so bench_kmeans adds only its section (no report header)
want fm && run_stage fm 90 $PY benchmarks/bench_kmeans.py "${FM_ARGS[@]}" --output "$WORK/md/3-fm.md"
want build && run_stage build 90 $PY -m ffcv_dp4tl build "$SYNTH" --out "$DATA" --workers "$(nproc)" --no-progress
want loaders && run_stage loaders 100 $B loaders --data "$DATA/source" --md "$WORK/md/4-loaders.md" "${LOADER_ARGS[@]}"
want train && run_stage train 120 $B train --data "$DATA/source" --md "$WORK/md/5-train.md" --workdir "$WORK" "${TRAIN_ARGS[@]}"
want pytest && run_stage pytest 100 bash -c "$PY -m pytest -q -p no:cacheprovider -m gpu -rs tests 2>&1 | tee $WORK/pytest.txt; rc=\${PIPESTATUS[0]}; [ \$rc -eq 5 ] && rc=0; { echo '### pytest -m gpu'; echo; echo '\`\`\`'; tail -n 25 $WORK/pytest.txt; echo '\`\`\`'; } > $WORK/md/6-pytest.md; exit \$rc"
want models && run_stage models 40 $B models --md "$WORK/md/7-models.md" "${MODEL_ARGS[@]}"

write_summary
echo "gpu_check: wrote $OUT/summary.md and $OUT/logs.txt"
