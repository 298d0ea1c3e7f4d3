#!/usr/bin/env bash
# Set up everything (idempotent) and run the whole test suite. This is what CI runs.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
SKIP_BUILD=1 TEST_TOOLS=1 scripts/setup.sh
# shellcheck source=env.sh
source scripts/env.sh
# Formatting gate (rustfmt.toml): a diff fails the run before anything is compiled.
if cargo fmt --version >/dev/null 2>&1; then
  echo "[test] cargo fmt --check"
  cargo fmt --all --check
else
  echo "[test] rustfmt is not installed; skipping the formatting gate"
fi
# Lint gate: every clippy warning of every target fails the run (SKIP_CLIPPY=1 to skip it
# while iterating; CI never sets it).
if [ -z "${SKIP_CLIPPY:-}" ] && cargo clippy --version >/dev/null 2>&1; then
  echo "[test] cargo clippy --workspace --all-targets -- -D warnings"
  cargo clippy --workspace --all-targets -- -D warnings
  # The pipeline without OpenCV (what the GPU check builds, scripts/gpu-check.sh) must stay clean too.
  echo "[test] cargo clippy -p vipavatar-pipeline --no-default-features --all-targets -- -D warnings"
  cargo clippy -p vipavatar-pipeline --no-default-features --all-targets -- -D warnings
elif [ -z "${SKIP_CLIPPY:-}" ]; then
  echo "[test] clippy is not installed; skipping the lint gate"
fi
echo "[test] cargo test --workspace"
cargo test --workspace --no-fail-fast "$@"
if [ -z "${SKIP_SCHEMATHESIS:-}" ]; then
  echo "[test] scripts/schemathesis.sh"
  scripts/schemathesis.sh
fi
