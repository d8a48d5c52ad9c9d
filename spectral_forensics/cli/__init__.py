"""Command line of spectral_forensics: ``spectral-forensics COMMAND ...``.

Each subcommand module adds its parsers; handlers only parse, validate and call the library.
"""

from __future__ import annotations

import argparse
import logging
import sys

from spectral_forensics import __version__


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level parser with every subcommand registered."""
    from spectral_forensics.cli import bode, experiment, forensics, train

    parser = argparse.ArgumentParser(
        prog="spectral-forensics",
        description="Spectral forensics of attention heads and Momentum Attention.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    bode.add_parsers(subparsers)
    forensics.add_parsers(subparsers)
    train.add_parsers(subparsers)
    experiment.add_parsers(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    # transformers and TransformerLens log at INFO while loading; keep their warnings only.
    for noisy in ("transformers", "transformer_lens", "accelerate"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, PermissionError, RuntimeError) as exc:
        print(f"spectral-forensics {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"spectral-forensics {args.command}: interrupted", file=sys.stderr)
        return 130
