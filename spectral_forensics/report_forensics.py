"""Report directory joining every per-head forensic measurement, written atomically.

Layout::

    index.html              sortable table of every head with its class, thresholds, links
    metrics.json            settings, thresholds and one joined record per (layer, head)
    metrics.csv             the same records
    scores.png              induction, previous-token and copying scores per layer and head
    bode/L{l}H{h}.png       per-head Bode plots; bode.html the interactive version
    audit/...               placement-audit figures (when the audit ran)
"""

from __future__ import annotations

import html
import logging
import os
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from spectral_forensics.forensics import ForensicReport
from spectral_forensics.metrics.induction import HeadScores
from spectral_forensics.plots.audit import plot_band_responses, plot_mismatch
from spectral_forensics.plots.bode import save_head_pngs
from spectral_forensics.plots.interactive import write_bode_html
from spectral_forensics.report import (
    _SORT_SCRIPT,
    _STYLE,
    _format_cell,
    _json_ready,
    atomic_report_directory,
    _write_csv,
    _write_json,
    check_output_dir,
)
from spectral_forensics.report_audit import base_note

log = logging.getLogger(__name__)


def plot_scores(scores: HeadScores) -> Figure:
    """Heat maps of the induction, previous-token and copying scores (layers × heads)."""
    fig = Figure(figsize=(12, 0.25 * len(scores.layers) + 2.0), layout="constrained")
    axes = fig.subplots(1, 3)
    for ax, (name, values, limits) in zip(
        axes,
        [
            ("induction", scores.induction, (0, 1)),
            ("previous token", scores.previous_token, (0, 1)),
            ("copying", scores.copying, (-1, 1)),
        ],
    ):
        image = ax.imshow(values, aspect="auto", vmin=limits[0], vmax=limits[1], cmap="viridis")
        ax.set_title(name)
        ax.set_xlabel("head")
        ax.set_yticks(range(len(scores.layers)), [str(layer) for layer in scores.layers], fontsize=6)
        fig.colorbar(image, ax=ax, shrink=0.8)
    axes[0].set_ylabel("layer")
    return fig


