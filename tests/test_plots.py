"""Tests of the matplotlib and plotly Bode plots on a synthetic analysis with planted arrays."""

from __future__ import annotations

import json
import re

import matplotlib.image as mpimg
import numpy as np
import pytest
from matplotlib.figure import Figure

from spectral_forensics.plots import bode, interactive
from spectral_forensics.results import BandSpectrum, BodeAnalysis, TemporalSpectrum

LAYERS = [0, 3]
HEADS = [0, 2, 5]
N_BANDS = 8
CUTOFF_WAVELENGTH = 64.0
GAMMA = 0.5
STAGES = ("rot_q", "rot_k")


def make_analysis(with_bands: bool = True) -> BodeAnalysis:
    """Build a 2-layer × 3-head × 8-band analysis whose every array is known."""
    rng = np.random.default_rng(0)
    n_layers, n_heads = len(LAYERS), len(HEADS)
    theta = 10000.0 ** (-np.arange(N_BANDS) / N_BANDS)
    magnitude = rng.uniform(0.1, 2.0, (n_layers, n_heads, N_BANDS))
    phase = rng.uniform(-np.pi, np.pi, (n_layers, n_heads, N_BANDS))
    bands = BandSpectrum(
        theta=theta,
        cross=magnitude * np.exp(1j * phase),
        q_energy=rng.uniform(0.5, 1.5, (n_layers, n_heads, N_BANDS)),
        k_energy=rng.uniform(0.5, 1.5, (n_layers, n_heads, N_BANDS)),
        dc_mask=2 * np.pi / theta > CUTOFF_WAVELENGTH,
        cutoff_wavelength=CUTOFF_WAVELENGTH,
    )
    freqs = np.linspace(0, np.pi, 33)
    temporal = TemporalSpectrum(
        freqs=freqs,
        psd={stage: rng.uniform(0.01, 1.0, (n_layers, n_heads, freqs.size)) for stage in STAGES},
        cutoff=0.2,
        nperseg=64,
    )
    rope = {"model_type": "llama", "n_layers": 4, "n_heads": 6, "n_kv_heads": 2, "head_dim": 16,
            "has_rope": with_bands, "base": 10000.0 if with_bands else None,
            "rotary_dim": 16 if with_bands else 0, "pairing": "rotate_half" if with_bands else None,
            "rope_type": "default" if with_bands else None}
    return BodeAnalysis(
        model_name="synthetic-llama", layers=list(LAYERS), heads=list(HEADS), rope=rope,
        n_tokens=256, window=64, bands=bands if with_bands else None, temporal=temporal,
        gamma=GAMMA, text_source="planted arrays",
    )


def closed_form_db(omega: np.ndarray, gamma: float) -> np.ndarray:
    """|H(e^{jω})|² in dB from |H|² = 1 + 4γ(1 + γ) sin²(ω/2)."""
    return 10 * np.log10(1 + 4 * gamma * (1 + gamma) * np.sin(omega / 2) ** 2)


def line_by_label(ax, label):
    matches = [line for line in ax.get_lines() if line.get_label() == label]
    assert len(matches) == 1, f"expected one line labelled {label!r}, found {len(matches)}"
    return matches[0]


@pytest.fixture(scope="module")
def analysis():
    return make_analysis()


# ------------------------------------------------------------------------ matplotlib figures


def test_head_bode_magnitude_panel(analysis):
    fig = bode.plot_head_bode(analysis, layer=3, head=5)
    ax_mag = fig.axes[0]
    bands = analysis.bands
    expected = bands.magnitude_db[1, 2]
    dc = bands.dc_mask

    assert 0 < dc.sum() < N_BANDS
    assert ax_mag.get_xscale() == "log"
    dc_line = line_by_label(ax_mag, f"DC bands (2π/θ_i > {CUTOFF_WAVELENGTH:g} tokens)")
    ac_line = line_by_label(ax_mag, "AC bands")
    np.testing.assert_allclose(dc_line.get_xdata(), bands.theta[dc])
    np.testing.assert_allclose(dc_line.get_ydata(), expected[dc])
    np.testing.assert_allclose(ac_line.get_xdata(), bands.theta[~dc])
    np.testing.assert_allclose(ac_line.get_ydata(), expected[~dc])
    assert ac_line.get_markerfacecolor() == "none"

    theta_c = 2 * np.pi / CUTOFF_WAVELENGTH
    cutoff = [line for line in ax_mag.get_lines() if line.get_label().startswith("cutoff θ_c")]
    assert len(cutoff) == 1
    np.testing.assert_allclose(cutoff[0].get_xdata(), [theta_c, theta_c])
    assert "L3H5" in fig.texts[0].get_text()
    assert "synthetic-llama" in fig.texts[0].get_text()


