"""Tests of the report directory: contents, atomic replacement and output-path checks."""

from __future__ import annotations

import csv
import json
import os
import re

import matplotlib.image as mpimg
import numpy as np
import pytest

from spectral_forensics import report
from spectral_forensics.plots import bode
from spectral_forensics.results import BandSpectrum, BodeAnalysis, TemporalSpectrum

LAYERS = [1, 4]
HEADS = [0, 3, 7]
N_BANDS = 8
STAGES = ("rot_q", "rot_k")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_analysis(
    with_bands: bool = True, model_name: str = "synthetic-llama", layers=LAYERS, heads=HEADS
) -> BodeAnalysis:
    """Build an analysis (by default 2 layers × 3 heads × 8 bands) from seeded random arrays."""
    rng = np.random.default_rng(1)
    shape = (len(layers), len(heads))
    theta = 10000.0 ** (-np.arange(N_BANDS) / N_BANDS)
    bands = BandSpectrum(
        theta=theta,
        cross=rng.uniform(0.1, 2.0, shape + (N_BANDS,)) * np.exp(1j * rng.uniform(-3, 3, shape + (N_BANDS,))),
        q_energy=rng.uniform(0.5, 1.5, shape + (N_BANDS,)),
        k_energy=rng.uniform(0.5, 1.5, shape + (N_BANDS,)),
        dc_mask=2 * np.pi / theta > 128,
        cutoff_wavelength=128.0,
    )
    freqs = np.linspace(0, np.pi, 17)
    temporal = TemporalSpectrum(
        freqs=freqs,
        psd={stage: rng.uniform(0.01, 1.0, shape + (freqs.size,)) for stage in STAGES},
        cutoff=0.1,
        nperseg=32,
    )
    rope = {"model_type": "llama", "n_layers": 6, "n_heads": 8, "n_kv_heads": 4, "head_dim": 16,
            "has_rope": with_bands, "base": 10000.0 if with_bands else None,
            "rotary_dim": 16 if with_bands else 0, "pairing": "rotate_half" if with_bands else None,
            "rope_type": "default" if with_bands else None,
            "theta": theta.tolist() if with_bands else []}
    return BodeAnalysis(
        model_name=model_name, layers=list(layers), heads=list(heads), rope=rope, n_tokens=512,
        window=128, bands=bands if with_bands else None, temporal=temporal, gamma=1.5,
        text_source="corpus.txt", extra={"stages": list(STAGES), "seed": np.int64(3)},
    )


def head_names() -> list[str]:
    return [f"L{layer}H{head}" for layer in LAYERS for head in HEADS]


