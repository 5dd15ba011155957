#!/usr/bin/env bash
# The one command to run on a GPU host: install the carried wheels, then measure and test.
#
#   bash scripts/gpu_check.sh                  # what is still pending (PENDING_* below), in $OUT
#   bash scripts/gpu_check.sh --all            # every stage: 940 s of limits, over one call's budget;
#                                              # on a device, two --only calls (docs/gpu.md)
#   bash scripts/gpu_check.sh --only fm,train  # some stages (names below), in the order given
#   bash scripts/gpu_check.sh --only build,train --limit train=150   # a follow-up call: own limits
#   bash scripts/gpu_check.sh --only pytest --pytest-k 'moco'        # some GPU tests only
#   bash scripts/gpu_check.sh --only models --models vit_b_16:224:512
#   bash scripts/gpu_check.sh --only pipeline --pipeline-methods lm   # one pipeline run
#   bash scripts/gpu_check.sh --limits         # print the stage limits and their sum, run nothing
#   bash scripts/gpu_check.sh --plan           # print what the stages select (pytest -k, files, ...)
#   GPU_CHECK_SMOKE=1 bash scripts/gpu_check.sh --all  # rehearse every stage on a CPU, toy sizes
#
# One decisive call: what is still pending runs first, every stage under its own timeout, and
# the limits of the stages that run add up to no more than the budget (550 s, GPU_CHECK_BUDGET:
# 540 s for the stages, INSTALL_S for the wheels and the summary; checked at start,
# tests/test_gpu_check.py).
# A stage may also use what the stages before it left unused (those after it keep their limits):
#   env       GPU, driver, versions, glibc, ffcv import, our CUDA kernels compiled via NVRTC
#   pytest    pytest -m gpu, compile tests excluded, with --durations
#   build     synth:costtable (100 classes, 40k train JPEGs at 256 px, q90), all cores
#   pipeline  dp4tl pipeline --device cuda on it: RN-18 surrogate, LM and FM (CuPy), prune,
#             RN-50 pretraining, LP + FF; each run's report goes into the summary
#   costtable Tab. 3 at reduced scale: surrogate 2 epochs (steady rate), LM, paper RN-101 1 epoch
#             at 0/20/40/60/80 %
#   race      nvJPEG race probe + control: the GPU-decode fix shown or not
#   train     ResNet-18 at 160 px from each loader vs the ceiling
#             (cudnn.benchmark), 16 vs 14 workers, data wait, bad inputs, GPU vs CPU decode
#   models    RN-50 / RN-101 at 192 px batch 1024, ViT-B/16 at 224 px: >= 10 steps, img/s, GiB
#   fm        bench_kmeans: fused tensor-core kernel vs GEMM + re-check vs torch; Lloyd/iter
#   kernels   the fused FM kernels under Nsight Compute (ncu: occupancy, stalls, throughput) and
#             what the device's compiler made of every kernel (benchmarks/kernel_report.py)
#   loaders   ffcv CPU / GPU decode, full and 20 % of classes, epoch set-up time; CPU decode
#             with 2/4/8/16 workers (does the rate per worker hold?)
#   compile   the torch.compile GPU tests
#
# Output ($OUT): summary.md (every stage's status and Markdown section; publish it here with
# `python benchmarks/publish_gpu.py summary.md`) and logs.txt (every stage's full output).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
BUDGET=${GPU_CHECK_BUDGET:-550}
INSTALL_S=10  # wheel install + summary writing, outside the stages
ORDER="env pytest build pipeline costtable race train models fm kernels loaders compile"
# Stage limits from the H200 run of 2026-12-04 (seconds taken there in brackets; docs/gpu.md):
# env [23; +numba's parallel-layer probe since], pytest [~125 for all 20 tests: 16 in 72 s, 3 more in 42 s], build [35, 42],
# pipeline [141 per method run incl. the surrogate, ~100 with it cached], costtable [99],
# race [~15], train [83], models [~25 for RN-50 + RN-101, 15 for ViT-B/16], fm [27, before the voting split],
# loaders [> 23: cut], compile [never reached]; kernels [new: ncu ~15 s + the compiler report ~5 s].
# All of them (~920 s) take two device calls.
declare -A LIMIT=([env]=30 [pytest]=130 [build]=50 [pipeline]=260 [costtable]=120 [race]=20 [train]=100
                  [models]=45 [fm]=45 [kernels]=25 [loaders]=70 [compile]=45)
