"""Time the ``bode`` analysis against a plain forward pass and the obvious cache-then-loop alternative.

Run from the repository root (after scripts/setup.sh):

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_bode.py [--tokens 4096] [--window 512]

Each measurement runs in its own child process so that its peak resident memory (VmHWM) is its
own; all use the embedded SmolLM2-135M-Instruct, the default Shakespeare text and the same token
windows:

(a) forward: the bridge's plain forward pass (logits) over every window;
(b) analysis: the streaming extractor and spectra of all 270 heads up to the metrics, no drawing;
(c) alternative: ``run_with_cache`` on hook_q, hook_k, hook_rot_q and hook_rot_k of every layer,
    then a Python loop over layers and heads calling scipy.signal.welch and numpy per head;
(d) drawing: every PNG, the plotly page and the HTML report from the result of (b);
(e) report: the ``report`` command's measurements with γ = 1 for the placement audit (spectra,
    audit at both placements, query orthogonality, induction scores), no drawing, and
    report_drawing: the same plus writing the whole report. Select them with
    ``--stages forward,report,report_drawing``.

Every stage but drawing runs ``--repeats`` times, interleaved, because the speed of a shared
2-core machine drifts by 10-20 % between minutes; medians are reported. Prints each run, the
medians and the ratios (b)/(a), (e)/(a) and (b)/(c).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def peak_rss_mib() -> float:
    """Peak resident set size of this process in MiB (Linux VmHWM)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def load_inputs(tokens: int, window: int):
    from spectral_forensics.data.text import read_text
    from spectral_forensics.data.windows import tokenize_windows
    from spectral_forensics.models import load_model

    loaded = load_model()
    windows = tokenize_windows(read_text(None), loaded.tokenizer, window, tokens)
    return loaded, windows


def run_forward(loaded, windows, batch_size: int) -> None:
    import torch

    with torch.no_grad():
        for start in range(0, windows.shape[0], batch_size):
            loaded.bridge(windows[start : start + batch_size], return_type="logits")


def run_analysis(loaded, windows, batch_size: int, nperseg: int):
    from spectral_forensics.analysis import analyse

    # analyse() tokenises the default text itself; the token windows are identical to (a).
    analysis = analyse(
        loaded,
        None,
        tokens=windows.numel(),
        window=windows.shape[1],
        batch_size=batch_size,
        nperseg=nperseg,
        progress=False,
    )
    analysis.records()
    return analysis


def run_alternative(loaded, windows, batch_size: int, nperseg: int) -> None:
    import scipy.signal
    import torch

    rope = loaded.rope
    layers = range(rope.n_layers)
    names = [f"blocks.{layer}.attn.hook_{stage}" for layer in layers for stage in ("q", "k", "rot_q", "rot_k")]
    cached: dict[str, list[np.ndarray]] = {name: [] for name in names}
    with torch.no_grad():
        for start in range(0, windows.shape[0], batch_size):
            _, cache = loaded.bridge.run_with_cache(
                windows[start : start + batch_size], names_filter=lambda n: n in cached
            )
            for name in names:
                cached[name].append(cache[name].numpy())
            del cache
    half = rope.rotary_dim // 2
    for layer in layers:
        q = np.concatenate(cached[f"blocks.{layer}.attn.hook_q"])
        k = np.concatenate(cached[f"blocks.{layer}.attn.hook_k"])
        rot_q = np.concatenate(cached[f"blocks.{layer}.attn.hook_rot_q"])
        rot_k = np.concatenate(cached[f"blocks.{layer}.attn.hook_rot_k"])
        for head in range(rope.n_heads):
            kv = rope.kv_head(head)
            qb = q[:, :, head, :half] + 1j * q[:, :, head, half:]
            kb = k[:, :, kv, :half] + 1j * k[:, :, kv, half:]
            cumulative = np.cumsum(kb, axis=1)
            _ = (qb * cumulative.conj()).sum(axis=(0, 1))
            _ = (np.abs(qb) ** 2).sum(axis=(0, 1)), (np.abs(kb) ** 2).sum(axis=(0, 1))
            scipy.signal.welch(rot_q[:, :, head], fs=2 * np.pi, nperseg=nperseg, axis=1)
            scipy.signal.welch(rot_k[:, :, kv], fs=2 * np.pi, nperseg=nperseg, axis=1)


