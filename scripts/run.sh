#!/usr/bin/env bash
# Set up everything (idempotent), build an optimised binary and run the service on
# http://127.0.0.1:8000 (Swagger UI at /docs). A private redis-server is started unless REDIS_URL is set.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
CARGO_PROFILE=release scripts/setup.sh
exec "${CARGO_TARGET_DIR:-target}/release/vipavatar" serve "$@"
