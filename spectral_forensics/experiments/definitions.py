"""The published Momentum Attention experiments: settings per scale, the runs, their summaries.

Each experiment lists its runs as :class:`RunSpec` (an id, labels and training settings) and
summarises the finished run records. The published task settings are not public; the settings
below are this toolkit's choices and are stored with every result.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from spectral_forensics.experiments.fit import (
    bootstrap_argmax,
    crossing,
    fit_power_law,
    refined_argmax,
    spread,
)

DEFAULT_GAMMAS = (0.0, 0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0)


@dataclass(frozen=True)
class RunSpec:
    """One training run of an experiment."""

    run_id: str
    labels: dict[str, Any]
    train: dict[str, Any]
    audit: bool = False


@dataclass
class Experiment:
    """An experiment: its claim, its settings per scale and how its runs are summarised."""

    name: str
    description: str
    claim: str
    scales: dict[str, dict[str, Any]]
    sweeps_gamma: bool = False
    default_seeds: dict[str, int] = field(default_factory=lambda: {"cpu": 3, "gpu": 3})

    def settings(self, scale: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """Return the settings of ``scale`` with ``overrides`` applied to training or experiment keys."""
        if scale not in self.scales:
            raise ValueError(
                f"scale={scale!r} is not known for experiment {self.name!r}; use one of {', '.join(self.scales)}"
            )
        settings = copy.deepcopy(self.scales[scale])
        for key, value in (overrides or {}).items():
            if key in settings["params"]:
                _check_param(key, value, settings["params"][key])
                settings["params"][key] = value
            elif key in _TRAIN_FIELDS:
                settings["train"][key] = value
            else:
                raise ValueError(
                    f"setting {key!r} is not known for experiment {self.name!r}; valid keys are its "
                    f"parameters ({', '.join(sorted(settings['params']))}) and the training fields "
                    f"({', '.join(sorted(_TRAIN_FIELDS))})"
                )
        return settings

    def runs(self, settings: dict[str, Any], gammas: list[float], seeds: int) -> list[RunSpec]:
        raise NotImplementedError

    def summarise(self, records: list[dict[str, Any]], settings: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError


def _check_param(key: str, value: Any, default: Any) -> None:
    """Check an experiment parameter against the form of its default value."""
    if isinstance(default, list):
        if (not isinstance(value, list) or not value
                or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)):
            raise ValueError(
                f"{key}={value!r} is not valid; give a non-empty JSON list of integers >= 1, "
                f"e.g. --set {key}={default}"
            )
        if len(set(value)) != len(value):
            raise ValueError(f"{key}={value!r} repeats a value; give each once")
    elif isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{key}={value!r} is not valid; give a finite number >= 0, e.g. --set {key}={default}")
    elif key == "param_ratio" and value <= 1:
        raise ValueError(f"param_ratio={value!r} is not valid; the baseline must be larger, so give a ratio > 1")


def _train_fields() -> set[str]:
    from spectral_forensics.train import TrainConfig

    return {f.name for f in dataclasses.fields(TrainConfig)} - {"out_dir", "seed", "gamma"}


_TRAIN_FIELDS = _train_fields()


def _g(value: float) -> str:
    return f"{value:g}"


def _by(records, **labels) -> list[dict[str, Any]]:
    return [r for r in records if all(r["labels"].get(k) == v for k, v in labels.items())]


def _accuracies(records, **labels) -> list[float]:
    return [r["accuracy"] for r in _by(records, **labels)]


def _chance(records) -> float | None:
    values = [r["chance_accuracy"] for r in records]
    return float(np.mean(values)) if values else None


# --------------------------------------------------------------------------------------------
# single-layer-induction
# --------------------------------------------------------------------------------------------


class SingleLayerInduction(Experiment):
    def runs(self, settings, gammas, seeds):
        specs = []
        for gamma in gammas:
            for seed in range(seeds):
                specs.append(RunSpec(f"momentum-g{_g(gamma)}-s{seed}", {"model": "momentum", "gamma": gamma, "seed": seed},
                                     {"gamma": gamma, "seed": seed}))
        for seed in range(seeds):
            specs.append(RunSpec(f"two-layer-s{seed}", {"model": "two-layer", "gamma": 0.0, "seed": seed},
                                 {"gamma": 0.0, "seed": seed, "layers": 2}))
            specs.append(RunSpec(f"smeared-key-s{seed}", {"model": "smeared-key", "gamma": 0.0, "seed": seed},
                                 {"gamma": 0.0, "seed": seed, "placement": "none", "smear_keys": True}))
        return specs

    def summarise(self, records, settings):
        momentum = _by(records, model="momentum")
        gammas = sorted({r["labels"]["gamma"] for r in momentum})
        curve = {_g(g): spread(_accuracies(momentum, gamma=g)) for g in gammas}
        means = np.array([curve[_g(g)]["mean"] for g in gammas])
        summary: dict[str, Any] = {"chance_accuracy": _chance(records), "by_gamma": curve}
        if gammas:
            best = int(np.argmax(means))
            summary["best_gamma"] = gammas[best]
            summary["best_accuracy"] = curve[_g(gammas[best])]
            # Half-way (transition) and a tenth of the way (onset, where induction starts to
            # emerge) from the smallest swept γ to the best mean, on the linear interpolation.
            rise = means[best] - means[0]
            x, y = np.array(gammas[: best + 1]), means[: best + 1]
            # Without a rise above the smallest γ there is no transition to locate.
            # NOTE: any rise counts, even one within the seed spread, so at chance level the
            # transition and onset locate noise.
            summary["transition_gamma"] = crossing(x, y, means[0] + 0.5 * rise) if rise > 0 else None
            summary["onset_gamma"] = crossing(x, y, means[0] + 0.1 * rise) if rise > 0 else None
        for name in ("two-layer", "smeared-key"):
            values = _accuracies(records, model=name)
            summary[f"baseline_{name}"] = spread(values) if values else None
        return summary


# --------------------------------------------------------------------------------------------
# depth-scaling
# --------------------------------------------------------------------------------------------


class DepthScaling(Experiment):
    def runs(self, settings, gammas, seeds):
        specs = []
        for depth in settings["params"]["depths"]:
            for gamma in gammas:
                for seed in range(seeds):
                    specs.append(RunSpec(f"n{depth}-g{_g(gamma)}-s{seed}", {"depth": depth, "gamma": gamma, "seed": seed},
                                         {"gamma": gamma, "seed": seed, "layers": depth}))
        return specs

    def summarise(self, records, settings):
        # γ* minimises the validation loss: accuracy saturates at 100 % over a range of γ on
        # easy settings, where its maximiser is not defined, while the loss keeps ranking them.
        depths = sorted({r["labels"]["depth"] for r in records})
        per_depth = {}
        points = []
        for depth in depths:
            rows = _by(records, depth=depth)
            gammas = sorted({r["labels"]["gamma"] for r in rows})
            losses = [np.array([r["loss"] for r in _by(rows, gamma=g)]) for g in gammas]
            entry = {
                "by_gamma": {_g(g): spread(_accuracies(rows, gamma=g)) for g in gammas},
                "loss_by_gamma": {_g(g): spread(list(v)) for g, v in zip(gammas, losses, strict=True)},
            }
            if len(gammas) >= 2:
                means = np.array([v.mean() for v in losses])
                star = refined_argmax(np.array(gammas), -means)
                boot = bootstrap_argmax(np.array(gammas), [-v for v in losses], resamples=500, seed=depth)
                # The grid limits how well γ* is located even when every resample agrees: the
                # floor is a quarter of the grid spacing around the best point.
                best = int(np.argmin(means))
                grid = np.array(gammas)
                spacing = float(grid[min(best + 1, len(grid) - 1)] - grid[max(best - 1, 0)]) / (
                    2 if 0 < best < len(grid) - 1 else 1)
                error = max(float(boot.std(ddof=1)), spacing / 4)
                entry.update({"gamma_star": star, "gamma_star_std": error,
                              "gamma_star_interval_68": [float(np.percentile(boot, 16)), float(np.percentile(boot, 84))],
                              "best_loss": float(means[best]),
                              "best_accuracy": entry["by_gamma"][_g(gammas[best])]["mean"]})
                points.append((depth, star, error))
            per_depth[str(depth)] = entry
        summary: dict[str, Any] = {"chance_accuracy": _chance(records), "by_depth": per_depth,
                                   "published": {"a": 4.17, "b": 0.74}}
        usable = [(n, s, e) for n, s, e in points if s > 0]
        if len(usable) >= 3:
            n, star, error = (np.array(v, dtype=float) for v in zip(*usable, strict=True))
            summary["power_law"] = fit_power_law(n, star, error).to_dict()
        else:
            summary["power_law"] = None
            summary["power_law_note"] = (
                f"{len(usable)} depth(s) have γ* > 0; the fit needs 3. Sweep more depths or finer γ."
            )
        return summary


# --------------------------------------------------------------------------------------------
# icl-chain and rope-placement
# --------------------------------------------------------------------------------------------


def _gain(momentum: list[float], standard: list[float]) -> float | None:
    if not momentum or not standard or np.mean(standard) == 0:
        return None
    return float((np.mean(momentum) - np.mean(standard)) / np.mean(standard))


def _chain_summary(records, models: list[str]) -> dict[str, Any]:
    lengths = sorted({r["labels"]["chain_depth"] for r in records})
    table = {}
    for length in lengths:
        row = {}
        for model in models:
            values = _accuracies(records, model=model, chain_depth=length)
            row[model] = spread(values) if values else None
        standard = _accuracies(records, model="standard", chain_depth=length)
        row["relative_gain_over_standard"] = {
            m: _gain(_accuracies(records, model=m, chain_depth=length), standard) for m in models if m != "standard"
        }
        table[str(length)] = row
    summary: dict[str, Any] = {"by_chain_depth": table}
    if "10" in table and "30" in table:
        summary["from_10_to_30"] = {}
        for model in models:
            a10, a30 = table["10"][model], table["30"][model]
            change = None if not a10 or not a30 or a10["mean"] == 0 else (a30["mean"] - a10["mean"]) / a10["mean"]
            entry = {"relative_accuracy_change": change}
            if model != "standard":
                g10 = table["10"]["relative_gain_over_standard"][model]
                g30 = table["30"]["relative_gain_over_standard"][model]
                entry["gain_over_standard_at_10"] = g10
                entry["gain_over_standard_at_30"] = g30
            summary["from_10_to_30"][model] = entry
    return summary


def _chain_runs(settings, seeds, variants) -> list[RunSpec]:
    """Runs of every (model, γ, placement) variant at every chain depth and seed."""
    specs = []
    for length in settings["params"]["chain_depths"]:
        for model, gamma, placement in variants:
            for seed in range(seeds):
                specs.append(RunSpec(
                    f"{model}-l{length}-s{seed}", {"model": model, "chain_depth": length, "seed": seed, "gamma": gamma},
                    {"gamma": gamma, "seed": seed, "depth": length, "placement": placement},
                    audit=model in ("post_rope", "pre_rope"),
                ))
    return specs


class ICLChain(Experiment):
    def runs(self, settings, gammas, seeds):
        gamma = settings["params"]["momentum_gamma"]
        return _chain_runs(settings, seeds, [("momentum", gamma, "post_rope"), ("standard", 0.0, "none")])

    def summarise(self, records, settings):
        summary = _chain_summary(records, ["momentum", "standard"])
        summary["chance_accuracy"] = _chance(records)
        return summary


class RopePlacement(Experiment):
    def runs(self, settings, gammas, seeds):
        gamma = settings["params"]["momentum_gamma"]
        return _chain_runs(settings, seeds, [("post_rope", gamma, "post_rope"), ("pre_rope", gamma, "pre_rope"),
                                             ("standard", 0.0, "none")])

    def summarise(self, records, settings):
        summary = _chain_summary(records, ["post_rope", "pre_rope", "standard"])
        summary["chance_accuracy"] = _chance(records)
        summary["audit_r"] = {}
        for model in ("post_rope", "pre_rope"):
            values = [r["audit"]["mean_r"] for r in _by(records, model=model)
                      if r.get("audit") and r["audit"]["mean_r"] is not None]
            summary["audit_r"][model] = spread(values) if values else None
        summary["published"] = {"post_rope": {"r": 0.94, "gain_10_to_30": 0.525},
                                "pre_rope": {"r": 0.12, "gain_10_to_30": -0.041}}
        summary["rope_theta"] = settings["train"]["rope_theta"]
        return summary


# --------------------------------------------------------------------------------------------
# language-model
# --------------------------------------------------------------------------------------------


def parameter_count(train: dict[str, Any]) -> int:
    """Count the parameters of the model a training configuration builds (on the meta device)."""
    import torch

    from spectral_forensics.train import TrainConfig, build_model, build_task, resolve_config

    config = TrainConfig(**{k: v for k, v in train.items() if k != "out_dir"})
    config = resolve_config(config, build_task(config))
    with torch.device("meta"):
        model = build_model(config)
    return sum(p.numel() for p in model.parameters())


def baseline_width(train: dict[str, Any], ratio: float) -> int:
    """Return the baseline d_model (a multiple of 2 · heads) whose parameter count is closest
    to ``ratio`` times the momentum model's."""
    target = ratio * parameter_count(train)
    step = 2 * train["heads"]
    best, best_error = train["d_model"], math.inf
    width = step
    while True:
        count = parameter_count({**train, "d_model": width, "d_mlp": None})
        error = abs(math.log(count / target))
        if error < best_error:
            best, best_error = width, error
        if count > target:
            return best
        width += step


