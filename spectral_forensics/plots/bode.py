"""Matplotlib Bode plots of attention heads and their parallel PNG export.

Every function builds :class:`matplotlib.figure.Figure` objects directly and never touches
``matplotlib.pyplot``, so no global figure state exists and drawing is safe in threads and worker
processes with any matplotlib backend. PNGs are rendered with the Agg canvas.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import secrets
import sys
import time
from collections.abc import Iterable
from concurrent.futures import FIRST_EXCEPTION, Future, ProcessPoolExecutor, wait
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator
from tqdm.auto import tqdm

from spectral_forensics.results import BodeAnalysis
from spectral_forensics.spectral.transfer import momentum_response

log = logging.getLogger(__name__)

DPI = 90
"""Resolution of exported PNGs in dots per inch."""

HEAD_FIGSIZE = (6.4, 7.6)
"""Size in inches of a per-head figure with band panels (576 × 684 pixels at ``DPI``)."""

HEAD_FIGSIZE_NO_ROPE = (6.4, 3.4)
"""Size in inches of a per-head figure of a model without rotary embeddings."""

GRID_CELL_SIZE = (2.4, 1.9)
"""Size in inches of one head's panel in a layer grid."""

DB_RANGE = 150.0
"""Widest y range in dB shown on a magnitude or PSD panel; lower values fall off the bottom.

An exactly zero M_i or PSD bin is stored as about -6000 dB and would otherwise flatten
every other value on the axis.
"""

MIN_FIGURES_PER_WORKER = 8
"""Figures each worker process should draw before parallel export pays for its start-up.

A worker's first figure also builds the reusable head figure and loads fonts, so a worker with
only a few figures saves little. The threshold is an estimate, not a tuned value.
"""

MAX_DEFAULT_WORKERS = 4

_DC_COLOR = "tab:blue"
_AC_COLOR = "tab:orange"


def _position(values: list[int], value: int, name: str) -> int:
    """Return the array index of layer or head ``value``, or raise a ValueError."""
    try:
        return list(values).index(value)
    except ValueError:
        raise ValueError(
            f"{name}={value!r} was not analysed; the analysis contains {name}s {list(values)}. "
            f"Pass one of those."
        ) from None


def _limit_db_range(ax: Axes, values: Iterable[np.ndarray]) -> None:
    """Clip the y view to ``DB_RANGE`` dB below the largest finite value drawn on ``ax``."""
    finite = [v[np.isfinite(v)] for v in values]
    finite = [v for v in finite if v.size]
    if not finite:
        return
    top = max(float(v.max()) for v in finite)
    bottom = min(float(v.min()) for v in finite)
    if top - bottom > DB_RANGE:
        ax.set_ylim(top - DB_RANGE, top + 0.05 * DB_RANGE)


_SUPERSCRIPTS = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def _decade_label(value: float, _position: int) -> str:
    """Label a power of ten as plain text ("10⁻²"), which renders faster than mathtext."""
    exponent = round(math.log10(value)) if value > 0 else 0
    return "10" + str(exponent).translate(_SUPERSCRIPTS)


def _set_log_x(ax: Axes) -> None:
    """Use a log x axis with decade ticks only, labelled without mathtext.

    Minor ticks and mathtext labels take most of the time of drawing a figure.
    """
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, numticks=8))
    ax.xaxis.set_major_formatter(FuncFormatter(_decade_label))
    ax.xaxis.set_minor_locator(NullLocator())


def _band_xlim(theta: np.ndarray) -> tuple[float, float]:
    positive = theta[theta > 0]
    if positive.size == 0:
        return 1e-4, np.pi
    return float(positive.min()) / 1.6, float(positive.max()) * 1.6


def _temporal_xlim(omega: np.ndarray, cutoff: float) -> tuple[float, float]:
    """Return an ω range covering the nonzero frequencies and the cutoff ω_c.

    The cutoff often lies below the lowest Welch bin 2π/nperseg, for example ω_c = 2π/window.
    """
    low = [float(omega.min())] if omega.size else []
    if cutoff > 0:
        low.append(cutoff / 1.25)
    left = min(low) if low else 1e-3
    right = float(omega.max()) if omega.size else np.pi
    return left, max(right, left * 10)