# What the next device run must show (docs/gpu.md, "What the device runs showed"), what a plain
# call runs: edit after each run.
PENDING_STAGES="build pipeline train loaders fm kernels pytest compile"
PENDING_PIPELINE_METHODS="fm"                  # LM ran on the H200; FM (CuPy k-means) has not
PENDING_PIPELINE_FINETUNE="ff"                 # LP ran on the H200; `evaluate corruptions` checks FF
PENDING_LOADERS="ffcv:cpu"                     # the masked ratio and scaling rows are CPU decode's;
                                               # GPU decode trains in the train stage (decode comparison)
# the only non-compile GPU test a limit cut, and the fused kernels' labels vs float64 (the tiled
# kernels changed after the H200 run: one barrier per stage; tiled3 is new)
# (cuda-lp passed on the H200: ff only; collected from these two files only, cuda-ff first, so a
# fault in a fused kernel never run on a GPU cannot take it along: PENDING_PYTEST_FILES)
PENDING_PYTEST_K="(test_finetune_on_device and cuda-ff) or test_gpu_fused_assign_equals_float64"
PENDING_PYTEST_FILES="tests/training/test_gpu.py tests/scoring/test_kernels_fused.py"
# (pipeline: FM reads all 40k source images through a new loader and re-checks in a new process;
# loaders: CPU decode only, PENDING_LOADERS)
declare -A PENDING_LIMIT=([pipeline]=180 [pytest]=40 [loaders]=55)
ARGS_TEXT="$*"
MODE=pending
STAGES=$PENDING_STAGES
PYTEST_K_ARG=""
PIPE_METHODS_ARG=""
MODELS=""
declare -A LIMIT_ARG=()
while [ $# -gt 0 ]; do
  case "$1" in
    --only|--limit|--pytest-k|--pipeline-methods|--models)
      if [ $# -lt 2 ] || [ -z "$2" ]; then echo "gpu_check: $1 needs a value (see --help)" >&2; exit 2; fi ;;
  esac
  case "$1" in
    --all) MODE=all; STAGES=$ORDER; shift ;;
    --only) MODE=only; STAGES=${2//,/ }; shift 2 ;;
    --limit) st=${2%%=*}; v=${2#*=}
             if [ -z "${LIMIT[$st]+x}" ] || ! [[ "$v" =~ ^[0-9]+$ ]]; then
               echo "gpu_check: --limit $2: expected STAGE=SECONDS with a stage of: $ORDER" >&2; exit 2; fi
             LIMIT_ARG[$st]=$v; shift 2 ;;
    --pytest-k) PYTEST_K_ARG=$2; shift 2 ;;
    --pipeline-methods) PIPE_METHODS_ARG=$2; shift 2 ;;
    --models) MODELS=$2; shift 2 ;;
    --limits) SHOW_LIMITS=1; shift ;;
    --plan) SHOW_PLAN=1; shift ;;
    -h|--help) sed -n '2,/^set -uo/{/^set -uo/d;p}' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ "$MODE" = pending ]; then  # the pending plan narrows what its stages do
  for st in "${!PENDING_LIMIT[@]}"; do LIMIT[$st]=${PENDING_LIMIT[$st]}; done
  PYTEST_K="($PENDING_PYTEST_K) and not compile"; PIPE_METHODS=$PENDING_PIPELINE_METHODS
  PIPE_FINETUNE=$PENDING_PIPELINE_FINETUNE; LOADERS=$PENDING_LOADERS
  read -r -a PYTEST_ARGS <<< "$PENDING_PYTEST_FILES"
  FM_METHOD=(--fm-method gemm-bf16)  # the full FM run before the fused kernels, as the pipeline's
else
  PYTEST_K="not compile"; PIPE_METHODS="lm,fm"; PIPE_FINETUNE="lp,ff"; LOADERS="ffcv:cpu,ffcv:gpu"
  PYTEST_ARGS=(tests); FM_METHOD=()
