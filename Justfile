# ffcv-dp4tl tasks. First run `bash scripts/setup.sh` (apt + .venv), then `.venv/bin/just TASK`.
set shell := ["bash", "-euo", "pipefail", "-c"]

# Paths and arguments reach bash quoted: {{quote(x)}} for a value, "$@" for the arguments of a
# [positional-arguments] recipe (each one word, e.g. `just build synth "my data"`, `just test -m "not slow"`)
py := justfile_directory() / ".venv/bin/python"
dp4tl := justfile_directory() / ".venv/bin/dp4tl"
ruff := justfile_directory() / ".venv/bin/ruff"

# list tasks
default:
    @{{quote(just_executable())}} --list --justfile {{quote(justfile())}}

# install apt packages + the pinned .venv (idempotent)
setup:
    bash scripts/setup.sh

# Two pytest workers (pytest-xdist), each test file whole on one of them, so a file's module
# fixtures are built once; `just test -n 0 ...` runs in one process (pdb, -s). Their torch
# threads share two cores: idle OpenMP threads sleep instead of spinning (OMP_WAIT_POLICY)
[doc("CPU test suite (what CI runs)")]
[positional-arguments]
test *args:
    OMP_WAIT_POLICY=PASSIVE {{quote(py)}} -m pytest -q -p no:cacheprovider -n 2 --dist loadfile "$@"

# pyflakes-class checks (unused imports, undefined names, syntax errors); also run by the suite (tests/test_lint.py)
[positional-arguments]
lint *args:
    {{quote(ruff)}} check "$@"

# the whole scripts/gpu_check.sh rehearsed on the CPU at toy sizes (~3 min idle): run before every device call
rehearse-gpu-check:
    GPU_CHECK_REHEARSAL=1 {{quote(py)}} -m pytest -q -p no:cacheprovider tests/test_gpu_check.py

# Relative paths (SOURCE, OUT, the defaults) are the caller's working folder's, as for dp4tl itself:
# [no-cd] (just runs a recipe in the Justfile's folder otherwise); run from the checkout, nothing changes
[doc("convert a dataset once into betons + shards: just build synth data/synth | just build imagenet:/data/ILSVRC data/imagenet")]
[no-cd]
[positional-arguments]
build source="synth" out="data/synth" *args:
    {{quote(dp4tl)}} build {{quote(source)}} --out {{quote(out)}} "${@:3}"

# key=value pairs become `dp4tl pipeline --key value`; embedded default data when no data= is given;
# relative paths and the default data/ and runs/ are the caller's working folder's ([no-cd], as `build`)
[no-exit-message]
[doc("the end-to-end job: just pretrain ratio=0.6 [method=fm] [data=imagenet:/data/ILSVRC target=flowers102:/data/flowers arch=resnet50]")]
[no-cd]
[positional-arguments]
pretrain *args:
    #!/usr/bin/env bash
    set -euo pipefail
    opts=()
    for a in "$@"; do
      case "$a" in
        -*) opts+=("$a") ;;  # already an option (--ratio=0.5, -o x): passed as given
        *=*) k="${a%%=*}"
          if [[ -z "${k//[[:space:]]/}" ]]; then  # (=0.5 became `--` `0.5`: "unexpected extra argument")
            echo "error: just pretrain: '$a' has no name before '='; write key=value, e.g. ratio=0.6" >&2
            exit 2
          fi
          opts+=("--${k//_/-}" "${a#*=}") ;;
        *) opts+=("$a") ;;
      esac
    done
    exec {{quote(dp4tl)}} pipeline "${opts[@]}"

# CPU benchmarks → BENCHMARKS.md: the data layer (args go to bench_data.py), then the cost table
[positional-arguments]
bench *args:  # (not `: (bench-data args)`: a dependency gets the args joined into one word)
    {{quote(just_executable())}} --justfile {{quote(justfile())}} --set py {{quote(py)}} --set dp4tl {{quote(dp4tl)}} bench-data "$@"
    {{quote(just_executable())}} --justfile {{quote(justfile())}} --set py {{quote(py)}} --set dp4tl {{quote(dp4tl)}} bench-cost

# CPU data-layer benchmark → BENCHMARKS.md
[positional-arguments]
bench-data *args:
    {{quote(py)}} benchmarks/bench_data.py "$@"

# args go to `dp4tl bench cost-table`, e.g. just bench-cost --methods lm,random --seeds 0,1
[doc("cost table + accuracy vs ratio on the embedded data → docs/cost-table/ + BENCHMARKS.md")]
[positional-arguments]
bench-cost *args:
    {{quote(dp4tl)}} bench cost-table --out docs/cost-table --report BENCHMARKS.md --runs-root runs/cost-table "$@"

# LP and FF, with the ground truth of every selection; a rerun resumes
[doc("do LM and FM beat RANDOM? paired test over seeds x targets on synth:hard → docs/embedded-benchmark/ + BENCHMARKS.md")]
[positional-arguments]
bench-embedded *args:
    {{quote(dp4tl)}} bench embedded --out docs/embedded-benchmark --report BENCHMARKS.md "$@"