def _add_band_artists(
    ax: Axes, theta: np.ndarray, dc_mask: np.ndarray, cutoff_wavelength: float,
    *, marker_size: float = 5.0, legend: bool = True,
) -> tuple[Line2D, Line2D, Line2D]:
    """Set up a panel of per-band values against θ_i and return its (all, DC, AC) lines, still empty.

    DC bands are drawn filled, AC bands hollow, the DC region shaded and the cutoff dashed.
    """
    _set_log_x(ax)
    ax.set_xlim(*_band_xlim(theta))
    (line_all,) = ax.plot([], [], color="0.65", lw=0.8, zorder=1)
    (line_dc,) = ax.plot([], [], "o", ms=marker_size, color=_DC_COLOR, zorder=2,
                         label=f"DC bands (2π/θ_i > {cutoff_wavelength:g} tokens)")
    (line_ac,) = ax.plot([], [], "s", ms=marker_size, mfc="none", color=_AC_COLOR, zorder=2,
                         label="AC bands")
    if math.isfinite(cutoff_wavelength) and cutoff_wavelength > 0:
        theta_c = 2 * np.pi / cutoff_wavelength
        left = ax.get_xlim()[0]
        if theta_c > left:
            ax.axvspan(left, theta_c, color=_DC_COLOR, alpha=0.08, lw=0, zorder=0)
        ax.axvline(theta_c, color="k", ls="--", lw=0.9, zorder=1,
                   label=f"cutoff θ_c = 2π/{cutoff_wavelength:g} = {theta_c:.3g} rad/token")
    ax.grid(True, which="major", alpha=0.3)
    if legend:
        ax.legend(fontsize=7, loc="best")
    return line_all, line_dc, line_ac


def _set_band_values(
    lines: tuple[Line2D, Line2D, Line2D], theta: np.ndarray, dc_mask: np.ndarray, values: np.ndarray
) -> np.ndarray:
    """Put one head's per-band values on the lines of :func:`_add_band_artists`.

    Bands with θ_i = 0 cannot sit on a log axis and are left out. Returns the values drawn.
    """
    on_axis = theta > 0
    dc = dc_mask & on_axis
    ac = ~dc_mask & on_axis
    line_all, line_dc, line_ac = lines
    line_all.set_data(theta[on_axis], values[on_axis])
    line_dc.set_data(theta[dc], values[dc])
    line_ac.set_data(theta[ac], values[ac])
    return values[on_axis]


def _rescale_y(ax: Axes, drawn: list[np.ndarray]) -> None:
    """Fit the y view to the lines now on ``ax``, at most ``DB_RANGE`` dB tall."""
    ax.set_autoscaley_on(True)
    ax.relim()
    ax.autoscale_view(scalex=False, scaley=True)
    _limit_db_range(ax, drawn)


def _psd_db(psd: np.ndarray, on_axis: np.ndarray) -> np.ndarray:
    """10 log10 of one head's PSD at the frequencies selected by ``on_axis``."""
    power = np.asarray(psd, dtype=float)[on_axis]
    return 10 * np.log10(np.maximum(power, np.finfo(float).tiny))