class LanguageModel(Experiment):
    def runs(self, settings, gammas, seeds):
        params = settings["params"]
        width = baseline_width(settings["train"], params["param_ratio"])
        specs = []
        for seed in range(seeds):
            specs.append(RunSpec(f"momentum-s{seed}", {"model": "momentum", "seed": seed, "gamma": params["momentum_gamma"]},
                                 {"gamma": params["momentum_gamma"], "seed": seed}))
            specs.append(RunSpec(f"baseline-s{seed}", {"model": "baseline", "seed": seed, "gamma": 0.0},
                                 {"gamma": 0.0, "seed": seed, "d_model": width, "d_mlp": None, "placement": "none"}))
        return specs

    def summarise(self, records, settings):
        momentum = [r["loss"] for r in _by(records, model="momentum")]
        baseline = [r["loss"] for r in _by(records, model="baseline")]
        summary: dict[str, Any] = {"published": {"loss_gap": 0.029, "sizes": "125M momentum vs 350M baseline"}}
        for name, values in (("momentum", momentum), ("baseline", baseline)):
            rows = _by(records, model=name)
            summary[name] = {"loss": spread(values) if values else None,
                             "parameters": rows[0]["parameters"] if rows else None}
        if momentum and baseline:
            summary["parameter_ratio"] = summary["baseline"]["parameters"] / summary["momentum"]["parameters"]
            summary["loss_gap"] = float((np.mean(momentum) - np.mean(baseline)) / np.mean(baseline))
            pairs = [(m["loss"], b["loss"]) for m in _by(records, model="momentum")
                     for b in _by(records, model="baseline") if m["labels"]["seed"] == b["labels"]["seed"]]
            if pairs:
                summary["loss_gap_by_seed"] = spread([(m - b) / b for m, b in pairs])
        return summary


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

