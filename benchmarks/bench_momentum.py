"""Benchmark Momentum Attention: overhead of the shear, of the bridge, and time to induction.

Three measurements in one run:

1. Forward and training-step time of the same model and batch with the shear on (γ = 4,
   post-RoPE and pre-RoPE) relative to plain attention (placement "none"). Target: ratio <= 1.05.
2. Forward time through a TransformerLens ``TransformerBridge`` relative to the plain
   Hugging Face forward of the same model.
3. Wall time for a one-layer, attention-only model at γ = 4 to reach 80 % accuracy on the
   induction task (first evaluation at or above 0.8). Target: under 5 minutes on 2 CPU cores.

Usage::

    python benchmarks/bench_momentum.py            # full run (a few minutes on 2 CPU cores)
    python benchmarks/bench_momentum.py --quick    # seconds; checks that the script works
    python benchmarks/bench_momentum.py --json results/bench_momentum.json

Timings are medians over repeats after warm-up iterations. Run on a quiet machine: other
processes on the same cores change every number.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from spectral_forensics.momentum.adapter import build_momentum_bridge
from spectral_forensics.momentum.modeling import MomentumConfig, MomentumForCausalLM
from spectral_forensics.train import TrainConfig, read_metrics, train

# Overhead model: a small decoder typical of the task experiments.
FULL_MODEL = dict(layers=4, d_model=256, heads=8, seq_len=256, batch=8, repeats=20, warmup=3)
QUICK_MODEL = dict(layers=2, d_model=64, heads=4, seq_len=64, batch=4, repeats=3, warmup=1)

# Induction settings under which γ = 4 first reached 80 % eval accuracy at step 350 of 600, after
# 80 s (one thread on a 2-core machine shared with other jobs), with a final accuracy of 0.87.
FULL_INDUCTION = dict(
    task="induction", seq_len=64, vocab_size=64, layers=1, d_model=64, heads=4, attn_only=True,
    steps=600, batch_size=64, lr=3e-3, eval_every=25, eval_batches=4, seed=0,
)
QUICK_INDUCTION = dict(FULL_INDUCTION, seq_len=32, vocab_size=32, batch_size=32, steps=30, eval_every=10)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _interleaved_medians(functions: dict, repeats: int, warmup: int, device: torch.device) -> dict:
    """Time several functions round-robin and return each one's median in seconds.

    Alternating the functions inside every round spreads slow drift (other processes, CPU
    frequency) evenly over them, which a ratio of two separately timed blocks does not.
    """
    for function in functions.values():
        for _ in range(warmup):
            function()
    _synchronize(device)
    times = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            _synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def _model(settings: dict, gamma: float, placement: str, device: torch.device) -> MomentumForCausalLM:
    config = MomentumConfig(
        vocab_size=256, hidden_size=settings["d_model"], num_hidden_layers=settings["layers"],
        num_attention_heads=settings["heads"], max_position_embeddings=settings["seq_len"],
        gamma=gamma, placement=placement,
    )
    torch.manual_seed(0)
    return MomentumForCausalLM(config).to(device)


def measure_overhead(settings: dict, device: torch.device) -> dict:
    """Time forward passes and training steps with and without the shear."""
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 256, (settings["batch"], settings["seq_len"]), generator=generator).to(device)
    variants = {"plain": (0.0, "none"), "post_rope": (4.0, "post_rope"), "pre_rope": (4.0, "pre_rope")}
    models = {name: _model(settings, gamma, placement, device) for name, (gamma, placement) in variants.items()}
    optimizers = {name: torch.optim.AdamW(model.parameters(), lr=1e-4) for name, model in models.items()}

    def forward(model):
        @torch.no_grad()
        def run():
            model(tokens)

        return run

    def train_step(model, optimizer):
        def run():
            model(tokens, labels=tokens).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return run

    for model in models.values():
        model.eval()
    forward_s = _interleaved_medians(
        {name: forward(model) for name, model in models.items()}, settings["repeats"], settings["warmup"], device
    )
    for model in models.values():
        model.train()
    step_s = _interleaved_medians(
        {name: train_step(models[name], optimizers[name]) for name in models},
        settings["repeats"], settings["warmup"], device,
    )
    results = {name: {"forward_s": forward_s[name], "train_step_s": step_s[name]} for name in models}
    for name in ("post_rope", "pre_rope"):
        results[name]["forward_ratio"] = forward_s[name] / forward_s["plain"]
        results[name]["train_step_ratio"] = step_s[name] / step_s["plain"]
    return results


def measure_bridge(settings: dict, device: torch.device) -> dict:
    """Time the bridge forward against the plain forward of the same weights."""
    model = _model(settings, 4.0, "post_rope", device).eval()
    bridge = build_momentum_bridge(copy.deepcopy(model))
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 256, (settings["batch"], settings["seq_len"]), generator=generator).to(device)
    with torch.no_grad():
        times = _interleaved_medians(
            {"hf": lambda: model(tokens), "bridge": lambda: bridge(tokens)},
            settings["repeats"], settings["warmup"], device,
        )
        difference = float((bridge(tokens) - model(tokens).logits).abs().max())
    return {"hf_forward_s": times["hf"], "bridge_forward_s": times["bridge"], "ratio": times["bridge"] / times["hf"],
            "max_abs_logit_difference": difference}


def measure_induction(settings: dict, device: str) -> dict:
    """Train a one-layer model at γ = 4 and report when it first reaches 80 % accuracy."""
    with tempfile.TemporaryDirectory(prefix="bench-induction-") as root:
        config = TrainConfig(out_dir=str(Path(root) / "run"), gamma=4.0, device=device, **settings)
        result = train(config, progress=False)
        records = read_metrics(config.out_dir, "eval")
    hit = next((record for record in records if record["accuracy"] >= 0.8), None)
    return {
        "settings": settings,
        "final_accuracy": result.eval["accuracy"],
        "chance_accuracy": result.chance_accuracy,
        "total_s": result.seconds,
        "step_at_80": hit["step"] if hit else None,
        "seconds_to_80": hit["elapsed_s"] if hit else None,
        "curve": [(record["step"], round(record["accuracy"], 4)) for record in records],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings that finish in seconds")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model_settings = QUICK_MODEL if args.quick else FULL_MODEL
    induction_settings = QUICK_INDUCTION if args.quick else FULL_INDUCTION

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__} with {torch.get_num_threads()} threads, device {device}")
    print(f"overhead model: {model_settings}")
    overhead = measure_overhead(model_settings, device)
    for name in ("post_rope", "pre_rope"):
        row = overhead[name]
        print(f"  {name:9s} vs plain attention: forward x{row['forward_ratio']:.3f}, "
              f"train step x{row['train_step_ratio']:.3f} (target <= 1.05)")
    bridge = measure_bridge(model_settings, device)
    print(f"  bridge forward vs HF forward: x{bridge['ratio']:.3f} "
          f"(max |logit difference| {bridge['max_abs_logit_difference']:.2e})")

    print(f"induction at gamma 4: {induction_settings}")
    induction = measure_induction(induction_settings, args.device)
    if induction["seconds_to_80"] is None:
        print(f"  80 % not reached in {induction['settings']['steps']} steps "
              f"(final accuracy {induction['final_accuracy']:.3f}, {induction['total_s']:.1f} s)")
    else:
        print(f"  80 % reached at step {induction['step_at_80']} after {induction['seconds_to_80']:.1f} s "
              f"(target < 300 s); final accuracy {induction['final_accuracy']:.3f}")

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        results = {"overhead": overhead, "bridge": bridge, "induction": induction,
                   "model_settings": model_settings, "threads": torch.get_num_threads(), "device": str(device)}
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