def test_head_bode_phase_panel(analysis):
    fig = bode.plot_head_bode(analysis, layer=0, head=2)
    ax_phase = fig.axes[1]
    bands = analysis.bands
    dc = bands.dc_mask

    assert ax_phase.get_xscale() == "log"
    assert ax_phase.get_ylabel() == "arg M_i (deg)"
    dc_line = line_by_label(ax_phase, f"DC bands (2π/θ_i > {CUTOFF_WAVELENGTH:g} tokens)")
    ac_line = line_by_label(ax_phase, "AC bands")
    np.testing.assert_allclose(dc_line.get_ydata(), bands.phase_deg[0, 1][dc])
    np.testing.assert_allclose(ac_line.get_ydata(), bands.phase_deg[0, 1][~dc])
    np.testing.assert_allclose(ac_line.get_ydata(), np.degrees(np.angle(bands.cross[0, 1][~dc])))


def test_head_bode_temporal_panel(analysis):
    fig = bode.plot_head_bode(analysis, layer=3, head=0)
    ax_psd, twin = fig.axes[2], fig.axes[3]
    freqs = analysis.temporal.freqs
    omega = freqs[1:]

    assert ax_psd.get_xscale() == "log"
    for stage in STAGES:
        line = line_by_label(ax_psd, f"PSD {stage}")
        np.testing.assert_allclose(line.get_xdata(), omega)
        expected = 10 * np.log10(analysis.temporal.psd[stage][1, 0, 1:])
        np.testing.assert_allclose(line.get_ydata(), expected)

    overlay = line_by_label(twin, f"closed form, γ = {GAMMA:g}")
    np.testing.assert_allclose(overlay.get_xdata(), omega)
    np.testing.assert_allclose(overlay.get_ydata(), closed_form_db(omega, GAMMA), atol=1e-12)
    assert overlay.get_ydata()[-1] == pytest.approx(20 * np.log10(1 + 2 * GAMMA))

    cutoff = line_by_label(ax_psd, "ω_c = 0.2 rad/token")
    np.testing.assert_allclose(cutoff.get_xdata(), [0.2, 0.2])
    legend_texts = [text.get_text() for text in ax_psd.get_legend().get_texts()]
    assert f"closed form, γ = {GAMMA:g}" in legend_texts


def test_head_bode_draws_into_given_figure(analysis):
    fig = Figure()
    fig.subplots(2, 2)
    returned = bode.plot_head_bode(analysis, layer=0, head=0, fig=fig)
    assert returned is fig
    assert len(fig.axes) == 4


def test_head_bode_without_rope():
    analysis = make_analysis(with_bands=False)
    fig = bode.plot_head_bode(analysis, layer=0, head=5)
    assert len(fig.axes) == 2
    ax_psd = fig.axes[0]
    line = line_by_label(ax_psd, "PSD rot_k")
    np.testing.assert_allclose(line.get_ydata(), 10 * np.log10(analysis.temporal.psd["rot_k"][0, 2, 1:]))
    labels = [line.get_label() for line in fig.axes[1].get_lines()]
    assert labels == [f"closed form, γ = {GAMMA:g}"]