def hidden_entries(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def snapshot(directory) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    analysis = make_analysis()
    out = report.write_report(analysis, tmp_path_factory.mktemp("full") / "report", workers=1,
                              progress=False)
    return analysis, out


# ------------------------------------------------------------------------ contents


def test_report_files(full_report):
    _, out = full_report
    expected = {"metrics.json", "metrics.csv", "bode.html", "index.html"}
    expected |= {f"bode/{name}.png" for name in head_names()}
    expected |= {f"layers/L{layer}.png" for layer in LAYERS}
    files = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert files == expected
    assert hidden_entries(out.parent) == []


def test_report_metrics_json(full_report):
    analysis, out = full_report
    with open(out / "metrics.json", encoding="utf-8") as file:
        payload = json.load(file)

    settings = payload["settings"]
    assert settings["model"] == "synthetic-llama"
    assert settings["text_source"] == "corpus.txt"
    assert settings["n_tokens"] == 512
    assert settings["window"] == 128
    assert settings["layers"] == LAYERS
    assert settings["heads"] == HEADS
    assert settings["rope"]["base"] == 10000.0
    assert settings["gamma"] == 1.5
    assert settings["extra"] == {"stages": list(STAGES), "seed": 3}
    assert settings["cutoffs"]["band_cutoff_wavelength_tokens"] == 128.0
    assert settings["cutoffs"]["band_cutoff_theta_rad_per_token"] == pytest.approx(2 * np.pi / 128)
    assert settings["cutoffs"]["temporal_cutoff_rad_per_token"] == 0.1
    np.testing.assert_allclose(payload["band_theta"], analysis.bands.theta)
    assert payload["band_dc"] == analysis.bands.dc_mask.tolist()

    heads = payload["heads"]
    assert len(heads) == 6
    assert [(h["layer"], h["head"]) for h in heads] == [(l, h) for l in LAYERS for h in HEADS]
    assert [h["kv_head"] for h in heads[:3]] == [0, 1, 3]
    assert heads == json.loads(json.dumps(analysis.records()))


def test_report_metrics_csv(full_report):
    analysis, out = full_report
    with open(out / "metrics.csv", encoding="utf-8", newline="") as file:
        rows = list(csv.DictReader(file))
    records = analysis.records()

    assert len(rows) == 6
    assert list(rows[0]) == list(records[0])
    for row, record in zip(rows, records):
        assert int(row["layer"]) == record["layer"]
        assert int(row["head"]) == record["head"]
        assert float(row["band_dc_fraction"]) == record["band_dc_fraction"]
        assert float(row["temporal_dc_fraction_rot_k"]) == record["temporal_dc_fraction_rot_k"]


def test_report_pngs_valid(full_report):
    _, out = full_report
    for name in head_names():
        path = out / "bode" / f"{name}.png"
        assert path.read_bytes()[:8] == PNG_MAGIC
        height, width = mpimg.imread(path).shape[:2]
        assert (width, height) == (round(bode.HEAD_FIGSIZE[0] * bode.DPI),
                                   round(bode.HEAD_FIGSIZE[1] * bode.DPI))
    for layer in LAYERS:
        path = out / "layers" / f"L{layer}.png"
        assert path.read_bytes()[:8] == PNG_MAGIC
        assert mpimg.imread(path).ndim == 3


def test_report_bode_html(full_report):
    _, out = full_report
    page = (out / "bode.html").read_text(encoding="utf-8")
    assert re.search(r"<script[^>]*\bsrc=", page) is None
    match = re.search(r'Plotly\.newPlot\(\s*"bode",\s*', page)
    assert match is not None
    traces, _ = json.JSONDecoder().raw_decode(page, match.end())
    magnitude_groups = sorted(t["legendgroup"] for t in traces if t.get("yaxis", "y") == "y")
    assert magnitude_groups == sorted(head_names())


def test_report_index_html(full_report):
    analysis, out = full_report
    page = (out / "index.html").read_text(encoding="utf-8")

    for name in head_names():
        assert f'href="bode/{name}.png"' in page
        assert f'href="bode.html#{name}"' in page
    for layer in LAYERS:
        assert f'href="layers/L{layer}.png"' in page
    for column in analysis.records()[0]:
        assert f">{column}</th>" in page
    assert page.count("<th data-sortable") == len(analysis.records()[0])
    assert "addEventListener('click'" in page
    assert re.search(r"<script[^>]*\bsrc=", page) is None
    assert re.search(r"<link[^>]*\bhref=", page) is None
    assert "synthetic-llama" in page
    assert "corpus.txt" in page
    assert "exceeds 128 tokens" in page
    assert "ω_c = 0.1 rad/token" in page


def test_report_non_finite_metrics(tmp_path):
    analysis = make_analysis()
    analysis.bands.cross[0, 1] = 0
    out = report.write_report(analysis, tmp_path / "report", draw=False)

    with open(out / "metrics.json", encoding="utf-8") as file:
        heads = json.load(file)["heads"]
    assert heads[1]["band_dc_fraction"] is None
    assert heads[0]["band_dc_fraction"] is not None
    with open(out / "metrics.csv", encoding="utf-8", newline="") as file:
        rows = list(csv.DictReader(file))
    assert rows[1]["band_dc_fraction"] == ""
    assert rows[0]["band_dc_fraction"] != ""


def test_report_metrics_only(tmp_path):
    out = report.write_report(make_analysis(), tmp_path / "report", draw=False)
    assert sorted(p.name for p in out.iterdir()) == ["metrics.csv", "metrics.json"]
    assert hidden_entries(tmp_path) == []


def test_report_without_rope(tmp_path):
    analysis = make_analysis(with_bands=False, layers=[4], heads=[3, 7])
    out = report.write_report(analysis, tmp_path / "report", workers=1, progress=False)

    with open(out / "metrics.json", encoding="utf-8") as file:
        payload = json.load(file)
    assert payload["band_theta"] is None
    assert len(payload["heads"]) == 2
    assert payload["heads"][0]["peak_theta"] is None
    assert payload["heads"][0]["temporal_dc_fraction_rot_q"] is not None
    for name in ("L4H3", "L4H7"):
        assert (out / "bode" / f"{name}.png").read_bytes()[:8] == PNG_MAGIC
    assert (out / "layers" / "L4.png").is_file()
    assert (out / "bode.html").is_file()
    assert "no rotary embeddings" in (out / "index.html").read_text(encoding="utf-8")


# ------------------------------------------------------------------------ atomic replacement


def fail_after(monkeypatch, n_files: int, error: BaseException) -> list:
    """Make bode.save_png raise ``error`` once ``n_files`` PNGs have been written."""
    written = []
    real_save_png = bode.save_png

    def save_png(fig, path, dpi=bode.DPI):
        if len(written) == n_files:
            raise error
        written.append(path)
        return real_save_png(fig, path, dpi)

    monkeypatch.setattr(bode, "save_png", save_png)
    return written


@pytest.mark.parametrize("error", [RuntimeError("drawing failed"), KeyboardInterrupt()])
def test_failed_report_leaves_nothing(tmp_path, monkeypatch, error):
    written = fail_after(monkeypatch, 1, error)
    with pytest.raises(type(error)):
        report.write_report(make_analysis(), tmp_path / "report", workers=1, progress=False)
    assert len(written) == 1
    assert list(tmp_path.iterdir()) == []


def test_failed_report_keeps_previous(tmp_path, monkeypatch):
    out = report.write_report(make_analysis(model_name="first"), tmp_path / "report", draw=False)
    before = snapshot(out)

    fail_after(monkeypatch, 1, RuntimeError("drawing failed"))
    with pytest.raises(RuntimeError, match="drawing failed"):
        report.write_report(make_analysis(model_name="second"), out, workers=1, progress=False)
    assert snapshot(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["report"]


def test_failed_swap_restores_previous(tmp_path, monkeypatch):
    out = report.write_report(make_analysis(model_name="first"), tmp_path / "report", draw=False)
    before = snapshot(out)
    real_rename = os.rename

    def rename(src, dst):
        if os.path.basename(src).startswith(".report.tmp-"):
            raise OSError("rename failed")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match="rename failed"):
        report.write_report(make_analysis(model_name="second"), out, draw=False)
    assert snapshot(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["report"]


def test_report_replaces_previous(tmp_path):
    out = tmp_path / "report"
    report.write_report(make_analysis(model_name="first"), out, draw=False)
    (out / "stale.txt").write_text("from an older run")
    report.write_report(make_analysis(model_name="second"), out, draw=False)

    with open(out / "metrics.json", encoding="utf-8") as file:
        assert json.load(file)["settings"]["model"] == "second"
    assert not (out / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["report"]


# ------------------------------------------------------------------------ output path checks


def test_output_dir_parent_is_file(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a regular file")
    target = blocker / "report"
    with pytest.raises(ValueError, match=re.escape(str(target))):
        report.check_output_dir(target)
    with pytest.raises(ValueError, match="is a file, not a directory"):
        report.write_report(make_analysis(), blocker / "sub" / "report", draw=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker"]
    assert blocker.read_text() == "a regular file"


def test_output_dir_unwritable(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("permission bits do not restrict this user (running as root)")
        target = locked / "report"
        with pytest.raises(ValueError, match=re.escape(str(target))) as info:
            report.write_report(make_analysis(), target, draw=False)
        assert "not writable" in str(info.value)
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)


def test_output_dir_is_file(tmp_path):
    target = tmp_path / "report"
    target.write_text("not a directory")
    with pytest.raises(ValueError, match="exists and is not a directory"):
        report.write_report(make_analysis(), target, draw=False)
    assert target.read_text() == "not a directory"


def test_output_dir_unrelated_directory(tmp_path):
    target = tmp_path / "notes"
    target.mkdir()
    (target / "keep.txt").write_text("user data")
    with pytest.raises(ValueError, match="without metrics.json"):
        report.write_report(make_analysis(), target, draw=False)
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    assert hidden_entries(tmp_path) == []


def test_output_dir_creates_parent(tmp_path):
    target = tmp_path / "runs" / "nested" / "report"
    assert report.check_output_dir(target) == target
    assert target.parent.is_dir()
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_report_shape_mismatch(tmp_path):
    analysis = make_analysis()
    analysis.temporal.psd["rot_k"] = analysis.temporal.psd["rot_k"][:, :2]
    with pytest.raises(ValueError, match=r"temporal\.psd\['rot_k'\] has shape \(2, 2, 17\)"):
        report.write_report(analysis, tmp_path / "report", draw=False)
    assert list(tmp_path.iterdir()) == []
