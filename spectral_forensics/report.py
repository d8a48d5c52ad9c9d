"""Report directory of a Bode analysis: metrics as JSON and CSV, PNG and HTML figures, an index page.

:func:`write_report` builds the whole report in a hidden sibling directory and renames it into
place only when every file is written, so the output path contains either the previous
complete report or the new complete one.

Layout of a report directory::

    metrics.json        settings, band frequencies and one record per (layer, head)
    metrics.csv         the same records, one row per (layer, head)
    bode/L{l}H{h}.png   per-head Bode plot
    layers/L{l}.png     per-layer grid of head magnitudes
    bode.html           interactive plotly page of every head (plotly.js inline)
    index.html          sortable table of every head, linking to the figures
"""

from __future__ import annotations

import contextlib
import csv
import html
import json
import logging
import math
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from spectral_forensics import __version__
from spectral_forensics.plots.bode import save_head_pngs
from spectral_forensics.plots.interactive import write_bode_html
from spectral_forensics.results import BodeAnalysis

log = logging.getLogger(__name__)

METRICS_JSON = "metrics.json"
METRICS_CSV = "metrics.csv"
INDEX_HTML = "index.html"
BODE_HTML = "bode.html"

# Meaning of each record key, shown on the index page. Keys missing here are listed without text.
COLUMN_DESCRIPTIONS = {
    "layer": "layer index",
    "head": "query-head index",
    "kv_head": "key/value head the query head reads (grouped-query attention)",
    "band_dc_fraction": "share of Σ_i |M_i| in DC bands",
    "peak_band": "band i with the largest |M_i|",
    "peak_theta": "θ_i of the peak band, rad/token",
    "peak_magnitude_db": "|M_i| of the peak band, dB",
    "peak_phase_deg": "arg M_i of the peak band, degrees",
    "q_energy": "Σ_i E|q_i|², query band energy",
    "k_energy": "Σ_i E|k_i|², key band energy",
}


# --------------------------------------------------------------------------- output directory


def _is_report(path: Path) -> bool:
    return (path / METRICS_JSON).is_file()


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_replaceable(out: Path) -> None:
    """Raise a ValueError unless ``out`` is missing, an empty directory or a previous report."""
    if out.is_symlink():
        raise ValueError(
            f"out_dir={str(out)!r} is a symbolic link; the report would replace the link, not its "
            f"target. Pass the target directory {str(out.resolve())!r} instead."
        )
    if not out.exists():
        return
    if not out.is_dir():
        raise ValueError(
            f"out_dir={str(out)!r} exists and is not a directory. Remove it or choose another path."
        )
    if any(out.iterdir()) and not _is_report(out):
        raise ValueError(
            f"out_dir={str(out)!r} is a non-empty directory without {METRICS_JSON}, so it is not a "
            f"previous report and will not be replaced. Choose a new path or empty the directory."
        )
    if not os.access(out, os.W_OK | os.X_OK):
        raise ValueError(
            f"out_dir={str(out)!r} contains a previous report that cannot be removed because the "
            f"directory is not writable. Fix its permissions or choose another path."
        )