def child(stage: str, tokens: int, window: int, batch_size: int, nperseg: int) -> dict:
    import torch

    torch.set_grad_enabled(False)
    loaded, windows = load_inputs(tokens, window)
    # Warm up kernels and allocator on one window so the first timed call is not penalised.
    loaded.bridge(windows[:1, :64], return_type="logits")
    baseline = peak_rss_mib()
    started = time.perf_counter()
    if stage == "forward":
        run_forward(loaded, windows, batch_size)
    elif stage == "analysis":
        run_analysis(loaded, windows, batch_size, nperseg)
    elif stage == "alternative":
        run_alternative(loaded, windows, batch_size, nperseg)
    elif stage == "report":
        from spectral_forensics.forensics import run_forensics

        report = run_forensics(loaded, windows, text_source="Shakespeare", gamma=1.0,
                               batch_size=batch_size, progress=False)
        report.records()
    elif stage == "report_drawing":
        from spectral_forensics.forensics import run_forensics
        from spectral_forensics.report_forensics import write_forensic_report

        report = run_forensics(loaded, windows, text_source="Shakespeare", gamma=1.0,
                               batch_size=batch_size, progress=False)
        with tempfile.TemporaryDirectory() as tmp:
            write_forensic_report(report, Path(tmp) / "report", progress=False)
    elif stage == "drawing":
        from spectral_forensics.report import write_report

        analysis = run_analysis(loaded, windows, batch_size, nperseg)
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            write_report(analysis, Path(tmp) / "report", draw=True)
    seconds = time.perf_counter() - started
    return {"stage": stage, "seconds": seconds, "peak_rss_mib": peak_rss_mib(), "rss_after_load_mib": baseline}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--nperseg", type=int, default=128)
    parser.add_argument("--stages", default="forward,analysis,alternative,drawing")
    parser.add_argument(
        "--repeats", type=int, default=2,
        help="runs of forward, analysis and alternative, interleaved; the median is reported",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        result = child(args.child, args.tokens, args.window, args.batch_size, args.nperseg)
        print("RESULT " + json.dumps(result))
        return

    stages = args.stages.split(",")
    timed = [s for s in stages if s != "drawing"]
    order = timed * args.repeats + [s for s in stages if s == "drawing"]
    runs: dict[str, list[dict]] = {}
    for stage in order:
        command = [
            sys.executable, __file__, "--child", stage, "--tokens", str(args.tokens),
            "--window", str(args.window), "--batch-size", str(args.batch_size),
            "--nperseg", str(args.nperseg),
        ]
        env = dict(os.environ, HF_HUB_OFFLINE="1", MPLBACKEND="Agg")
        output = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        line = next((l for l in output.stdout.splitlines() if l.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"stage {stage} failed:\n{output.stderr[-3000:]}")
        r = json.loads(line[len("RESULT "):])
        runs.setdefault(stage, []).append(r)
        print(
            f"{stage:12s} {r['seconds']:8.2f} s   peak RSS {r['peak_rss_mib']:7.0f} MiB "
            f"(after model load {r['rss_after_load_mib']:.0f} MiB)",
            flush=True,
        )
    results = {}
    for stage, values in runs.items():
        seconds = sorted(v["seconds"] for v in values)
        results[stage] = dict(values[0], seconds=float(np.median(seconds)))
        print(f"{stage:12s} median {results[stage]['seconds']:.2f} s over {len(values)} run(s): "
              + ", ".join(f"{x:.2f}" for x in seconds))
    print(f"settings: tokens={args.tokens} window={args.window} batch_size={args.batch_size} nperseg={args.nperseg}, 30 layers x 9 heads")
    if "forward" in results and "analysis" in results:
        print(f"(b)/(a) analysis / forward      = {results['analysis']['seconds'] / results['forward']['seconds']:.2f}  (target <= 1.3)")
    if "report" in results and "forward" in results:
        print(f"(e)/(a) report / forward        = {results['report']['seconds'] / results['forward']['seconds']:.2f}  (target <= 1.5)")
    if "alternative" in results and "analysis" in results:
        print(f"(b)/(c) analysis / alternative  = {results['analysis']['seconds'] / results['alternative']['seconds']:.2f}  (target < 1)")


if __name__ == "__main__":
    main()
