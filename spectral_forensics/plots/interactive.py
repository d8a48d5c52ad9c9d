"""Interactive plotly Bode plots of every analysed head in one self-contained HTML page.

The page embeds plotly.js (about 4.8 MB for plotly 7.1), so it opens without network access.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from spectral_forensics.results import BodeAnalysis

log = logging.getLogger(__name__)

_COLORS = qualitative.Dark24

# plotly marker symbol codes: 0 is "circle" (DC bands), 101 is "square-open" (AC bands).
_DC_SYMBOL = 0
_AC_SYMBOL = 101

# Runs after the plot is drawn. A URL fragment "#L3" shows every head of layer 3 and "#L3H5"
# only head 5 of layer 3, so index pages can link to one head. Trace legend groups are "L{l}H{h}".
_FRAGMENT_SELECT_JS = """
(function () {
  var gd = document.getElementById('{plot_id}');
  function selectFromFragment() {
    var match = /^#L(\\d+)(?:H(\\d+))?$/.exec(window.location.hash);
    if (!match) { return; }
    var layerPrefix = 'L' + match[1] + 'H';
    var group = match[2] === undefined ? null : layerPrefix + match[2];
    var visible = gd.data.map(function (trace) {
      var g = trace.legendgroup || '';
      return group === null ? g.indexOf(layerPrefix) === 0 : g === group;
    });
    Plotly.restyle(gd, {visible: visible});
  }
  window.addEventListener('hashchange', selectFromFragment);
  selectFromFragment();
})();
"""


def _head_group(layer: int, head: int) -> str:
    return f"L{layer}H{head}"


def _band_traces(analysis: BodeAnalysis) -> list[tuple[int, go.Scatter]]:
    """Return (row, trace) pairs: magnitude (row 1) and phase (row 2) of every head."""
    bands = analysis.bands
    on_axis = bands.theta > 0
    theta = np.asarray(bands.theta, dtype=float)[on_axis]
    symbols = np.where(bands.dc_mask[on_axis], _DC_SYMBOL, _AC_SYMBOL)
    magnitude_db = bands.magnitude_db[..., on_axis]
    phase_deg = bands.phase_deg[..., on_axis]

    traces = []
    for li, layer in enumerate(analysis.layers):
        for hi, head in enumerate(analysis.heads):
            group = _head_group(layer, head)
            color = _COLORS[hi % len(_COLORS)]
            common = dict(
                x=theta, mode="lines+markers", name=group, legendgroup=group,
                line=dict(color=color, width=1.2),
                marker=dict(symbol=symbols, size=6, color=color),
                visible=li == 0,
            )
            traces.append((1, go.Scatter(
                y=magnitude_db[li, hi], showlegend=True,
                hovertemplate=group + "<br>θ = %{x:.4g} rad/token<br>|M| = %{y:.2f} dB<extra></extra>",
                **common,
            )))
            traces.append((2, go.Scatter(
                y=phase_deg[li, hi], showlegend=False,
                hovertemplate=group + "<br>θ = %{x:.4g} rad/token<br>arg M = %{y:.1f}°<extra></extra>",
                **common,
            )))
    return traces


def _temporal_traces(analysis: BodeAnalysis) -> list[tuple[int, go.Scatter]]:
    """Return (row, trace) pairs: the Welch PSD in dB of every head and stage (row 1)."""
    freqs = np.asarray(analysis.temporal.freqs, dtype=float)
    on_axis = freqs > 0
    traces = []
    for li, layer in enumerate(analysis.layers):
        for hi, head in enumerate(analysis.heads):
            group = _head_group(layer, head)
            for si, (stage, psd) in enumerate(analysis.temporal.psd.items()):
                power = np.asarray(psd[li, hi], dtype=float)[on_axis]
                psd_db = 10 * np.log10(np.maximum(power, np.finfo(float).tiny))
                traces.append((1, go.Scatter(
                    x=freqs[on_axis], y=psd_db, mode="lines", name=f"{group} {stage}",
                    legendgroup=group, showlegend=True, visible=li == 0,
                    line=dict(color=_COLORS[hi % len(_COLORS)], width=1.2,
                              dash=("solid", "dash", "dot", "dashdot")[si % 4]),
                    hovertemplate=f"{group} {stage}<br>ω = %{{x:.4g}} rad/token"
                                  "<br>PSD = %{y:.2f} dB<extra></extra>",
                )))
    return traces


def _layer_menu(analysis: BodeAnalysis, traces: list[tuple[int, go.Scatter]]) -> dict:
    """Build a dropdown that shows the heads of one layer, or of all layers."""
    groups = [trace.legendgroup for _, trace in traces]
    buttons = []
    for layer in analysis.layers:
        prefix = f"L{layer}H"
        visible = [g.startswith(prefix) for g in groups]
        buttons.append(dict(label=f"layer {layer}", method="restyle", args=[{"visible": visible}]))
    buttons.append(dict(label="all layers", method="restyle", args=[{"visible": True}]))
    return dict(buttons=buttons, direction="down", showactive=True, x=0.0, xanchor="left",
                y=1.12, yanchor="top")


def _add_cutoff(fig: go.Figure, analysis: BodeAnalysis, rows: int) -> None:
    """Shade the DC region and draw the cutoff on every panel of ``fig``."""
    if analysis.bands is None:
        cutoff = float(analysis.temporal.cutoff)
        fig.add_vline(x=cutoff, line=dict(color="black", dash="dash", width=1), row=1, col=1)
        return
    bands = analysis.bands
    wavelength = float(bands.cutoff_wavelength)
    if not (np.isfinite(wavelength) and wavelength > 0):
        return
    theta_c = 2 * np.pi / wavelength
    positive = bands.theta[bands.theta > 0]
    left = float(positive.min()) / 1.6 if positive.size else theta_c / 10
    for row in range(1, rows + 1):
        if theta_c > left:
            fig.add_vrect(x0=left, x1=theta_c, fillcolor="steelblue", opacity=0.08, line_width=0,
                          row=row, col=1)
        fig.add_vline(x=theta_c, line=dict(color="black", dash="dash", width=1), row=row, col=1)
    fig.add_annotation(
        x=np.log10(theta_c), y=1.0, xref="x", yref="y domain", showarrow=False, xanchor="left",
        text=f" θ_c = 2π/{wavelength:g} = {theta_c:.3g} rad/token", font=dict(size=11),
    )


def bode_figure(analysis: BodeAnalysis) -> go.Figure:
    """Build the interactive Bode figure of every analysed head.

    With rotary embeddings: |M_i| in dB (top) and arg M_i in degrees (bottom) against θ_i in
    radians per token on a log axis, one magnitude and one phase trace per head, DC bands as
    filled circles and AC bands as open squares, the DC region shaded up to θ_c = 2π / L. Without
    rotary embeddings: the Welch PSD in dB of every stage against ω, one trace per head and stage.
    Bands at θ_i = 0 and the ω = 0 bin are left out of the log axis.

    A dropdown selects one layer or all layers, and the legend toggles a head (click) or isolates
    it (double-click). Each trace's ``legendgroup`` is ``"L{layer}H{head}"``. Only the first
    analysed layer is visible initially.

    Returns
    -------
    plotly.graph_objects.Figure
    """
    if analysis.bands is not None:
        traces = _band_traces(analysis)
        rows = 2
        fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.06,
                            row_heights=[0.6, 0.4])
        fig.update_yaxes(title_text="|M_i| (dB)", row=1, col=1)
        fig.update_yaxes(title_text="arg M_i (deg)", range=[-190, 190],
                         tickvals=[-180, -90, 0, 90, 180], row=2, col=1)
        fig.update_xaxes(type="log", row=1, col=1)
        fig.update_xaxes(type="log", title_text="θ_i (rad/token)", row=2, col=1)
        title = "RoPE-band Bode plot, M_i = E[q_i conj(k_i)]"
    else:
        traces = _temporal_traces(analysis)
        rows = 1
        fig = make_subplots(rows=1, cols=1)
        fig.update_yaxes(title_text="PSD (dB)")
        fig.update_xaxes(type="log", title_text="ω (rad/token)")
        title = (
            f"Welch PSD (nperseg = {analysis.temporal.nperseg} tokens, cutoff ω_c = "
            f"{analysis.temporal.cutoff:.3g} rad/token dashed); no rotary embeddings"
        )

    # One add_traces call: adding traces one by one copies the trace list each time.
    fig.add_traces([trace for _, trace in traces], rows=[row for row, _ in traces],
                   cols=[1] * len(traces))
    _add_cutoff(fig, analysis, rows)
    fig.update_layout(
        title=dict(text=f"{analysis.model_name}: {title}", x=0.5, y=0.98),
        height=820, hovermode="closest", template="plotly_white",
        updatemenus=[_layer_menu(analysis, traces)],
        legend=dict(title_text="head (click: toggle, double-click: isolate)"),
        margin=dict(t=110),
    )
    return fig


def bode_html(analysis: BodeAnalysis) -> str:
    """Return a self-contained HTML page with :func:`bode_figure`, plotly.js included inline.

    A URL fragment ``#L{layer}`` or ``#L{layer}H{head}`` selects one layer or one head on load.
    """
    return pio.to_html(
        bode_figure(analysis), include_plotlyjs=True, full_html=True,
        post_script=_FRAGMENT_SELECT_JS, div_id="bode",
        config={"displaylogo": False, "responsive": True},
    )


def write_bode_html(analysis: BodeAnalysis, path: str | os.PathLike) -> Path:
    """Write :func:`bode_html` to ``path`` atomically (temporary file, then :func:`os.replace`).

    Returns
    -------
    pathlib.Path
        The written path.
    """
    path = Path(path)
    html = bode_html(analysis)
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    try:
        tmp.write_text(html, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("Wrote %s (%.1f MB)", path, len(html.encode("utf-8")) / 1e6)
    return path