def check_output_dir(out_dir: str | os.PathLike) -> Path:
    """Check that a report can be written to ``out_dir``, creating its parent directory if missing.

    Call this before any expensive work: it writes nothing but the missing parent directories
    and a probe directory that it removes at once.

    Parameters
    ----------
    out_dir : str or os.PathLike
        Report directory. It may be missing, an empty directory or a previous report (a
        directory containing ``metrics.json``), which :func:`write_report` replaces.

    Returns
    -------
    pathlib.Path
        ``out_dir`` as an absolute path.

    Raises
    ------
    ValueError
        If ``out_dir`` is a symbolic link, a file, or a non-empty directory that is not a report.
        Also if its parent is not a directory, cannot be created or is not writable.
    """
    out = Path(out_dir).expanduser().absolute()
    if out.name in ("", ".", ".."):
        raise ValueError(
            f"out_dir={str(out_dir)!r} does not name a directory of its own; pass a path such as "
            f"'report' or 'runs/report'."
        )
    _check_replaceable(out)

    parent = out.parent
    existing = _nearest_existing(parent)
    if not existing.is_dir():
        raise ValueError(
            f"out_dir={str(out)!r} cannot be created because {str(existing)!r} is a file, not a "
            f"directory. Choose an output path under a directory."
        )
    if not parent.exists():
        try:
            parent.mkdir(parents=True)
        except OSError as exc:
            raise ValueError(
                f"out_dir={str(out)!r}: creating the parent directory {str(parent)!r} failed "
                f"({exc}). Create it yourself or choose another path."
            ) from exc
        log.info("Created directory %s", parent)

    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(
            f"out_dir={str(out)!r} cannot be written because its parent directory "
            f"{str(parent)!r} is not writable. Choose a directory you can write to or fix its "
            f"permissions."
        )
    try:
        probe = _make_sibling_dir(out, "probe")
        probe.rmdir()
    except OSError as exc:
        raise ValueError(
            f"out_dir={str(out)!r} cannot be written: creating a directory in {str(parent)!r} "
            f"failed ({exc}). Choose a directory you can write to."
        ) from exc
    return out


