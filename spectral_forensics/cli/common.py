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
    """Parse a comma-separated list of hook stages (``rot_q,rot_k``) and stage pairs (``rot_k:mom_k``)."""
    stages = []
    for item in value.split(","):
        parts = [p.strip().removeprefix("hook_") for p in item.split(":")]
        if not all(parts) or len(parts) > 2:
            raise argparse.ArgumentTypeError(
                f"invalid stage {item!r} in {value!r}; use names such as rot_q or pairs such as rot_k:mom_k"
            )
        stages.append(":".join(parts))
    return stages