class HeadBodeFigure:
    """Per-head Bode figure of one analysis, built once and redrawn for any of its heads.

    Redrawing only replaces line data, y limits and the title, and gives the same pixels as a new
    figure. Export reuses one instance for every head: on a 2-core CPU machine that took 0.55 s
    of CPU time per PNG against 0.77 s for a new figure per head.

    Parameters
    ----------
    analysis : BodeAnalysis
        Result to draw.
    fig : matplotlib.figure.Figure, optional
        Figure to draw into; it is cleared first. By default a new figure of size
        ``HEAD_FIGSIZE`` (``HEAD_FIGSIZE_NO_ROPE`` without bands) is created.

    Notes
    -----
    See :func:`plot_head_bode` for the panels.
    """

    def __init__(self, analysis: BodeAnalysis, fig: Figure | None = None):
        self.analysis = analysis
        bands = analysis.bands
        if fig is None:
            figsize = HEAD_FIGSIZE if bands is not None else HEAD_FIGSIZE_NO_ROPE
            fig = Figure(figsize=figsize, dpi=DPI)
        else:
            fig.clear()
        self.fig = fig

        if bands is None:
            self.ax_magnitude = self.ax_phase = None
            self.ax_psd = fig.subplots(1, 1)
            fig.subplots_adjust(left=0.12, right=0.86, top=0.85, bottom=0.17)
        else:
            self.ax_magnitude, self.ax_phase, self.ax_psd = fig.subplots(
                3, 1, gridspec_kw={"height_ratios": [3, 2, 3], "hspace": 0.42}
            )
            fig.subplots_adjust(left=0.12, right=0.86, top=0.93, bottom=0.07)
            self._add_band_panels()
        self._add_temporal_panel()
        self.ax_psd.set_title(
            f"Welch PSD (nperseg = {analysis.temporal.nperseg} tokens)", fontsize=9
        )
        self.title = fig.suptitle("", fontsize=11)

    def _add_band_panels(self) -> None:
        bands = self.analysis.bands
        ax_magnitude, ax_phase = self.ax_magnitude, self.ax_phase
        ax_phase.sharex(ax_magnitude)
        ax_magnitude.tick_params(labelbottom=False)

        self.magnitude_lines = _add_band_artists(
            ax_magnitude, bands.theta, bands.dc_mask, bands.cutoff_wavelength
        )
        ax_magnitude.set_ylabel("|M_i| (dB)")
        ax_magnitude.set_title("RoPE-band spectrum M_i = E[q_i conj(k_i)]", fontsize=9)

        self.phase_lines = _add_band_artists(
            ax_phase, bands.theta, bands.dc_mask, bands.cutoff_wavelength, legend=False
        )
        ax_phase.set_ylim(-190, 190)
        ax_phase.set_yticks([-180, -90, 0, 90, 180])
        ax_phase.set_ylabel("arg M_i (deg)")
        ax_phase.set_xlabel("θ_i (rad/token)")

    def _add_temporal_panel(self) -> None:
        """Set up the PSD panel: empty PSD lines, the cutoff ω_c and the closed-form overlay."""
        ax = self.ax_psd
        temporal = self.analysis.temporal
        freqs = np.asarray(temporal.freqs, dtype=float)
        self._freq_on_axis = freqs > 0
        omega = freqs[self._freq_on_axis]
        _set_log_x(ax)
        ax.set_xlim(*_temporal_xlim(omega, temporal.cutoff))

        self.psd_lines = {}
        for stage in temporal.psd:
            (self.psd_lines[stage],) = ax.plot(omega, np.zeros_like(omega), lw=1.1,
                                               label=f"PSD {stage}")
        ax.set_xlabel("ω (rad/token)")
        ax.set_ylabel("PSD (dB)")
        ax.grid(True, which="major", alpha=0.3)
        ax.axvline(temporal.cutoff, color="k", ls="--", lw=0.9,
                   label=f"ω_c = {temporal.cutoff:.3g} rad/token")

        twin = ax.twinx()
        gamma = self.analysis.gamma
        response_db = 20 * np.log10(np.abs(momentum_response(omega, gamma)))
        twin.plot(omega, response_db, color="k", ls=":", lw=1.4,
                  label=f"closed form, γ = {gamma:g}")
        twin.set_ylabel("|H(e^jω)|² (dB)")
        self.ax_twin = twin

        # Measured stage transfer functions: solid where the coherence reaches the threshold of
        # the agreement score, faint elsewhere, with the head's own closed form dotted.
        self.transfer_lines = []
        colors = ["tab:green", "tab:red", "tab:purple", "tab:brown"]
        for index, transfer in enumerate(self.analysis.transfers):
            on_axis = np.asarray(transfer.freqs) > 0
            omega_t = np.asarray(transfer.freqs)[on_axis]
            (coherent,) = twin.plot(omega_t, np.zeros_like(omega_t), lw=1.6,
                                    color=colors[index % len(colors)],
                                    label=f"measured H {transfer.name} "
                                          f"(faint: coherence < {transfer.coherence_threshold:g})")
            (faint,) = twin.plot(omega_t, np.zeros_like(omega_t), lw=0.8, alpha=0.3,
                                 color=coherent.get_color())
            (theory,) = twin.plot(omega_t, np.zeros_like(omega_t), lw=1.2, ls=":",
                                  color=coherent.get_color(), label=f"closed form for {transfer.name}")
            self.transfer_lines.append((transfer, on_axis, coherent, faint, theory))

        handles, labels = ax.get_legend_handles_labels()
        twin_handles, twin_labels = twin.get_legend_handles_labels()
        ax.legend(handles + twin_handles, labels + twin_labels, fontsize=7, loc="best")

    def draw(self, layer: int, head: int) -> Figure:
        """Show head ``head`` of layer ``layer`` and return the figure."""
        analysis = self.analysis
        li = _position(analysis.layers, layer, "layer")
        hi = _position(analysis.heads, head, "head")
        bands = analysis.bands
        if bands is not None:
            drawn = _set_band_values(self.magnitude_lines, bands.theta, bands.dc_mask,
                                     bands.magnitude_db[li, hi])
            _rescale_y(self.ax_magnitude, [drawn])
            _set_band_values(self.phase_lines, bands.theta, bands.dc_mask, bands.phase_deg[li, hi])

        drawn = []
        for stage, psd in analysis.temporal.psd.items():
            psd_db = _psd_db(psd[li, hi], self._freq_on_axis)
            self.psd_lines[stage].set_ydata(psd_db)
            drawn.append(psd_db)
        _rescale_y(self.ax_psd, drawn)

        if self.transfer_lines:
            drawn_h = [20 * np.log10(np.abs(momentum_response(
                np.asarray(analysis.temporal.freqs)[self._freq_on_axis], analysis.gamma)))]
            for transfer, on_axis, coherent, faint, theory in self.transfer_lines:
                h_db = 20 * np.log10(np.maximum(np.abs(transfer.h[li, hi][on_axis]), 1e-300))
                coherence = transfer.coherence[li, hi][on_axis]
                coherent.set_ydata(np.where(coherence >= transfer.coherence_threshold, h_db, np.nan))
                faint.set_ydata(h_db)
                theory.set_ydata(20 * np.log10(np.abs(transfer.theory[li, hi][on_axis])))
                drawn_h.append(h_db)
            _rescale_y(self.ax_twin, drawn_h)
        self.title.set_text(f"L{layer}H{head} · {analysis.model_name}")
        return self.fig


