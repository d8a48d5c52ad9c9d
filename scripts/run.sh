#!/usr/bin/env bash
# Set up .venv if needed, then run `spectral-forensics ARGS...` offline from the current
# directory (relative paths in ARGS stay relative to where you are).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
"$ROOT/scripts/setup.sh"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg
exec "$ROOT/.venv/bin/spectral-forensics" "$@"
