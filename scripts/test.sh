#!/usr/bin/env bash
# Set up everything (idempotent) and run the whole test suite. This is what CI runs.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
SKIP_BUILD=1 scripts/setup.sh
# shellcheck source=env.sh
source scripts/env.sh
echo "[test] cargo test --workspace"
cargo test --workspace --no-fail-fast "$@"
if [ -z "${SKIP_SCHEMATHESIS:-}" ]; then
  echo "[test] scripts/schemathesis.sh"
  scripts/schemathesis.sh
fi