def _index(report: ForensicReport, records: list[dict], figures: list[str]) -> str:
    analysis = report.analysis
    columns = list(dict.fromkeys(k for r in records for k in r))
    head_cells = "".join(f"<th data-sortable>{html.escape(c)}</th>" for c in columns)
    body = []
    for r in records:
        cells = []
        for c in columns:
            value, shown = _format_cell(r.get(c))
            if c == "head":
                link = f"bode/L{r['layer']}H{r['head']}.png"
                shown = f'<a href="{link}">{shown}</a>'
            cells.append(f'<td data-value="{html.escape(value)}">{shown}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    classes: dict[str, int] = {}
    for r in records:
        classes[r["class"]] = classes.get(r["class"], 0) + 1
    t = report.thresholds
    links = " · ".join(f'<a href="{html.escape(f)}">{html.escape(f)}</a>' for f in figures)
    audit_note = ""
    if report.audit is not None:
        audit = report.audit
        audit_note = (
            f"<p>The audit read {audit.settings['n_windows']} window(s) of {audit.settings['window']} tokens "
            f"per placement. {html.escape(base_note(audit))}</p>"
        )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Head forensics: {html.escape(analysis.model_name)}</title>
<style>{_STYLE}</style></head><body>
<h1>Head forensics: {html.escape(analysis.model_name)}</h1>
<p>{analysis.n_tokens} tokens in windows of {analysis.window} ({html.escape(analysis.text_source)}),
{len(analysis.layers)} layers × {len(analysis.heads)} heads. Classes: {html.escape(str(classes))}.</p>
<p>Classification: <b>induction</b> when the induction score ≥ {t['induction']}; otherwise
<b>DC-dominated</b> when the band DC fraction (share of Σ_i |M_i| in bands whose wavelength exceeds
{analysis.bands.cutoff_wavelength:g} tokens) ≥ {t['dc_dominated']}, <b>AC-dominated</b> when it is ≤
{t['ac_dominated']}, else <b>mixed</b>. Overlap is the Bhattacharyya coefficient of the semantic and
mechanistic spectra of the head's queries for each placement; audit columns give the verdict and
agreement score r of the placement audit for the head's key/value head. Click a column to sort.</p>
{audit_note}
<p>Figures: {links}</p>
<table id="heads"><thead><tr>{head_cells}</tr></thead><tbody>{''.join(body)}</tbody></table>
<script>{_SORT_SCRIPT}</script>
</body></html>
"""


def write_forensic_report(report: ForensicReport, out_dir: str | os.PathLike, draw: bool = True,
                          workers: int | None = None, progress: bool = True) -> Path:
    """Write the joined report atomically into ``out_dir`` and return its absolute path."""
    out = check_output_dir(out_dir)
    records = report.records()
    analysis = report.analysis
    payload = {
        "model": analysis.model_name,
        "text": analysis.text_source,
        "tokens": analysis.n_tokens,
        "window": analysis.window,
        "layers": analysis.layers,
        "heads": analysis.heads,
        "rope": analysis.rope,
        "thresholds": report.thresholds,
        "induction_settings": report.induction.settings,
        "audit_settings": None if report.audit is None else report.audit.settings,
        "records": records,
    }
    with atomic_report_directory(out) as tmp:
        _write_json(tmp / "metrics.json", _json_ready(payload))
        _write_csv(tmp / "metrics.csv", records)
        figures = []
        if draw:
            plot_scores(report.induction).savefig(tmp / "scores.png", dpi=80)
            figures.append("scores.png")
            save_head_pngs(analysis, tmp, workers=workers, progress=progress)
            write_bode_html(analysis, tmp / "bode.html")
            figures.append("bode.html")
            if report.audit is not None:
                (tmp / "audit").mkdir()
                for layer in report.audit.layers:
                    name = f"audit/mismatch_L{layer}.png"
                    plot_mismatch(report.audit, layer).savefig(tmp / name, dpi=80)
                    figures.append(name)
                    name = f"audit/bands_L{layer}K0.png"
                    plot_band_responses(report.audit, layer, report.audit.kv_heads[0]).savefig(tmp / name, dpi=80)
                    figures.append(name)
        (tmp / "index.html").write_text(_index(report, records, figures), encoding="utf-8")
    log.info("Wrote forensic report %s", out)
    return out


def write_scores(scores: HeadScores, out_dir: str | os.PathLike, model_name: str) -> Path:
    """Write induction scores (metrics.json, metrics.csv, scores.png, index.html) atomically."""
    out = check_output_dir(out_dir)
    records = scores.records()
    with atomic_report_directory(out) as tmp:
        _write_json(tmp / "metrics.json", _json_ready({"model": model_name, "settings": scores.settings, "records": records}))
        _write_csv(tmp / "metrics.csv", records)
        plot_scores(scores).savefig(tmp / "scores.png", dpi=80)
        columns = list(records[0])
        rows = "".join(
            "<tr>" + "".join(
                '<td data-value="{0}">{1}</td>'.format(*(html.escape(x) for x in _format_cell(r[c]))) for c in columns
            ) + "</tr>"
            for r in records
        )
        top = sorted(records, key=lambda r: -np.nan_to_num(r["induction"], nan=-1))[:5]
        best = ", ".join(f"L{r['layer']}H{r['head']} ({r['induction']:.2f})" for r in top)
        (tmp / "index.html").write_text(
            f"""<!doctype html><html><head><meta charset="utf-8"><title>Induction scores</title>
<style>{_STYLE}</style></head><body><h1>Induction scores: {html.escape(model_name)}</h1>
<p>Repeated random tokens with repeat lengths {scores.settings.get('min_len')}–{scores.settings.get('max_len')}
varying within the batch. Highest induction scores: {html.escape(best)}.</p><p><img src="scores.png"></p>
<table id="heads"><thead><tr>{''.join(f'<th data-sortable>{html.escape(c)}</th>' for c in columns)}</tr></thead>
<tbody>{rows}</tbody></table><script>{_SORT_SCRIPT}</script></body></html>""",
            encoding="utf-8",
        )
    return out
