"""Shared fixtures: the embedded SmolLM2 model (loaded once) and a notebook runner."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def smollm2():
    """The embedded SmolLM2-135M-Instruct as a LoadedModel (cached float32 copy after the first load)."""
    from spectral_forensics.models import load_model

    return load_model()


def execute_notebook(name: str, env: dict[str, str], timeout: int = 600):
    """Execute ``notebooks/NAME`` in a fresh kernel with extra environment variables; return the notebook."""
    import nbformat
    from nbclient import NotebookClient

    path = REPO / "notebooks" / name
    notebook = nbformat.read(path, as_version=4)
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        client = NotebookClient(
            notebook,
            timeout=timeout,
            kernel_name="python3",
            resources={"metadata": {"path": str(REPO / "notebooks")}},
        )
        # ipykernel's built-in "python3" kernel runs sys.executable, so the kernel uses the
        # same virtualenv as the tests.
        client.execute()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return notebook
