# ffcv-dp4tl tasks. First run `bash scripts/setup.sh` (apt + .venv), then `.venv/bin/just TASK`.
set shell := ["bash", "-euo", "pipefail", "-c"]

py := justfile_directory() / ".venv/bin/python"
dp4tl := justfile_directory() / ".venv/bin/dp4tl"

# list tasks
default:
    @{{just_executable()}} --list --justfile {{justfile()}}

# install apt packages + the pinned .venv (idempotent)
setup:
    bash scripts/setup.sh

# CPU test suite (what CI runs)
test *args:
    {{py}} -m pytest -q -p no:cacheprovider {{args}}

# pyflakes-class checks (unused imports, undefined names, syntax errors); also run by the suite (tests/test_lint.py)
lint *args:
    {{justfile_directory()}}/.venv/bin/ruff check {{args}}

# the whole scripts/gpu_check.sh rehearsed on the CPU at toy sizes (~3 min idle): run before every device call
rehearse-gpu-check:
    GPU_CHECK_REHEARSAL=1 {{py}} -m pytest -q -p no:cacheprovider tests/test_gpu_check.py

# convert a dataset once into betons + shards: just build synth data/synth | just build imagenet:/data/ILSVRC data/imagenet
build source="synth" out="data/synth" *args="":
    {{dp4tl}} build {{source}} --out {{out}} {{args}}

# the end-to-end job: just pretrain ratio=0.6 [method=fm] [data=imagenet:/data/ILSVRC target=flowers102:/data/flowers arch=resnet50]
# (key=value pairs become `dp4tl pipeline --key value`; embedded default data when no data= is given)
[positional-arguments]
pretrain *args:
    #!/usr/bin/env bash
    set -euo pipefail
    opts=()
    for a in "$@"; do
      case "$a" in
        -*) opts+=("$a") ;;  # already an option (--ratio=0.5, -o x): passed as given
        *=*) k="${a%%=*}"; opts+=("--${k//_/-}" "${a#*=}") ;;
        *) opts+=("$a") ;;
      esac
    done
    exec "{{dp4tl}}" pipeline "${opts[@]}"

# CPU benchmarks → BENCHMARKS.md: the data layer (args go to bench_data.py), then the cost table
bench *args: (bench-data args) bench-cost

# CPU data-layer benchmark → BENCHMARKS.md
bench-data *args:
    {{py}} benchmarks/bench_data.py {{args}}

# cost table + accuracy vs ratio on the embedded data → docs/cost-table/ + BENCHMARKS.md
# (args go to `dp4tl bench cost-table`, e.g. just bench-cost --methods lm,random --seeds 0,1)
bench-cost *args:
    {{dp4tl}} bench cost-table --out docs/cost-table --report BENCHMARKS.md --runs-root runs/cost-table {{args}}

# do LM and FM beat RANDOM? paired test over seeds x targets on synth:hard (LP and FF, ground
# truth of every selection) → docs/embedded-benchmark/ + BENCHMARKS.md (rerun resumes)
bench-embedded *args:
    {{dp4tl}} bench embedded --out docs/embedded-benchmark --report BENCHMARKS.md {{args}}