def test_temporal_panel_shows_low_cutoff():
    analysis = make_analysis()
    analysis.temporal.cutoff = 0.05
    lowest_bin = analysis.temporal.freqs[1]
    assert analysis.temporal.cutoff < lowest_bin

    ax_psd = bode.plot_head_bode(analysis, layer=0, head=0).axes[2]
    left, right = ax_psd.get_xlim()
    assert left < 0.05
    assert right == pytest.approx(np.pi)
    grid_ax = bode.plot_layer_grid(make_analysis(with_bands=False), layer=0).axes[0]
    assert grid_ax.get_xlim()[0] < 0.2


@pytest.mark.parametrize("layer, head, name", [(1, 0, "layer"), (0, 1, "head")])
def test_head_bode_unknown_index(analysis, layer, head, name):
    with pytest.raises(ValueError, match=rf"{name}=1 was not analysed") as info:
        bode.plot_head_bode(analysis, layer=layer, head=head)
    expected_list = str(LAYERS if name == "layer" else HEADS)
    assert expected_list in str(info.value)


def test_layer_grid_panels(analysis):
    fig = bode.plot_layer_grid(analysis, layer=3)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["H0", "H2", "H5"]
    assert len(fig.axes) == 4
    dc = analysis.bands.dc_mask
    for hi, ax in enumerate(visible):
        line = line_by_label(ax, f"DC bands (2π/θ_i > {CUTOFF_WAVELENGTH:g} tokens)")
        np.testing.assert_allclose(line.get_ydata(), analysis.bands.magnitude_db[1, hi][dc])
    assert visible[0].get_shared_y_axes().joined(visible[0], visible[2])
    assert visible[0].get_shared_x_axes().joined(visible[0], visible[1])
    assert "L3" in fig.texts[0].get_text()


def test_layer_grid_without_rope():
    analysis = make_analysis(with_bands=False)
    fig = bode.plot_layer_grid(analysis, layer=0)
    first = fig.axes[0]
    labels = [line.get_label() for line in first.get_lines()]
    assert labels[:2] == list(STAGES)


# ------------------------------------------------------------------------ PNG export


def assert_png(path, width, height):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = mpimg.imread(path)
    assert image.shape[:2] == (height, width)


def test_save_head_pngs_serial(analysis, tmp_path):
    written = bode.save_head_pngs(analysis, tmp_path, workers=1, progress=False)

    head_files = [tmp_path / "bode" / f"L{layer}H{head}.png" for layer in LAYERS for head in HEADS]
    layer_files = [tmp_path / "layers" / f"L{layer}.png" for layer in LAYERS]
    assert written == head_files + layer_files
    width = round(bode.HEAD_FIGSIZE[0] * bode.DPI)
    height = round(bode.HEAD_FIGSIZE[1] * bode.DPI)
    for path in head_files:
        assert_png(path, width, height)
    grid_width, grid_height = bode.plot_layer_grid(analysis, 0).get_size_inches() * bode.DPI
    assert grid_width == pytest.approx(2 * bode.GRID_CELL_SIZE[0] * bode.DPI)
    for path in layer_files:
        assert_png(path, round(grid_width), round(grid_height))
    leftovers = [p.name for p in tmp_path.rglob(".*")]
    assert leftovers == []


def test_reused_head_figure_matches_fresh(analysis, tmp_path):
    reused = bode.HeadBodeFigure(analysis)
    reused.draw(0, 0)
    reused.draw(3, 2)
    reused_path = bode.save_png(reused.draw(3, 5), tmp_path / "reused.png")
    fresh_path = bode.save_png(bode.plot_head_bode(analysis, 3, 5), tmp_path / "fresh.png")
    np.testing.assert_array_equal(mpimg.imread(reused_path), mpimg.imread(fresh_path))
    assert reused.fig.texts[0].get_text() == "L3H5 · synthetic-llama"


def test_save_head_pngs_parallel_matches_fresh(analysis, tmp_path):
    parallel = bode.save_head_pngs(analysis, tmp_path, workers=2, progress=False)

    expected = [tmp_path / "bode" / f"L{layer}H{head}.png" for layer in LAYERS for head in HEADS]
    expected += [tmp_path / "layers" / f"L{layer}.png" for layer in LAYERS]
    assert parallel == expected
    serial_head = bode.save_png(bode.plot_head_bode(analysis, 3, 5), tmp_path / "head.png")
    serial_grid = bode.save_png(bode.plot_layer_grid(analysis, 0), tmp_path / "grid.png")
    np.testing.assert_array_equal(mpimg.imread(serial_head), mpimg.imread(expected[5]))
    np.testing.assert_array_equal(mpimg.imread(serial_grid), mpimg.imread(expected[6]))


