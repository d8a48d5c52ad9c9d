"""The report, induction and bode commands on a saved tokenizer-less Momentum Attention checkpoint."""

import json

import pytest
import torch

from spectral_forensics.cli import main
from spectral_forensics.momentum.modeling import MomentumConfig, MomentumForCausalLM


def save_momentum(path, placement="post_rope", vocab=101, gamma=2.0):
    torch.manual_seed(0)
    config = MomentumConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, rope_theta=100.0,
        max_position_embeddings=512, gamma=gamma, placement=placement, attention_only=True,
    )
    MomentumForCausalLM(config).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_momentum(tmp_path_factory.mktemp("ckpt") / "momentum")


def test_report_joins_every_measurement(checkpoint, tmp_path, capsys):
    status = main([
        "report", "--model", str(checkpoint), "--tokens", "512", "--window", "128",
        "--nperseg", "32", "--workers", "1", "--quiet", "--out", str(tmp_path / "rep"),
    ])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    payload = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    records = payload["records"]
    assert len(records) == 8
    first = records[0]
    for key in ("band_dc_fraction", "transfer_r_rot_k_mom_k", "overlap_post_rope",
                "induction_score", "audit_verdict_native_post_rope", "class"):
        assert key in first, key
    assert all(r["audit_verdict_native_post_rope"] == "post_rope" for r in records)
    assert all(r["transfer_r_rot_k_mom_k"] > 0.99 for r in records)
    assert payload["thresholds"]["induction"] == 0.4
    for name in ("index.html", "metrics.csv", "scores.png", "bode.html"):
        assert (tmp_path / "rep" / name).is_file(), name
    assert "Classified 8 heads" in captured.out
    page = (tmp_path / "rep" / "index.html").read_text()
    assert "The audit read 1 window(s) of 128 tokens" in page
    assert "r depends on the RoPE frequencies" in page


def test_bode_measures_stage_transfer(checkpoint, tmp_path, capsys):
    status = main([
        "bode", "--model", str(checkpoint), "--stages", "rot_k:mom_k", "--tokens", "256",
        "--window", "128", "--nperseg", "32", "--no-plots", "--quiet", "--out", str(tmp_path / "b"),
    ])
    captured = capsys.readouterr()
    # Tokenizer-less checkpoints cannot read text; the error states this before anything is written.
    assert status == 2
    assert "no tokenizer" in captured.err
    assert not (tmp_path / "b").exists()


def test_induction_scores_command(checkpoint, tmp_path, capsys):
    status = main(["induction", "--model", str(checkpoint), "--batch", "8", "--quiet",
                   "--out", str(tmp_path / "s")])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    records = json.loads((tmp_path / "s" / "metrics.json").read_text())["records"]
    assert len(records) == 8
    assert "strongest induction head" in captured.out


def test_induction_vocabulary_too_small(tmp_path, capsys):
    tiny = save_momentum(tmp_path / "tiny", vocab=12)
    status = main(["induction", "--model", str(tiny), "--quiet", "--out", str(tmp_path / "s")])
    captured = capsys.readouterr()
    assert status == 2
    assert "vocab" in captured.err
    assert not (tmp_path / "s").exists()


def test_report_on_model_without_momentum_stage(tmp_path, capsys):
    plain = save_momentum(tmp_path / "plain", placement="none")
    status = main(["audit-rope", "--model", str(plain), "--tokens", "256", "--window", "128",
                   "--quiet", "--out", str(tmp_path / "a")])
    captured = capsys.readouterr()
    assert status == 2
    assert "placement='none'" in captured.err
    assert not (tmp_path / "a").exists()


@pytest.mark.slow
def test_notebook_04_executes():
    from conftest import execute_notebook

    notebook = execute_notebook("04_head_forensics.ipynb", {"SF_NB_TOKENS": "512", "SF_NB_LAYERS": "0,29"})
    text = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.outputs)
    assert "mean overlap post-RoPE" in text
    assert "induction" in text