fi
# (a -k of one's own searches every test file: the pending files hold only the pending tests)
[ -n "$PYTEST_K_ARG" ] && { PYTEST_K="($PYTEST_K_ARG) and not compile"; PYTEST_ARGS=(tests); }
[ -n "$PIPE_METHODS_ARG" ] && PIPE_METHODS=$PIPE_METHODS_ARG
for st in "${!LIMIT_ARG[@]}"; do LIMIT[$st]=${LIMIT_ARG[$st]}; done
for st in $STAGES; do
  [ -n "${LIMIT[$st]+x}" ] || { echo "gpu_check: --only: unknown stage $st (stages: $ORDER)" >&2; exit 2; }
done
SUM=0; for st in $STAGES; do SUM=$(( SUM + LIMIT[$st] )); done
if [ "${SHOW_PLAN:-0}" = 1 ]; then  # (tests/test_gpu_check.py collects the pytest selections)
  echo "stages $STAGES"; echo "pytest_k $PYTEST_K"; echo "pytest_files ${PYTEST_ARGS[*]}"
  echo "pipeline_methods $PIPE_METHODS"; echo "pipeline_finetune $PIPE_FINETUNE"
  echo "loaders $LOADERS"; echo "fm_method ${FM_METHOD[*]:-auto}"; exit 0
fi
if [ "${SHOW_LIMITS:-0}" = 1 ]; then
  for st in $STAGES; do echo "$st ${LIMIT[$st]}"; done
  echo "sum $SUM"; echo "install $INSTALL_S"; echo "budget $BUDGET"; exit 0
fi
# (the budget is device time: a CPU rehearsal, GPU_CHECK_SMOKE=1, is not held to it, so
# `GPU_CHECK_SMOKE=1 … --all` rehearses every stage; the pending plan is checked by the tests)
if [ "${GPU_CHECK_SMOKE:-0}" != 1 ] && [ $(( SUM + INSTALL_S )) -gt "$BUDGET" ]; then
  echo "gpu_check: stage limits add up to ${SUM} s + ${INSTALL_S} s install > budget ${BUDGET} s; run fewer stages (--only) or fewer seconds (--limit), or raise GPU_CHECK_BUDGET where the lease allows" >&2
  exit 2
fi
# the smoke rehearsal runs on a slow shared CPU (2 cores, many jobs): same limits, stretched 25x
# (the sum check above is on the device limits)
SCALE=${GPU_CHECK_LIMIT_SCALE:-$( [ "${GPU_CHECK_SMOKE:-0}" = 1 ] && echo 25 || echo 1 )}
if [ "$SCALE" != 1 ]; then
  for st in $ORDER; do LIMIT[$st]=$(( LIMIT[$st] * SCALE )); done
  BUDGET=$(( BUDGET * SCALE ))