def plot_head_bode(
    analysis: BodeAnalysis, layer: int, head: int, fig: Figure | None = None
) -> Figure:
    """Draw the Bode plot of one attention head in the RoPE domain and its temporal spectrum.

    Panels, top to bottom: |M_i| in dB against θ_i (log x), DC bands filled and shaded, AC bands
    hollow, with the cutoff θ_c = 2π / L dashed; arg M_i in degrees against θ_i; the Welch PSD in
    dB of every stage in ``analysis.temporal.psd`` against ω (log x), with the cutoff ω_c dashed
    and the closed-form momentum response |H(e^{jω})|² in dB for γ = ``analysis.gamma`` on a twin
    y axis. A model without rotary embeddings (``analysis.bands`` is None) gets only the temporal
    panel. Frequency 0 (θ_i = 0 or ω = 0) cannot sit on a log axis and is left out.

    Parameters
    ----------
    analysis : BodeAnalysis
        Result to draw.
    layer, head : int
        Layer and query-head index, as listed in ``analysis.layers`` and ``analysis.heads``.
    fig : matplotlib.figure.Figure, optional
        Figure to draw into; it is cleared first. By default a new figure of size
        ``HEAD_FIGSIZE`` (``HEAD_FIGSIZE_NO_ROPE`` without bands) is created.

    Returns
    -------
    matplotlib.figure.Figure
        The drawn figure, titled ``"L{layer}H{head}"`` and the model name.

    Raises
    ------
    ValueError
        If ``layer`` or ``head`` was not analysed.

    Notes
    -----
    The magnitude is 20 log10 |M_i| and the PSD 10 log10 P(ω), both taken from the stored arrays.
    The overlay is 20 log10 |H(e^{jω})| with H(e^{jω}) = (1 + γ) − γ e^{−jω}, evaluated by
    :func:`spectral_forensics.spectral.transfer.momentum_response`.
    """
    _position(analysis.layers, layer, "layer")
    _position(analysis.heads, head, "head")
    return HeadBodeFigure(analysis, fig).draw(layer, head)


