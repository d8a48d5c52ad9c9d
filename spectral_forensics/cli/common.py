"""Argument types shared by the subcommands."""

from __future__ import annotations

import argparse


def index_list(value: str) -> list[int]:
    """Parse ``"0,5,29"``, ``"0-3"`` or a mix such as ``"0-3,7"`` into a list of ints."""
    out: list[int] = []
    for part in value.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                first, last = (int(p) for p in part.split("-", 1))
                if last < first:
                    raise ValueError
                out.extend(range(first, last + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"invalid index list {value!r}; use comma-separated integers and ranges such as 0,5,29 or 0-3"
            ) from None
    if not out:
        raise argparse.ArgumentTypeError(f"empty index list {value!r}")
    return out


def positive_int(value: str) -> int:
    """Parse an integer ≥ 1."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return number


def stage_list(value: str) -> list[str]:
    """Parse a comma-separated list of hook stages (``rot_q,rot_k``)."""
    stages = [s.strip().removeprefix("hook_") for s in value.split(",") if s.strip()]
    if not stages:
        raise argparse.ArgumentTypeError(f"empty stage list {value!r}")
    return stages
