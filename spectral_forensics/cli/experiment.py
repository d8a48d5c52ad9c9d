"""The ``experiment`` command: list, run and plot the published Momentum Attention experiments."""

from __future__ import annotations

import argparse
import json

from spectral_forensics.cli.common import positive_int


def gamma_list(value: str) -> list[float]:
    """Parse ``"0,0.5,1,4"`` into floats."""
    try:
        return [float(part) for part in value.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid γ list {value!r}; use comma-separated numbers such as 0,1,4") from None


def setting(value: str) -> tuple[str, object]:
    """Parse ``KEY=VALUE``; VALUE is read as JSON when it parses (numbers, lists, true), else as text."""
    key, sep, text = value.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"invalid setting {value!r}; use KEY=VALUE such as steps=200 or depths=[1,2]")
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        parsed = text
    return key.strip(), parsed


def add_parsers(subparsers) -> None:
    """Add ``experiment list|run|plot``."""
    experiment = subparsers.add_parser(
        "experiment",
        help="rerun the published Momentum Attention experiments and draw their figures",
        description="List, run (resumably) and plot the published Momentum Attention experiments.",
    )
    actions = experiment.add_subparsers(dest="action", required=True, metavar="ACTION")

    listing = actions.add_parser("list", help="name, claim and settings of each experiment")
    listing.set_defaults(func=run_list)

    run = actions.add_parser(
        "run",
        help="train an experiment's runs into a results directory; finished runs are skipped",
        description=(
            "Train every run of an experiment and record one JSON line per finished run in "
            "OUT/runs.jsonl and the summary in OUT/summary.json. Rerunning the same command "
            "skips finished runs and resumes an interrupted one from its checkpoint."
        ),
    )
    run.add_argument("name", help="experiment name (see `experiment list`)")
    run.add_argument("--scale", default="cpu", help="settings preset: cpu (this machine) or gpu (default: cpu)")
    run.add_argument("--seeds", type=positive_int, help="seeds per setting (default: the experiment's)")
    run.add_argument("--gammas", type=gamma_list, help="γ values of experiments that sweep γ (default 0,0.25,0.5,1,2,3,4,5,6,8)")
    run.add_argument("--set", type=setting, action="append", default=[], metavar="KEY=VALUE",
                     help="replace one setting, e.g. steps=200 or depths=[1,2,4] (repeatable)")
    run.add_argument("--jobs", type=positive_int, default=1, help="runs trained at once in separate processes (default: 1)")
    run.add_argument("--out", required=True, help="results directory")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.set_defaults(func=run_run)

    plot = actions.add_parser("plot", help="draw the figures of recorded results")
    plot.add_argument("results", help="a results directory, or a directory of them")
    plot.add_argument("--out", help="directory for the PNGs (default: each results directory's figures/)")
    plot.set_defaults(func=run_plot)


def run_list(args: argparse.Namespace) -> int:
    from spectral_forensics.experiments import EXPERIMENTS

    for experiment in EXPERIMENTS.values():
        print(f"{experiment.name}\n  {experiment.description}\n  published: {experiment.claim}")
        for scale, settings in experiment.scales.items():
            values = {**settings["params"], **settings["train"]}
            text = " ".join(f"{key}={json.dumps(value)}" for key, value in values.items())
            print(f"  {scale} ({experiment.default_seeds.get(scale, 3)} seeds): {text}")
    return 0


def run_run(args: argparse.Namespace) -> int:
    import logging

    from spectral_forensics.experiments import run_experiment

    if not args.verbose:
        # One progress bar per experiment; the per-evaluation lines of every run are debug detail.
        logging.getLogger("spectral_forensics.train").setLevel(logging.WARNING)
    overrides = dict(args.set)
    results = run_experiment(args.name, args.out, scale=args.scale, seeds=args.seeds, gammas=args.gammas,
                             overrides=overrides, jobs=args.jobs, progress=not args.quiet)
    if results.summary is not None:
        print(f"{args.name}: {len(results.records)} finished runs; summary in {results.path / 'summary.json'}")
    return 0


def run_plot(args: argparse.Namespace) -> int:
    from spectral_forensics.experiments import plot_results

    for path in plot_results(args.results, args.out):
        print(path)
    return 0