def plot_layer_grid(analysis: BodeAnalysis, layer: int) -> Figure:
    """Draw small-multiple magnitude plots of every analysed head of one layer.

    Each panel shows |M_i| in dB against θ_i (log x) with DC bands filled, AC bands hollow and
    the cutoff θ_c dashed; all panels share both axes. A model without rotary embeddings gets
    the Welch PSD in dB of every stage against ω instead.

    Parameters
    ----------
    analysis : BodeAnalysis
        Result to draw.
    layer : int
        Layer index, as listed in ``analysis.layers``.

    Returns
    -------
    matplotlib.figure.Figure
        A grid of ceil(sqrt(n_heads)) columns, one panel per head, titled ``"H{head}"``.
    """
    li = _position(analysis.layers, layer, "layer")
    n_heads = len(analysis.heads)
    ncols = max(1, math.ceil(math.sqrt(n_heads)))
    nrows = max(1, math.ceil(n_heads / ncols))
    # Margins in inches, so the title and tick labels fit whatever the number of rows.
    title_height, label_height = 0.8, 0.4
    height = GRID_CELL_SIZE[1] * nrows + title_height + label_height
    fig = Figure(figsize=(GRID_CELL_SIZE[0] * ncols, height), dpi=DPI)
    axes = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False).ravel()
    fig.subplots_adjust(left=0.08, right=0.98, bottom=label_height / height,
                        top=1 - title_height / height, hspace=0.35, wspace=0.08)
    bands = analysis.bands

    freqs = np.asarray(analysis.temporal.freqs, dtype=float)
    freq_on_axis = freqs > 0
    drawn = []
    for hi, head in enumerate(analysis.heads):
        ax = axes[hi]
        if bands is not None:
            lines = _add_band_artists(ax, bands.theta, bands.dc_mask, bands.cutoff_wavelength,
                                      marker_size=3.0, legend=False)
            drawn.append(_set_band_values(lines, bands.theta, bands.dc_mask,
                                          bands.magnitude_db[li, hi]))
        else:
            _set_log_x(ax)
            for stage, psd in analysis.temporal.psd.items():
                psd_db = _psd_db(psd[li, hi], freq_on_axis)
                ax.plot(freqs[freq_on_axis], psd_db, lw=0.9, label=stage)
                drawn.append(psd_db)
            ax.axvline(analysis.temporal.cutoff, color="k", ls="--", lw=0.8)
            ax.set_xlim(*_temporal_xlim(freqs[freq_on_axis], analysis.temporal.cutoff))
            ax.grid(True, which="major", alpha=0.3)
            if hi == 0:
                ax.legend(fontsize=6, loc="best")
        ax.set_title(f"H{head}", fontsize=8, pad=2)
        ax.tick_params(labelsize=7)
    for ax in axes[n_heads:]:
        ax.set_visible(False)
    # The panels share y, so one autoscale over every panel's data limits sets them all.
    for ax in axes[:n_heads]:
        ax.relim()
    _rescale_y(axes[0], drawn)

    if bands is not None:
        subtitle = "|M_i| (dB) against θ_i (rad/token); filled: DC bands, hollow: AC bands"
    else:
        subtitle = "Welch PSD (dB) against ω (rad/token); dashed: cutoff ω_c"
    fig.suptitle(f"L{layer} · {analysis.model_name}\n{subtitle}", fontsize=9)
    return fig


def save_png(fig: Figure, path: str | os.PathLike, dpi: int = DPI) -> Path:
    """Render ``fig`` with the Agg canvas and write it to ``path`` atomically.

    The PNG is written to a temporary file in the same directory and moved over ``path`` with
    :func:`os.replace`, so a reader never sees a partial image.

    Returns
    -------
    pathlib.Path
        The written path.
    """
    path = Path(path)
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    try:
        canvas.print_figure(str(tmp), dpi=dpi, format="png")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# Figure tasks are ("head", layer, head, path) or ("layer", layer, None, path).
_Task = tuple[str, int, int | None, Path]


class _FigureExporter:
    """Draws and saves figure tasks of one analysis, reusing one :class:`HeadBodeFigure`."""

    def __init__(self, analysis: BodeAnalysis, dpi: int):
        self.analysis = analysis
        self.dpi = dpi
        self._head_figure: HeadBodeFigure | None = None

    def __call__(self, task: _Task) -> Path:
        kind, layer, head, path = task
        if kind == "head":
            if self._head_figure is None:
                self._head_figure = HeadBodeFigure(self.analysis)
            fig = self._head_figure.draw(layer, head)
        else:
            fig = plot_layer_grid(self.analysis, layer)
        return save_png(fig, path, self.dpi)


# Exporter of a worker process, set by _init_worker when the process starts.
_worker_exporter: _FigureExporter | None = None


def _init_worker(analysis: BodeAnalysis, dpi: int) -> None:
    global _worker_exporter
    _worker_exporter = _FigureExporter(analysis, dpi)


