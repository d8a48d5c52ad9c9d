"""Figures of the RoPE placement audit (matplotlib, drawn from a computed PlacementAudit)."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from spectral_forensics.results import PlacementAudit
from spectral_forensics.spectral.transfer import (
    magnitude_db,
    momentum_response,
    momentum_response_pre_rope,
)


def pick_bands(theta: np.ndarray, count: int = 3) -> list[int]:
    """Return ``count`` band indices spread from the fastest to the slowest band."""
    return sorted({int(i) for i in np.linspace(0, theta.size - 1, count).round()})


def plot_band_responses(audit: PlacementAudit, layer: int, kv_head: int, bands: list[int] | None = None) -> Figure:
    """Draw measured |H_i| against ω for a few bands of one head, with both closed forms.

    One column per measurement (native, or attached post/pre), one line per band; measured
    points with coherence below the audit's threshold are drawn faint.
    """
    li = audit.layers.index(layer)
    gi = audit.kv_heads.index(kv_head)
    bands = pick_bands(audit.theta) if bands is None else bands
    gamma = float(audit.gamma[li, gi])
    threshold = audit.settings.get("coherence_threshold", 0.99)
    fig = Figure(figsize=(4.2 * len(audit.measurements), 3.4), layout="constrained")
    axes = fig.subplots(1, len(audit.measurements), squeeze=False)[0]
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"]
    for ax, m in zip(axes, audit.measurements):
        omega = m.freqs
        ax.plot(omega, magnitude_db(momentum_response(omega, gamma)), "k--", lw=1, label="post-RoPE closed form")
        for color, band in zip(colors, bands):
            theta = audit.theta[band]
            measured = magnitude_db(m.h[li, gi, band])
            coherent = m.coherence[li, gi, band] >= threshold
            ax.plot(omega, np.where(coherent, measured, np.nan), color=color, lw=1.6,
                    label=f"band {band}, θ={theta:.3g}")
            ax.plot(omega, measured, color=color, lw=0.8, alpha=0.3)
            pre = magnitude_db(momentum_response_pre_rope(omega, gamma, np.array([theta])))[0]
            ax.plot(omega, pre, color=color, ls=":", lw=1)
        ax.set_title(f"{m.label}: verdict {m.verdict[li, gi]}, r={m.r[li, gi]:.2f}", fontsize=9)
        ax.set_xlabel("ω (rad/token)")
        ax.set_xlim(-np.pi, np.pi)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("|H_i| (dB)")
    axes[0].legend(fontsize=6, loc="lower right", title="dotted: pre-RoPE closed form", title_fontsize=6)
    fig.suptitle(f"L{layer} kv head {kv_head}, γ = {gamma:g}", fontsize=10)
    return fig


def plot_mismatch(audit: PlacementAudit, layer: int) -> Figure:
    """Draw the measured per-band distance |H_i − H| against θ_i with 2γ|sin(θ_i/2)|."""
    li = audit.layers.index(layer)
    fig = Figure(figsize=(5.5, 3.4), layout="constrained")
    ax = fig.subplots()
    expected = audit.expected_mismatch[li]
    for gi, kv in enumerate(audit.kv_heads):
        ax.plot(audit.theta, expected[gi], "k-", lw=1, alpha=0.6, label="2γ|sin(θ_i/2)|" if gi == 0 else None)
        for m, marker in zip(audit.measurements, "os^"):
            ax.plot(audit.theta, m.mismatch[li, gi], marker, ms=3, ls="none",
                    label=f"{m.label}, kv {kv}")
    ax.set_xscale("log")
    ax.set_xlabel("θ_i (rad/token)")
    ax.set_ylabel("mean |H_i(ω) − H(ω)|")
    ax.set_title(f"Per-band distance from the post-RoPE shear, layer {layer}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    return fig