_INDUCTION = {"task": "induction", "seq_len": 64, "vocab_size": 64, "layers": 1, "d_model": 64, "heads": 4,
              "attn_only": True, "placement": "post_rope", "batch_size": 64, "lr": 3e-3, "steps": 400,
              "eval_every": 100, "eval_batches": 4, "log_every": 50}
_MQAR = {"task": "mqar", "seq_len": 64, "vocab_size": 128, "d_model": 64, "heads": 4, "attn_only": True,
         "placement": "post_rope", "batch_size": 64, "lr": 3e-3, "steps": 300, "eval_every": 100,
         "eval_batches": 4, "log_every": 50}
_CHAIN = {"task": "chain", "rope_theta": 10000.0, "layers": 2, "d_model": 64, "heads": 4, "attn_only": True, "placement": "post_rope",
          "batch_size": 64, "lr": 3e-3, "steps": 400, "eval_every": 100, "eval_batches": 4, "log_every": 50,
          "task_options": {"num_chains": 2}}
_TEXT = {"task": "text", "seq_len": 128, "layers": 2, "d_model": 64, "heads": 4, "placement": "post_rope",
         "batch_size": 32, "lr": 3e-3, "steps": 600, "eval_every": 200, "eval_batches": 8, "log_every": 50}


def _gpu(base: dict[str, Any], **changes) -> dict[str, Any]:
    return {**base, "device": "cuda", "dtype": "bf16", **changes}