@pytest.mark.parametrize("workers", [0, -1, 1.5, True])
def test_save_head_pngs_invalid_workers(analysis, tmp_path, workers):
    with pytest.raises(ValueError, match="workers=.* must be a positive integer"):
        bode.save_head_pngs(analysis, tmp_path, workers=workers, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_save_head_pngs_missing_directory(analysis, tmp_path):
    missing = tmp_path / "missing"
    with pytest.raises(ValueError, match="is not an existing directory"):
        bode.save_head_pngs(analysis, missing, workers=1, progress=False)
    assert not missing.exists()


# ------------------------------------------------------------------------ plotly page


def plotly_traces(page: str) -> list[dict]:
    """Return the trace list passed to Plotly.newPlot in a page written by plotly.io.to_html."""
    match = re.search(r'Plotly\.newPlot\(\s*"bode",\s*', page)
    assert match is not None, "no Plotly.newPlot call for div 'bode'"
    traces, _ = json.JSONDecoder().raw_decode(page, match.end())
    return traces


def test_bode_figure_traces(analysis):
    fig = interactive.bode_figure(analysis)
    bands = analysis.bands
    groups = [trace.legendgroup for trace in fig.data]

    assert len(fig.data) == 2 * len(LAYERS) * len(HEADS)
    for li, layer in enumerate(LAYERS):
        for hi, head in enumerate(HEADS):
            group = f"L{layer}H{head}"
            magnitude, phase = [trace for trace in fig.data if trace.legendgroup == group]
            assert magnitude.yaxis == "y"
            assert phase.yaxis == "y2"
            np.testing.assert_allclose(magnitude.x, bands.theta)
            np.testing.assert_allclose(magnitude.y, bands.magnitude_db[li, hi])
            np.testing.assert_allclose(phase.y, bands.phase_deg[li, hi])
            np.testing.assert_array_equal(np.asarray(magnitude.marker.symbol) == 0, bands.dc_mask)
            assert magnitude.visible is (li == 0)
    assert len(set(groups)) == len(LAYERS) * len(HEADS)
    assert fig.layout.xaxis.type == "log"

    buttons = fig.layout.updatemenus[0].buttons
    assert [button.label for button in buttons] == ["layer 0", "layer 3", "all layers"]
    visible_layer3 = buttons[1].args[0]["visible"]
    assert visible_layer3 == [group.startswith("L3H") for group in groups]


def test_bode_html_self_contained(analysis, tmp_path):
    path = interactive.write_bode_html(analysis, tmp_path / "bode.html")
    page = path.read_text(encoding="utf-8")

    assert re.search(r"<script[^>]*\bsrc=", page) is None
    assert "Plotly.newPlot" in page
    traces = plotly_traces(page)
    magnitude = [t for t in traces if t.get("yaxis", "y") == "y"]
    assert len(magnitude) == len(LAYERS) * len(HEADS)
    assert sorted(t["legendgroup"] for t in magnitude) == sorted(
        f"L{layer}H{head}" for layer in LAYERS for head in HEADS
    )
    assert len(traces) == 2 * len(magnitude)
    assert "window.location.hash" in page
    assert [p.name for p in tmp_path.iterdir()] == ["bode.html"]


def test_bode_figure_without_rope():
    analysis = make_analysis(with_bands=False)
    fig = interactive.bode_figure(analysis)
    assert len(fig.data) == len(LAYERS) * len(HEADS) * len(STAGES)
    trace = next(t for t in fig.data if t.name == "L3H2 rot_q")
    np.testing.assert_allclose(trace.x, analysis.temporal.freqs[1:])
    np.testing.assert_allclose(trace.y, 10 * np.log10(analysis.temporal.psd["rot_q"][1, 1, 1:]))
