"""Figures of recorded experiment results, one PNG per experiment."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from spectral_forensics.experiments.definitions import get_experiment
from spectral_forensics.experiments.runner import EXPERIMENT_FILE, Results, load_results
from spectral_forensics.train import default_mode


def _curve(ax, x, entries, label, **style):
    means = np.array([e["mean"] for e in entries])
    low = np.array([e["min"] for e in entries])
    high = np.array([e["max"] for e in entries])
    line, = ax.plot(x, means, marker="o", label=label, **style)
    ax.fill_between(x, low, high, color=line.get_color(), alpha=0.15)


def _single_layer_induction(fig, results: Results) -> None:
    summary = results.summary
    ax = fig.add_subplot(1, 1, 1)
    gammas = sorted(float(g) for g in summary["by_gamma"])
    entries = [summary["by_gamma"][f"{g:g}"] for g in gammas]
    _curve(ax, gammas, entries, "one layer, momentum (mean; band: min-max over seeds)")
    for name, style in (("two-layer", "--"), ("smeared-key", ":")):
        base = summary.get(f"baseline_{name}")
        if base:
            ax.axhline(base["mean"], linestyle=style, color="grey", label=f"{name} baseline, γ = 0 ({base['mean']:.2f})")
    if summary.get("chance_accuracy") is not None:
        ax.axhline(summary["chance_accuracy"], color="black", linewidth=0.8, label="chance")
    if summary.get("transition_gamma") is not None:
        ax.axvline(summary["transition_gamma"], color="tab:red", alpha=0.5,
                   label=f"transition γ ≈ {summary['transition_gamma']:.2f}")
    ax.set_xlabel("γ")
    ax.set_ylabel("induction accuracy")
    ax.set_title("Single-layer induction against γ")
    ax.legend(fontsize=7)


def _depth_scaling(fig, results: Results) -> None:
    summary = results.summary
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    stars = []
    for depth, entry in sorted(summary["by_depth"].items(), key=lambda kv: int(kv[0])):
        gammas = sorted(float(g) for g in entry["by_gamma"])
        _curve(left, gammas, [entry["by_gamma"][f"{g:g}"] for g in gammas], f"N = {depth}")
        if "gamma_star" in entry:
            stars.append((int(depth), entry["gamma_star"], entry["gamma_star_std"]))
    left.set_xlabel("γ")
    left.set_ylabel("recall accuracy")
    left.set_title("Associative recall against γ")
    left.legend(fontsize=7)
    if stars:
        n, star, error = (np.array(v, dtype=float) for v in zip(*stars, strict=True))
        right.errorbar(n, star, yerr=error, fmt="o", label="measured γ*")
        grid = np.linspace(1, max(n.max(), 6), 100)
        right.plot(grid, 4.17 * grid**-0.74, "--", color="grey", label="published 4.17 N^-0.74")
        fit = summary.get("power_law")
        if fit:
            right.plot(grid, fit["a"] * grid ** -fit["b"], color="tab:red",
                       label=f"fit {fit['a']:.2f} N^-{fit['b']:.2f}")
    right.set_xlabel("depth N (layers)")
    right.set_ylabel("optimal γ*")
    right.set_title("Optimal coupling against depth")
    right.legend(fontsize=7)


def _chain(fig, results: Results, models) -> None:
    summary = results.summary
    ax = fig.add_subplot(1, 1, 1)
    lengths = sorted(int(length) for length in summary["by_chain_depth"])
    for model in models:
        entries = [summary["by_chain_depth"][str(length)][model] for length in lengths]
        if all(entries):
            _curve(ax, lengths, entries, model)
    if summary.get("chance_accuracy") is not None:
        ax.axhline(summary["chance_accuracy"], color="black", linewidth=0.8, label="chance")
    ax.set_xlabel("chain depth L (hops)")
    ax.set_ylabel("answer accuracy")
    title = "Multi-hop chains"
    if "audit_r" in summary:
        parts = [f"{m} r = {v['mean']:.2f}" for m, v in summary["audit_r"].items() if v]
        title += " (audit: " + ", ".join(parts) + ")"
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)


def _language_model(fig, results: Results) -> None:
    ax = fig.add_subplot(1, 1, 1)
    curves = 0
    for record in results.records:
        run = results.path / "runs" / record["run_id"] / "metrics.jsonl"
        if not run.is_file():
            continue
        rows = [r for r in _read_jsonl(run) if r.get("split") == "eval"]
        color = "tab:blue" if record["labels"]["model"] == "momentum" else "tab:orange"
        ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], color=color, alpha=0.8,
                label=f"{record['labels']['model']} ({record['parameters']:,} parameters)")
        curves += 1
    if curves:
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles, strict=True))
        ax.legend(unique.values(), unique.keys(), fontsize=7)
        ax.set_xlabel("step")
    else:
        # Without the run directories only the final losses are known.
        for i, name in enumerate(("momentum", "baseline")):
            losses = [r["loss"] for r in results.records if r["labels"]["model"] == name]
            ax.scatter([i] * len(losses), losses, label=name)
        ax.set_xticks([0, 1], ["momentum", "baseline"])
    ax.set_ylabel("validation loss (nats per byte)")
    gap = results.summary.get("loss_gap")
    ax.set_title("Language model" + (f": momentum loss {100 * gap:+.1f} % against the baseline" if gap is not None else ""))


def _read_jsonl(path: Path):
    import json

    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


_DRAW = {
    "single-layer-induction": (_single_layer_induction, (6, 4)),
    "depth-scaling": (_depth_scaling, (11, 4)),
    "icl-chain": (lambda fig, r: _chain(fig, r, ["momentum", "standard"]), (6, 4)),
    "rope-placement": (lambda fig, r: _chain(fig, r, ["post_rope", "pre_rope", "standard"]), (6, 4)),
    "language-model": (_language_model, (6, 4)),
}


def plot_experiment(results: Results, out: str | Path | None = None) -> Path:
    """Draw one experiment's figure to ``out`` (default ``<results>/figures/<name>.png``)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    get_experiment(results.experiment)
    if not results.records or results.summary is None:
        raise ValueError(f"{str(results.path)!r} contains no finished runs yet; run the experiment first")
    draw, size = _DRAW[results.experiment]
    fig = Figure(figsize=size, dpi=120, layout="constrained")
    draw(fig, results)
    path = Path(out) if out is not None else results.path / "figures" / f"{results.experiment}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png", dir=path.parent)
    os.close(descriptor)
    try:
        fig.savefig(temporary)
        default_mode(temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def plot_results(path: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Draw the figure of a results directory, or of every results directory inside ``path``.

    Figures go to ``out_dir/<name>.png`` when ``out_dir`` is given, else into each results
    directory's ``figures/``.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{str(path)!r} does not exist; pass the --out of `experiment run`")
    if (path / EXPERIMENT_FILE).is_file():
        directories = [path]
    elif path.is_dir():
        directories = sorted(p for p in path.iterdir() if (p / EXPERIMENT_FILE).is_file())
    else:
        directories = []
    if not directories:
        raise ValueError(
            f"{str(path)!r} is not a results directory and contains none; pass the --out of `experiment run`"
        )
    # Load (and so check) everything before drawing anything.
    loaded = [load_results(d) for d in directories]
    if out_dir is not None:
        names = [r.experiment for r in loaded]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(
                f"{str(path)!r} contains several results directories of {', '.join(repeated)}, whose figures "
                "would overwrite each other in --out; plot each directory on its own, or leave out --out"
            )
    written = []
    for results in loaded:
        target = None if out_dir is None else Path(out_dir) / f"{results.experiment}.png"
        written.append(plot_experiment(results, target))
    return written
