#!/usr/bin/env bash
# Set up .venv if needed, then run `spectral-forensics ARGS...` offline.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg
exec .venv/bin/spectral-forensics "$@"
