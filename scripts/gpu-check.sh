#!/usr/bin/env bash
# The GPU check: the SadTalker and GFPGAN network parity tests and their timings, built here for
# a GPU host that has only Python's torch (no Rust, no OpenCV, no registry; at most 64 MiB
# brought along).
#
#   scripts/gpu-check.sh bundle [DIR]  build the bundle into DIR (default gpu-check/, git-ignored):
#       `check`, the pipeline's test binary without the `opencv` feature (only the SadTalker and
#       GFPGAN network tests), linked against torch==$GPU_TORCH (the host's version; installed into a
#       second venv, VIPAVATAR_GPU_VENV) through the tch release made for it ($GPU_TCH); the
#       fixtures those tests read (without the 3DMM recon net's: 46 MB of weights, the tests that read
#       them are skipped; GFPGAN's network fixtures in fixtures-gfpgan/); `run.sh`, `report.py`. Fails when the bundle is 64 MiB or more.
#   scripts/gpu-check.sh cpu [DIR]     run the bundle here on the CPU against torch $GPU_TORCH's
#       libraries (the proof that it runs before any GPU time is spent).
#   DIR/run.sh                         on the GPU host: writes $OUT/gpu-check.json (and the logs).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

GPU_TORCH=2.11.0
GPU_TCH=0.24.0
LIMIT=$((64 * 1024 * 1024))
mode=${1:-bundle}
dir=${2:-gpu-check}
venv=${VIPAVATAR_GPU_VENV:-$HOME/.cache/vipavatar/venv-torch${GPU_TORCH//./}}
log() { printf 'gpu-check: %s\n' "$*" >&2; }

torch_lib() { echo "$("$venv/bin/python" -c 'import os, torch; print(os.path.dirname(torch.__file__))')/lib"; }

bundle() {
  if ! "$venv/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$GPU_TORCH')" 2>/dev/null; then
    log "installing torch==$GPU_TORCH into $venv (the GPU host's version; about 5 GB)"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "torch==$GPU_TORCH"
  fi
  # A copy of the working tree whose lock pins tch to the release made for libtorch $GPU_TORCH
  # (the workspace accepts tch 0.24-0.26; this repository's own lock stays on 0.26).
  local work=${VIPAVATAR_GPU_WORK:-$HOME/.cache/vipavatar/gpu-check-build}
  rm -rf "$work/src" && mkdir -p "$work/src"
  git ls-files -co --exclude-standard -z | tar --null -T - -cf - | tar -C "$work/src" -xf -
  (
    cd "$work/src"
    export VIRTUAL_ENV="$venv" PATH="$venv/bin:$PATH" CARGO_TARGET_DIR="$work/target"
    cargo update -q -p tch --precise "$GPU_TCH"
    log "building the check against torch $GPU_TORCH ($(cargo tree -q -p vipavatar-pipeline --no-default-features -i tch --depth 0 | head -1))"
    cargo test -q -p vipavatar-pipeline --no-default-features --release --test main --no-run \
      --message-format=json-render-diagnostics >"$work/build.json"
  )
  local exe
  exe=$(python3 -c '
import json, sys
for line in open(sys.argv[1]):
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "main":
        print(m["executable"])' "$work/build.json" | tail -1)
  [ -x "$exe" ] || { log "no test binary was built"; exit 1; }
  rm -rf "$dir" && mkdir -p "$dir/fixtures"
  cp "$exe" "$dir/check" && strip "$dir/check"
  local fx=${VIPAVATAR_SADTALKER_FIXTURES:-../shared/fixtures/sadtalker}
  find "$fx" -maxdepth 1 -type f ! -name 'face3d_recon.*' ! -name 'align.*' -exec cp {} "$dir/fixtures/" \;
  mkdir -p "$dir/fixtures-gfpgan"
  cp pipeline/tests/fixtures/gfpgan/{config.json,official_layout.json,network.pth,network.io.safetensors} \
    pipeline/tests/fixtures/gfpgan/{full_layer.pth,full_layer.io.safetensors} \
    pipeline/tests/fixtures/gfpgan/{parse_official_layout.json,parse_network.pth,parse_network.io.safetensors} \
    pipeline/tests/fixtures/gfpgan/{parse_full_layer.pth,parse_full_layer.io.safetensors} "$dir/fixtures-gfpgan/"
  cp scripts/gpu-check/run.sh scripts/gpu-check/report.py "$dir/"
  {
    echo "commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo '+changes')"
    echo "torch $GPU_TORCH, tch $GPU_TCH, built $(date -u +%FT%TZ)"
  } >"$dir/BUNDLE.txt"
  local size
  size=$(du -sb "$dir" | cut -f1)
  log "bundle $dir: $((size / 1024 / 1024)) MiB ($size bytes; limit 64 MiB)"
  [ "$size" -lt "$LIMIT" ] || { log "the bundle is too big for the GPU host"; exit 1; }
}

case "$mode" in
  bundle) bundle ;;
  cpu)
    [ -x "$dir/check" ] || bundle
    TORCH_LIB="$(torch_lib)" VIPAVATAR_DEVICE=cpu OUT="${OUT:-$dir/out-cpu}" bash "$dir/run.sh"
    ;;
  *) echo "usage: $0 bundle|cpu [DIR]" >&2; exit 2 ;;
esac