def _make_sibling_dir(out: Path, kind: str) -> Path:
    """Create and return an empty hidden directory ``.{name}.{kind}-{random}`` next to ``out``."""
    while True:
        candidate = out.with_name(f".{out.name}.{kind}-{secrets.token_hex(4)}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue


def _sibling_name(out: Path, kind: str) -> Path:
    while True:
        candidate = out.with_name(f".{out.name}.{kind}-{secrets.token_hex(4)}")
        if not candidate.exists():
            return candidate


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` to ``out``. A previous report at ``out`` is renamed aside, then removed."""
    _check_replaceable(out)
    old = None
    try:
        if out.exists():
            old = _sibling_name(out, "old")
            os.rename(out, old)
        os.rename(tmp, out)
    except BaseException:
        # Put the previous report back, also after an interrupt between the two renames.
        if old is not None and old.exists() and not out.exists():
            os.rename(old, out)
        raise
    if old is not None:
        try:
            shutil.rmtree(old)
        except OSError as exc:
            log.warning("The new report is in %s, but removing the previous one at %s failed: %s",
                        out, old, exc)


# --------------------------------------------------------------------------- metrics


def _check_shapes(analysis: BodeAnalysis) -> None:
    """Raise a ValueError if an array's shape does not match the analysed layers and heads."""
    n_layers, n_heads = len(analysis.layers), len(analysis.heads)
    if n_layers == 0 or n_heads == 0:
        raise ValueError(
            f"analysis has layers={analysis.layers} and heads={analysis.heads}; a report needs at "
            f"least one of each."
        )
    expected: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    bands = analysis.bands
    if bands is not None:
        n_bands = len(bands.theta)
        for name in ("cross", "q_energy", "k_energy"):
            expected[f"bands.{name}"] = (np.shape(getattr(bands, name)), (n_layers, n_heads, n_bands))
        expected["bands.dc_mask"] = (np.shape(bands.dc_mask), (n_bands,))
    n_freq = len(analysis.temporal.freqs)
    for stage, psd in analysis.temporal.psd.items():
        expected[f"temporal.psd[{stage!r}]"] = (np.shape(psd), (n_layers, n_heads, n_freq))
    for name, (shape, want) in expected.items():
        if tuple(shape) != want:
            raise ValueError(
                f"analysis.{name} has shape {tuple(shape)}, expected {want} "
                f"(layers, heads, bands or frequencies). Rebuild the analysis."
            )


def _json_ready(value: Any) -> Any:
    """Convert ``value`` to JSON types: numpy to Python, non-finite floats to None, paths to str."""
    if isinstance(value, dict):
        return {str(key): _json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_json_ready(item) for item in value]
    if isinstance(value, np.ndarray):
        return _json_ready(value.tolist())
    if isinstance(value, np.generic):
        return _json_ready(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    log.debug("Writing %r to JSON as its string form", value)
    return str(value)


def metrics_payload(analysis: BodeAnalysis, records: list[dict[str, Any]] | None = None) -> dict:
    """Build the content of ``metrics.json`` as JSON-ready Python objects.

    Keys: ``tool`` (``"spectral_forensics"``), ``version``, ``settings`` (model, text_source,
    n_tokens, window, layers, heads, rope, gamma, stages, cutoffs, extra), ``band_theta`` (θ_i in
    radians per token, None without rotary embeddings), ``band_dc`` (the DC mask) and ``heads``
    (:meth:`BodeAnalysis.records`). Non-finite floats become None.
    """
    bands = analysis.bands
    temporal = analysis.temporal
    if records is None:
        records = analysis.records()
    cutoffs = {
        "band_cutoff_wavelength_tokens": None if bands is None else bands.cutoff_wavelength,
        "band_cutoff_theta_rad_per_token": (
            None if bands is None or not bands.cutoff_wavelength
            else 2 * math.pi / bands.cutoff_wavelength
        ),
        "temporal_cutoff_rad_per_token": temporal.cutoff,
        "welch_nperseg": temporal.nperseg,
    }
    payload = {
        "tool": "spectral_forensics",
        "version": __version__,
        "settings": {
            "model": analysis.model_name,
            "text_source": analysis.text_source,
            "n_tokens": analysis.n_tokens,
            "window": analysis.window,
            "layers": list(analysis.layers),
            "heads": list(analysis.heads),
            "rope": analysis.rope,
            "gamma": analysis.gamma,
            "stages": list(temporal.psd),
            "cutoffs": cutoffs,
            "extra": analysis.extra,
        },
        "band_theta": None if bands is None else bands.theta,
        "band_dc": None if bands is None else bands.dc_mask,
        "heads": records,
    }
    return _json_ready(payload)


def _write_json(path: Path, payload: dict) -> None:
    with open(path, "w", encoding="utf-8") as file:
        json.dump(payload, file, indent=1, allow_nan=False)
        file.write("\n")


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (float, np.floating)) and not math.isfinite(value):
        return ""
    return value


def _write_csv(path: Path, records: list[dict[str, Any]]) -> None:
    columns = _columns(records)
    with open(path, "w", encoding="utf-8", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        for record in records:
            writer.writerow({key: _csv_cell(record.get(key)) for key in columns})


def _columns(records: list[dict[str, Any]]) -> list[str]:
    """Return every record key in order of first appearance."""
    columns: dict[str, None] = {}
    for record in records:
        columns.update(dict.fromkeys(record))
    return list(columns)


# --------------------------------------------------------------------------- index page

_SORT_SCRIPT = """
(function () {
  var table = document.getElementById('heads');
  var headers = table.tHead.rows[0].cells;
  function sortKey(row, index) {
    var cell = row.cells[index];
    var raw = cell.getAttribute('data-value');
    if (raw === null) { raw = cell.textContent; }
    if (raw === '') { return null; }
    var number = Number(raw);
    return isNaN(number) ? raw : number;
  }
  Array.prototype.forEach.call(headers, function (th, index) {
    if (!th.hasAttribute('data-sortable')) { return; }
    th.addEventListener('click', function () {
      var descending = th.getAttribute('aria-sort') === 'ascending';
      Array.prototype.forEach.call(headers, function (other) { other.removeAttribute('aria-sort'); });
      th.setAttribute('aria-sort', descending ? 'descending' : 'ascending');
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = sortKey(a, index);
        var y = sortKey(b, index);
        if (x === null || y === null) {
          // Empty cells go last in both directions.
          return (x === null) - (y === null);
        }
        var order = (typeof x === 'number' && typeof y === 'number')
          ? x - y : String(x).localeCompare(String(y));
        return descending ? -order : order;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
})();
"""

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: right; }
th[data-sortable] { cursor: pointer; background: #f0f0f0; user-select: none; }
th[aria-sort=ascending]::after { content: " \\25B2"; }
th[aria-sort=descending]::after { content: " \\25BC"; }
tbody tr:nth-child(even) { background: #fafafa; }
dl { font-size: 0.9em; } dt { font-weight: bold; float: left; clear: left; width: 16em; }
dd { margin-left: 17em; }
"""


def _format_cell(value: Any) -> tuple[str, str]:
    """Return (data-value, shown text) of one table cell, both empty for None and NaN or inf."""
    if value is None:
        return "", ""
    if isinstance(value, bool):
        return str(int(value)), str(value)
    if isinstance(value, (int, np.integer)):
        return str(value), str(value)
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value):
            return "", ""
        return repr(float(value)), f"{value:.4g}"
    return str(value), str(value)


def _cutoff_text(analysis: BodeAnalysis) -> str:
    temporal = analysis.temporal
    temporal_text = (
        f"Temporal DC power is the Welch PSD power below ω_c = {temporal.cutoff:.4g} rad/token "
        f"(segments of {temporal.nperseg} tokens), AC power the rest."
    )
    bands = analysis.bands
    if bands is None:
        return "The model has no rotary embeddings, so band metrics are empty. " + temporal_text
    wavelength = bands.cutoff_wavelength
    theta_c = 2 * math.pi / wavelength if wavelength else math.inf
    return (
        f"A RoPE band i is DC (slow) when its wavelength 2π/θ_i exceeds {wavelength:g} tokens, "
        f"that is θ_i &lt; θ_c = {theta_c:.4g} rad/token, and AC (fast) otherwise; "
        f"{int(np.count_nonzero(bands.dc_mask))} of {len(bands.theta)} bands are DC. "
        + temporal_text
    )


def _summary_rows(analysis: BodeAnalysis) -> list[tuple[str, str]]:
    rope = analysis.rope
    if analysis.bands is not None:
        rope_text = (
            f"base {rope.get('base')}, rotary_dim {rope.get('rotary_dim')}, pairing "
            f"{rope.get('pairing')}, {len(analysis.bands.theta)} bands, "
            f"scaling {rope.get('rope_type')}"
        )
    else:
        rope_text = "none"
    return [
        ("model", analysis.model_name),
        ("text", analysis.text_source or "(not recorded)"),
        ("tokens", f"{analysis.n_tokens} in windows of {analysis.window} tokens"),
        ("layers", ", ".join(map(str, analysis.layers))),
        ("heads", f"{', '.join(map(str, analysis.heads))} of {rope.get('n_heads')} "
                  f"({rope.get('n_kv_heads')} key/value heads)"),
        ("RoPE", rope_text),
        ("γ of the closed-form overlay", f"{analysis.gamma:g}"),
    ]


def index_html(analysis: BodeAnalysis, records: list[dict[str, Any]], draw: bool = True) -> str:
    """Build the index page: settings, the DC/AC definition and a sortable table of every head.

    Clicking a column header sorts the table by that column (numerically where the cells are
    numbers, empty cells last); clicking again reverses the order. Each row links to the head's
    PNG and to its view in ``bode.html``. The page uses only inline CSS and JavaScript.
    """
    esc = html.escape
    columns = _columns(records)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Bode report: {esc(analysis.model_name)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>Bode report: {esc(analysis.model_name)}</h1>",
        "<table class=\"summary\">",
    ]
    for label, value in _summary_rows(analysis):
        parts.append(f"<tr><th>{esc(label)}</th><td style=\"text-align:left\">{esc(value)}</td></tr>")
    parts.append("</table>")
    parts.append(f"<p>{_cutoff_text(analysis)}</p>")

    links = [f'<a href="{METRICS_JSON}">{METRICS_JSON}</a>', f'<a href="{METRICS_CSV}">{METRICS_CSV}</a>']
    if draw:
        links.insert(0, f'<a href="{BODE_HTML}">interactive Bode plots ({BODE_HTML})</a>')
        layer_links = ", ".join(
            f'<a href="layers/L{layer}.png">L{layer}</a>' for layer in analysis.layers
        )
        parts.append(f"<p>Layer grids: {layer_links}</p>")
    parts.append(f"<p>{' · '.join(links)}</p>")

    parts.append("<p>Click a column header to sort by it; click again to reverse.</p>")
    parts.append('<table id="heads"><thead><tr>')
    for column in columns:
        tip = COLUMN_DESCRIPTIONS.get(column, "")
        if column.startswith("temporal_dc_fraction_"):
            stage = column.removeprefix("temporal_dc_fraction_")
            tip = f"share of {stage} Welch PSD power below ω_c"
        parts.append(f'<th data-sortable title="{esc(tip)}">{esc(column)}</th>')
    if draw:
        parts.append("<th>figure</th><th>interactive</th>")
    parts.append("</tr></thead><tbody>")

    for record in records:
        cells = []
        for column in columns:
            value, text = _format_cell(record.get(column))
            cells.append(f'<td data-value="{esc(value)}">{esc(text)}</td>')
        if draw:
            name = f"L{record['layer']}H{record['head']}"
            cells.append(f'<td><a href="bode/{name}.png">{name}.png</a></td>')
            cells.append(f'<td><a href="{BODE_HTML}#{name}">{name}</a></td>')
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("</tbody></table>")

    parts.append("<dl>")
    for column in columns:
        if column in COLUMN_DESCRIPTIONS:
            parts.append(f"<dt>{esc(column)}</dt><dd>{esc(COLUMN_DESCRIPTIONS[column])}</dd>")
    parts.append("</dl>")
    parts.append(f"<script>{_SORT_SCRIPT}</script>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# --------------------------------------------------------------------------- entry point


@contextlib.contextmanager
def atomic_report_directory(out: Path):
    """Yield an empty hidden sibling of ``out`` and rename it to ``out`` when the block succeeds.

    If the block raises (including KeyboardInterrupt), the sibling is removed and a previous
    report at ``out`` stays as it was.
    """
    tmp = _make_sibling_dir(out, "tmp")
    try:
        yield tmp
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_report(
    analysis: BodeAnalysis,
    out_dir: str | os.PathLike,
    draw: bool = True,
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Write the report directory of a Bode analysis atomically.

    The report is built in a hidden sibling directory ``.{name}.tmp-{random}`` and renamed to
    ``out_dir`` when complete. A previous report at ``out_dir`` is renamed aside just before and
    removed after. If writing fails or is interrupted, the temporary directory is removed and a
    previous report stays in place. A killed process (SIGKILL, power loss) can leave a
    ``.{name}.tmp-*`` directory behind, never a partial ``out_dir``.

    Parameters
    ----------
    analysis : BodeAnalysis
        Result to write.
    out_dir : str or os.PathLike
        Report directory; see :func:`check_output_dir` for what it may be.
    draw : bool, default True
        Draw the PNG figures, ``bode.html`` and ``index.html``. With False only ``metrics.json``
        and ``metrics.csv`` are written.
    workers : int, optional
        Worker processes for the PNGs, see :func:`spectral_forensics.plots.bode.save_head_pngs`.
    progress : bool, default True
        Show a progress bar while drawing.

    Returns
    -------
    pathlib.Path
        The absolute report directory.

    Raises
    ------
    ValueError
        If ``out_dir`` cannot be written (raised before any file is written), or if an array of
        ``analysis`` does not match its layers and heads.
    """
    out = check_output_dir(out_dir)
    _check_shapes(analysis)
    records = analysis.records()
    payload = metrics_payload(analysis, records)

    start = time.perf_counter()
    log.info("Writing report for %s into %s", analysis.model_name, out)
    with atomic_report_directory(out) as tmp:
        _write_json(tmp / METRICS_JSON, payload)
        _write_csv(tmp / METRICS_CSV, records)
        if draw:
            save_head_pngs(analysis, tmp, workers=workers, progress=progress)
            write_bode_html(analysis, tmp / BODE_HTML)
            (tmp / INDEX_HTML).write_text(index_html(analysis, records), encoding="utf-8")
    log.info("Wrote report %s in %.1f s", out, time.perf_counter() - start)
    return out
