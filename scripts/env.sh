# shellcheck shell=bash
# Build environment for vipavatar: source this (scripts do) to build against the project-local
# PyTorch wheel (`.venv`) with tch's LIBTORCH_USE_PYTORCH mode.
VIPAVATAR_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export VIPAVATAR_ROOT
# VIPAVATAR_VENV moves the virtualenv out of the tree (CI keeps one per machine to cache it).
export VIRTUAL_ENV="${VIPAVATAR_VENV:-$VIPAVATAR_ROOT/.venv}"
export PATH="$VIRTUAL_ENV/bin:$HOME/.cargo/bin:$PATH"
export LIBTORCH_USE_PYTORCH=1
