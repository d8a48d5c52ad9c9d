"""The bode pipeline end to end on the real SmolLM2-135M-Instruct reading Shakespeare."""

import csv
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from spectral_forensics.analysis import analyse
from spectral_forensics.cli import main
from spectral_forensics.report import write_report

from conftest import REPO, execute_notebook

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def small_analysis(smollm2):
    return analyse(smollm2, layers=[0, 29], tokens=512, window=256, nperseg=64, progress=False)


def test_rope_layout_of_smollm2(smollm2):
    rope = smollm2.rope
    assert (rope.n_layers, rope.n_heads, rope.n_kv_heads, rope.head_dim) == (30, 9, 3, 64)
    assert rope.base == 100000.0
    assert rope.pairing == "rotate_half"
    inv_freq = smollm2.hf_model.model.rotary_emb.inv_freq.double().numpy()
    np.testing.assert_allclose(rope.theta, inv_freq, rtol=1e-6)


def test_analysis_shapes_and_finite(small_analysis):
    a = small_analysis
    assert a.n_tokens == 512
    assert a.bands.cross.shape == (2, 9, 32)
    assert np.all(np.isfinite(a.bands.cross))
    assert np.all((a.bands.dc_fraction >= 0) & (a.bands.dc_fraction <= 1))
    for stage in ("rot_q", "rot_k"):
        assert a.temporal.psd[stage].shape == (2, 9, 33)
        assert np.all(np.isfinite(a.temporal.psd[stage]))
    # Query heads 0-2 share key/value head 0, so their key spectra are identical.
    np.testing.assert_array_equal(a.temporal.psd["rot_k"][:, 0], a.temporal.psd["rot_k"][:, 2])
    # The DC/AC split follows the wavelengths against the 256-token window.
    np.testing.assert_array_equal(a.bands.dc_mask, 2 * np.pi / a.bands.theta > 256)


def test_report_files_and_records(small_analysis, tmp_path):
    out = write_report(small_analysis, tmp_path / "report", workers=1)
    for name in ("index.html", "metrics.json", "metrics.csv", "bode.html"):
        assert (out / name).is_file(), name
    for layer in (0, 29):
        for head in range(9):
            assert (out / "bode" / f"L{layer}H{head}.png").is_file()
    payload = json.loads((out / "metrics.json").read_text())
    records = payload["heads"]
    for layer in (0, 29):
        assert len([r for r in records if r["layer"] == layer]) == 9
    for record in records:
        for key, value in record.items():
            if isinstance(value, float):
                assert math.isfinite(value), (record["layer"], record["head"], key)
    with open(out / "metrics.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 18


def run_cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "spectral_forensics", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )


def test_cli_bode_end_to_end(tmp_path):
    result = run_cli(
        "bode", "--layers", "0,1", "--heads", "0-2", "--tokens", "256", "--window", "128",
        "--nperseg", "32", "--workers", "1", "--quiet", "--out", "rep", cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "report:" in result.stdout
    assert str(tmp_path / "rep" / "index.html") in result.stdout
    assert sorted(p.name for p in (tmp_path / "rep" / "bode").iterdir()) == [
        f"L{layer}H{head}.png" for layer in (0, 1) for head in (0, 1, 2)
    ]


def test_cli_info():
    result = run_cli("info", "--json", cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    info = json.loads(result.stdout)
    assert info["n_layers"] == 30
    assert info["n_kv_heads"] == 3
    assert info["base"] == 100000.0
    assert info["dc_bands"] + info["ac_bands"] == 32


@pytest.mark.parametrize(
    "args, message",
    [
        (["--layers", "0,30"], "valid are 0-29"),
        (["--heads", "9"], "valid are 0-8"),
        (["--model", "missing/model.gguf"], "does not exist"),
        (["--text", "missing.txt"], "was not found"),
        (["--text", "short.txt"], "fewer than the 128 needed"),
        (["--text", "latin1.txt"], "not valid UTF-8"),
        (["--nperseg", "256"], "nperseg=256"),
        (["--out", "blocker/report"], "blocker"),
    ],
)
def test_cli_bad_input_leaves_no_report(tmp_path, monkeypatch, capsys, args, message):
    (tmp_path / "short.txt").write_text("To be, or not to be.", encoding="utf-8")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 ".encode("latin-1") * 200)
    (tmp_path / "blocker").write_text("a file where a directory should be")
    base = ["bode", "--layers", "0", "--tokens", "128", "--window", "128", "--nperseg", "32", "--quiet"]
    if "--out" not in args:
        base += ["--out", "rep"]
    monkeypatch.chdir(tmp_path)
    status = main([*base, *args])
    captured = capsys.readouterr()
    assert status == 2, captured.out + captured.err
    assert message in captured.err
    assert not (tmp_path / "rep").exists()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".rep")]
    assert leftovers == []


def test_notebook_01_executes():
    notebook = execute_notebook(
        "01_bode_plots_per_head.ipynb",
        {"SF_NB_TOKENS": "256", "SF_NB_WINDOW": "128", "SF_NB_LAYERS": "0,29"},
    )
    outputs = "".join(
        out.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs
    )
    assert "mean DC fraction" in outputs