fi
OUT=${OUT:-$REPO/gpu-out}
WORK=${GPU_CHECK_WORK:-/tmp/gpu-check}
mkdir -p "$OUT" "$WORK/md" "$WORK/logs"
rm -f "$WORK"/md/* "$WORK"/logs/*
export PYTHONUNBUFFERED=1
T0=$(date +%s)
# the project's .venv where there is one (the CPU rehearsal: a bare python3 there lacks torch);
# the device machine has none (it is gitignored, not carried) and its python3 has torch
PY=${PYTHON:-python3}
[[ -z ${PYTHON:-} && -x $REPO/.venv/bin/python ]] && PY=$REPO/.venv/bin/python
DATA=$WORK/data
SMOKE=${GPU_CHECK_SMOKE:-0}

# -- wheels carried in .whl (ffcv, webdataset, ...): no network on the host ---------------
if [ "$SMOKE" != 1 ] && ls .whl/*.whl >/dev/null 2>&1; then
  if ! $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$WORK/site" .whl/*.whl > "$WORK/logs/00-install.log" 2>&1; then
    echo "gpu_check: installing .whl/*.whl failed (see logs.txt)" >&2
  fi
  export PYTHONPATH=$REPO:$WORK/site${PYTHONPATH:+:$PYTHONPATH}
else
  echo "gpu_check: no .whl/ here (or smoke); run scripts/gpu_wheels.sh on the CPU machine and carry .whl" \
    > "$WORK/logs/00-install.log"
  export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
fi

# what explains the loaders' scaling rows, in a second or two, when the env stage (which says
# more) does not run: cores, SMT and clocks, the cgroup's CPU quota, numba's threading layer
[[ " $STAGES " == *" env "* ]] || {
  echo "## host: $(nproc) cores usable; cgroup cpu.max: $(cat /sys/fs/cgroup/cpu.max 2>/dev/null || echo none)"
  lscpu 2>/dev/null | grep -E '^(CPU\(s\)|Model name|Thread|Core|Socket|CPU max MHz|CPU MHz)' || true
  timeout 5 $PY -c 'import numba, numpy as np
@numba.njit(parallel=True)
def f(a):
    s = 0.0
    for i in numba.prange(a.size):
        s += a[i]
    return s
f(np.ones(64)); print("numba", numba.__version__, "threading layer:", numba.threading_layer(), "threads:", numba.get_num_threads())' 2>&1 | tail -n 2 || true
} >> "$WORK/logs/00-install.log" 2>&1

STATUS=()
# without the carried wheels every stage but env fails on `import ffcv`: say so in the summary
# and stop, instead of spending the call (checked after write_summary is defined, below)
WHEELS_OK=1
if [ "$SMOKE" != 1 ] && ! $PY -c 'import ffcv, webdataset' >> "$WORK/logs/00-install.log" 2>&1; then
  WHEELS_OK=0
fi
reserve_after() {  # the limits of the wanted stages after stage $1: time this stage must leave them
  local after=0 r=0 st
  for st in $STAGES; do
    [ "$after" = 1 ] && r=$(( r + LIMIT[$st] ))
    [ "$st" = "$1" ] && after=1
  done
  echo "$r"
}
run_stage() {  # name command...
  # limit: LIMIT[name] plus what the stages before it left unused (the stages after it keep their
  # own limits), capped by what is left of the budget; so the last stage (the cold compiles) gets
  # the slack of the whole run, and a slow stage never starves one after it
  local name=$1; shift
  local left=$(( BUDGET - INSTALL_S / 2 - ($(date +%s) - T0) ))
  local limit=$(( left - $(reserve_after "$name") ))
  [ "$limit" -lt "${LIMIT[$name]}" ] && limit=${LIMIT[$name]}
  if [ "$left" -lt 15 ]; then STATUS+=("| $name | skipped (budget spent) | 0 | ${LIMIT[$name]} |"); write_summary; return; fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (limit ${limit}s)"
  local s=$(date +%s)
  # when the stage is killed: a stage that writes its section last ends its slow part before
  # (profile_fused.py's ncu, the pytest stages), so the section is still written
  export GPU_CHECK_DEADLINE=$(( s + limit ))
  # the running stage logs straight into $OUT, so a lease that ends mid-stage still returns it
  timeout --kill-after=5 "$limit" "$@" > "$OUT/current-stage.log" 2>&1
  local rc=$? dt=$(( $(date +%s) - s ))
  mv "$OUT/current-stage.log" "$WORK/logs/$name.log"
  local what="ok"
  [ $rc -ne 0 ] && what="**failed (rc $rc)**"
  [ $rc -eq 124 ] && what="**timed out after ${limit}s**"
  STATUS+=("| $name | $what | $dt | $limit |")
  echo "   $what in ${dt}s"
  tail -n 3 "$WORK/logs/$name.log" | sed 's/^/   /'
  write_summary
}
write_summary() {  # rewritten after every stage: a lease cut short still returns what ran
  {
    echo "# GPU check"
    echo
    echo "Host: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -n1 || echo 'no nvidia-smi'); $(nproc) cores; $(. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME")."
    echo "Command: \`$( [ "$SMOKE" = 1 ] && echo 'GPU_CHECK_SMOKE=1 ')bash scripts/gpu_check.sh${ARGS_TEXT:+ $ARGS_TEXT}\` (stages: ${STAGES// /, }); date $(date -u '+%Y-%m-%d %H:%M UTC'); total $(( $(date +%s) - T0 )) s of a ${BUDGET} s budget (stage limits sum to ${SUM} s)."
    echo
    echo "| stage | result | seconds | limit (own + unused before) |"
    echo "| --- | --- | ---: | ---: |"
    printf '%s\n' "${STATUS[@]}"
    echo
    for f in "$WORK"/md/*.md; do [ -f "$f" ] && { cat "$f"; echo; }; done
  } > "$OUT/summary.md"
  for f in "$WORK"/logs/*.log; do echo "######## $(basename "$f")"; cat "$f"; done > "$OUT/logs.txt"
}
B="$PY benchmarks/bench_gpu.py"
U="$PY benchmarks/bench_gpu_user.py"
NPROC=$(nproc)
# synth:costtable = 100 classes x 400 train + 10 val at 256 px, one target (LM needs one)
SYNTH="synth:costtable"
TARGET=$DATA/targets/paper  # the first synth target domain (beton_builders/synth.py)
PIPE_ARGS=(--device cuda --method "$PIPE_METHODS" --k 500 -- --target "$TARGET" --recipes full --arch resnet50 --finetune "$PIPE_FINETUNE"
           --set train.epochs=1 --set-surrogate train.epochs=1 --set-surrogate 'train.keep_epochs=[]'
           --set-finetune train.epochs=1 --format ffcv)
COST_ARGS=(--device cuda --workers "$NPROC")
RACE_ARGS=(--device cuda)
TRAIN_ARGS=(--epochs 2 --loaders ffcv:cpu,ffcv:gpu --workers-list "$NPROC,$(( NPROC > 2 ? NPROC - 2 : 1 ))")
MODEL_ARGS=()
FM_ARGS=(--iters 20 --warmup 1 --repeats 3 --gemm-chunk-mb 128 --check-rows 1024 --max-materialize-gb 0 "${FM_METHOD[@]}")
LOADER_ARGS=(--loaders "$LOADERS" --kept 1.0,0.2 --scaling 2,4,8,16 --scaling-batches 16)
NCU_ARGS=(--n 262144 --timeout 60)  # 2,048 tiled blocks: every SM busy for ~15 waves; ncu runs
# first and stops 3 s + the compiler report's reserve before the stage's end (GPU_CHECK_DEADLINE)
if [ "$SMOKE" = 1 ]; then
  # CPU rehearsal of every stage at toy sizes (tests/test_gpu_check.py): same plumbing, no GPU.
  SYNTH="synth:costtable,num_superclasses=4,classes_per_superclass=2,train_per_class=12,val_per_class=2,image_size=48"
  # (the pending plan's files, collected: tests/test_gpu_check.py; here a file of no GPU test)
  PYTEST_ARGS=(tests/scoring/test_kernels_gemm.py)
  # (batch 8: the smoke source keeps ~40 samples, fewer than one batch of the tiny recipe's 128)
  PIPE_ARGS=(--device cpu --method "$PIPE_METHODS" --k 4 -- --target "$TARGET" --recipes tiny --finetune "$PIPE_FINETUNE"
             --set train.epochs=1 --set train.batch_size=8 --set-surrogate train.epochs=1
             --set-finetune train.epochs=1)
  TINY=(--set train.batch_size=8 --set train.min_res=32 --set train.max_res=32 --set eval.resolution=32
        --set model.arch=resnet18 --set model.width=8 --set data.num_workers=1)
  COST_ARGS=(--device cpu --workers 1 --ratios 0,0.5 "${TINY[@]}"
             --set-surrogate train.batch_size=8 --set-surrogate train.min_res=32 --set-surrogate train.max_res=32
             --set-surrogate eval.resolution=32 --set-surrogate model.width=8 --set-surrogate data.num_workers=1)
  RACE_ARGS=(--device cpu --images 8 --rounds 2 --busy 1 --matmul 64)
  TRAIN_ARGS=(--device cpu --recipe resnet18_tiny_cpu --batch-size 8 --resolution 32 --workers 1 --workers-list 1,2
              --epochs 2 --ceiling-steps 2 --ceiling-warmup 1 --set model.width=8 --loaders ffcv:cpu,ffcv:gpu)
  MODEL_ARGS=(--device cpu --models resnet18:32:4,vit_b_16:32:2 --warmup 1 --steps 1)
  FM_ARGS=(--cpu-smoke --n 3000 --k 16 --targets 200 --iters 3 "${FM_METHOD[@]}")
  NCU_ARGS=(--n 3000 --k 16 --timeout 60)
  LOADER_ARGS=(--device cpu --batch-size 8 --resolution 32 --workers 1 --loaders "$LOADERS" --kept 1.0,0.5
               --scaling 1,2 --scaling-batch 8 --scaling-batches 2)
fi

[ -n "$MODELS" ] && MODEL_ARGS=(--models "$MODELS" "${MODEL_ARGS[@]}")
: > "$WORK/md/08-fm.md"  # exists, so bench_kmeans adds only its section (no report header)
# pytest is interrupted (its summary printed) 5 s before its stage is killed (GPU_CHECK_DEADLINE),
# so the stage still writes its section: the tail of what ran
# (-p no:randomly: collection order is run order, cuda-ff first, whatever the host has installed)
ENDS_BEFORE='timeout -s INT --kill-after=3 $(( GPU_CHECK_DEADLINE - $(date +%s) - 5 > 1 ? GPU_CHECK_DEADLINE - $(date +%s) - 5 : 1 ))'
stage() {  # run one stage by name
  case "$1" in
    env) run_stage env $B env --md "$WORK/md/01-env.md" ;;
    pytest) run_stage pytest bash -c "$ENDS_BEFORE $PY -m pytest -v -p no:cacheprovider -p no:randomly -m gpu -k '$PYTEST_K' -rs --durations=15 ${PYTEST_ARGS[*]} 2>&1 | tee $WORK/pytest.txt; rc=\${PIPESTATUS[0]}; [ \$rc -eq 5 ] && rc=0; { echo '### pytest -m gpu -k \"$PYTEST_K\"'; echo; echo '\`\`\`'; tail -n 40 $WORK/pytest.txt; echo '\`\`\`'; } > $WORK/md/02-pytest.md; exit \$rc" ;;
    build) run_stage build $PY -m ffcv_dp4tl build "$SYNTH" --out "$DATA" --workers "$NPROC" --no-progress ;;
    # (the pipeline's FM takes the method auto chose on the H200, gemm-bf16, unmeasured: a fault
    # in a fused kernel never run on a GPU would end the user's path, which must show first;
    # the fused kernels run in the pytest, fm and kernels stages)
    pipeline) DP4TL_FM_METHOD=${DP4TL_FM_METHOD:-gemm-bf16} run_stage pipeline $U pipeline --data "$DATA/source" --workdir "$WORK/pipeline" --md "$WORK/md/03-pipeline.md" "${PIPE_ARGS[@]}" ;;
    costtable) run_stage costtable $U costtable --data "$DATA/source" --target "$TARGET" --workdir "$WORK/costtable" --md "$WORK/md/04-costtable.md" "${COST_ARGS[@]}" ;;
    race) run_stage race $U race --data "$DATA/source" --workdir "$WORK/race" --md "$WORK/md/05-race.md" "${RACE_ARGS[@]}" ;;
    train) run_stage train $B train --data "$DATA/source" --md "$WORK/md/06-train.md" --workdir "$WORK" "${TRAIN_ARGS[@]}" ;;
    models) run_stage models $B models --md "$WORK/md/07-models.md" "${MODEL_ARGS[@]}" ;;
    fm) run_stage fm $PY benchmarks/bench_kmeans.py "${FM_ARGS[@]}" --output "$WORK/md/08-fm.md" ;;
    kernels) run_stage kernels $PY benchmarks/profile_fused.py "${NCU_ARGS[@]}" --md "$WORK/md/08b-kernels.md" ;;
    loaders) run_stage loaders $B loaders --data "$DATA/source" --md "$WORK/md/09-loaders.md" "${LOADER_ARGS[@]}" ;;
    compile) run_stage compile bash -c "$ENDS_BEFORE $PY -m pytest -v -p no:cacheprovider -p no:randomly -m gpu -k compile -rs --durations=5 ${PYTEST_ARGS[*]} 2>&1 | tee $WORK/compile.txt; rc=\${PIPESTATUS[0]}; [ \$rc -eq 5 ] && rc=0; { echo '### pytest -m gpu -k compile'; echo; echo '\`\`\`'; tail -n 30 $WORK/compile.txt; echo '\`\`\`'; } > $WORK/md/10-compile.md; exit \$rc" ;;
  esac
}
if [ "$WHEELS_OK" = 0 ]; then
  STATUS+=("| install | **failed**: ffcv or webdataset does not import (logs.txt: 00-install.log); carry .whl (scripts/gpu_wheels.sh) | $(( $(date +%s) - T0 )) | $INSTALL_S |")
  write_summary
  echo "gpu_check: ffcv/webdataset do not import: no stage run (carry .whl; see $OUT/logs.txt)" >&2
  exit 3
fi
for st in $STAGES; do stage "$st"; done

write_summary
echo "gpu_check: wrote $OUT/summary.md and $OUT/logs.txt"