def _run_worker_task(task: _Task) -> Path:
    return _worker_exporter(task)


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _resolve_workers(workers: int | None, n_tasks: int) -> int:
    if workers is None:
        by_size = max(1, n_tasks // MIN_FIGURES_PER_WORKER)
        return max(1, min(MAX_DEFAULT_WORKERS, _available_cpus(), by_size))
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(
            f"workers={workers!r} must be a positive integer, or None to choose from the CPU "
            f"count (at most {MAX_DEFAULT_WORKERS}); pass workers=1 to draw serially."
        )
    return min(workers, max(1, n_tasks))


def _figure_tasks(analysis: BodeAnalysis, directory: Path) -> list[_Task]:
    tasks: list[_Task] = []
    for layer in analysis.layers:
        for head in analysis.heads:
            tasks.append(("head", layer, head, directory / "bode" / f"L{layer}H{head}.png"))
    for layer in analysis.layers:
        tasks.append(("layer", layer, None, directory / "layers" / f"L{layer}.png"))
    return tasks


def save_head_pngs(
    analysis: BodeAnalysis,
    directory: str | os.PathLike,
    workers: int | None = None,
    progress: bool = True,
    dpi: int = DPI,
) -> list[Path]:
    """Write the Bode plot of every analysed head and the grid of every layer as PNGs.

    Files: ``directory/bode/L{layer}H{head}.png`` (:func:`plot_head_bode`) and
    ``directory/layers/L{layer}.png`` (:func:`plot_layer_grid`); the two subdirectories are
    created. Each file is written atomically, but a failed call can leave some files written.

    Parameters
    ----------
    analysis : BodeAnalysis
        Result to draw.
    directory : str or os.PathLike
        Existing directory to write into.
    workers : int, optional
        Worker processes drawing in parallel; 1 draws in this process. By default one worker per
        ``MIN_FIGURES_PER_WORKER`` figures, capped by the available CPUs and
        ``MAX_DEFAULT_WORKERS``.
    progress : bool, default True
        Show a tqdm progress bar.
    dpi : int, default ``DPI``
        PNG resolution in dots per inch.

    Returns
    -------
    list of pathlib.Path
        The written files: head figures in (layer, head) order, then layer grids.

    Notes
    -----
    Workers are forked on Linux and spawned elsewhere, and each receives the analysis once, at
    start-up. Each worker draws all its head figures into one reused :class:`HeadBodeFigure`. A
    worker's exception stops the export: pending figures are cancelled and the exception is
    raised here.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(
            f"directory={str(directory)!r} is not an existing directory; create it first."
        )
    tasks = _figure_tasks(analysis, directory)
    n_workers = _resolve_workers(workers, len(tasks))
    (directory / "bode").mkdir(exist_ok=True)
    (directory / "layers").mkdir(exist_ok=True)

    log.info("Drawing %d figures into %s with %d worker(s)", len(tasks), directory, n_workers)
    start = time.perf_counter()
    bar = tqdm(total=len(tasks), desc="Bode plots", unit="fig", disable=not progress)
    try:
        if n_workers == 1:
            export = _FigureExporter(analysis, dpi)
            written = []
            for task in tasks:
                written.append(export(task))
                bar.update()
        else:
            written = _save_parallel(analysis, tasks, n_workers, dpi, bar)
    finally:
        bar.close()
    log.info("Drew %d figures in %.1f s", len(written), time.perf_counter() - start)
    return written


def _worker_context() -> multiprocessing.context.BaseContext:
    """Return the ``fork`` context on Linux and ``spawn`` elsewhere.

    Forked workers inherit the imported modules and the analysis, so they start at once. A spawned
    worker imports the package again, which loads PyTorch and transformers (10 s or more). The
    workers call only numpy and matplotlib, never PyTorch, whose thread pools a fork does not copy.
    Windows has no ``fork``, and on macOS it is unsafe with system libraries.
    """
    # NOTE: Python 3.12 and later warn (DeprecationWarning) when a process that already runs
    # threads, such as PyTorch's, forks.
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    return multiprocessing.get_context(method)


def _save_parallel(
    analysis: BodeAnalysis, tasks: list[_Task], n_workers: int, dpi: int, bar: tqdm
) -> list[Path]:
    executor = ProcessPoolExecutor(
        max_workers=n_workers,
        mp_context=_worker_context(),
        initializer=_init_worker,
        initargs=(analysis, dpi),
    )
    try:
        futures: list[Future] = [executor.submit(_run_worker_task, task) for task in tasks]
        for future in futures:
            future.add_done_callback(lambda f: bar.update() if not f.cancelled() else None)
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        for future in futures:
            if future in done and future.exception() is not None:
                raise future.exception()
        return [future.result() for future in futures]
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
