"""Axis-argument validation shared by the array functions."""

from __future__ import annotations

import operator


def normalize_axis(axis: int, ndim: int, name: str) -> int:
    """Return ``axis`` as a non-negative index into ``ndim`` dimensions, or raise ValueError naming ``name``."""
    try:
        axis = operator.index(axis)
    except TypeError as error:
        raise ValueError(f"{name}={axis!r} is not an integer axis index.") from error
    if not -ndim <= axis < ndim:
        raise ValueError(
            f"{name}={axis} is out of range for an array with {ndim} dimensions. "
            f"Use a value in [{-ndim}, {ndim - 1}]."
        )
    return axis % ndim