def _chain_scales(cpu_depths: list[int], gpu_depths: list[int]) -> dict[str, dict[str, Any]]:
    return {
        "cpu": {"train": dict(_CHAIN), "params": {"chain_depths": cpu_depths, "momentum_gamma": 1.0}},
        "gpu": {"train": _gpu(_CHAIN, layers=4, d_model=128, heads=8, batch_size=128, steps=4000, eval_every=250),
                "params": {"chain_depths": gpu_depths, "momentum_gamma": 1.0}},
    }


EXPERIMENTS: dict[str, Experiment] = {
    e.name: e
    for e in (
        SingleLayerInduction(
            name="single-layer-induction",
            description="one attention-only layer on random-lag induction, γ swept; baselines: two layers at "
            "γ = 0 and a one-layer smeared-key model",
            claim="γ = 0 at chance (1.2 %); best 83.4 % at γ = 4.0; transition near γ ≈ 1.0; saturation above 4",
            scales={
                "cpu": {"train": dict(_INDUCTION), "params": {}},
                "gpu": {"train": _gpu(_INDUCTION, seq_len=256, vocab_size=128, d_model=128, heads=8, batch_size=128,
                                      steps=3000, eval_every=250, eval_batches=8), "params": {}},
            },
            sweeps_gamma=True,
        ),
        DepthScaling(
            name="depth-scaling",
            description="multi-query associative recall at depths N, γ swept per N; γ* per N and the fit "
            "γ* = a N^-b",
            claim="γ* = 4.17 × N^-0.74",
            scales={
                "cpu": {"train": dict(_MQAR), "params": {"depths": [1, 2, 3, 4, 6]}},
                "gpu": {"train": _gpu(_MQAR, seq_len=128, vocab_size=256, d_model=128, heads=8, batch_size=128,
                                      steps=3000, eval_every=250), "params": {"depths": [1, 2, 3, 4, 6]}},
            },
            sweeps_gamma=True,
            default_seeds={"cpu": 2, "gpu": 3},
        ),
        ICLChain(
            name="icl-chain",
            description="multi-hop chains of depth L: momentum against a standard model of equal size",
            claim="momentum gains +52.5 % from chain depth 10 to 30 (post-RoPE)",
            scales=_chain_scales([2, 5, 10, 20, 30], [2, 5, 10, 15, 20, 25, 30]),
            default_seeds={"cpu": 2, "gpu": 3},
        ),
        RopePlacement(
            name="rope-placement",
            description="the same chain models with the shear before and after RoPE: accuracy and the audit's r",
            claim="pre-RoPE: r = 0.12, -4.1 %; post-RoPE: r = 0.94, +52.5 % (chain depth 10 -> 30)",
            scales=_chain_scales([10, 30], [10, 30]),
            default_seeds={"cpu": 2, "gpu": 3},
        ),
        LanguageModel(
            name="language-model",
            description="byte-level Shakespeare: a momentum model against a γ = 0 baseline with about 2.8 times "
            "its parameters, same tokens and steps",
            claim="a 125M momentum model is within about 2.9 % validation loss of a 350M baseline",
            scales={
                "cpu": {"train": dict(_TEXT), "params": {"param_ratio": 2.8, "momentum_gamma": 1.0}},
                "gpu": {"train": _gpu(_TEXT, seq_len=512, layers=12, d_model=768, heads=12, batch_size=64,
                                      lr=6e-4, steps=20000, eval_every=1000, eval_batches=16),
                        "params": {"param_ratio": 2.8, "momentum_gamma": 1.0}},
            },
            default_seeds={"cpu": 2, "gpu": 1},
        ),
    )
}


def get_experiment(name: str) -> Experiment:
    """Return the experiment called ``name``; ValueError lists the known names."""
    if name not in EXPERIMENTS:
        raise ValueError(f"experiment {name!r} is not known; use one of {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[name]
