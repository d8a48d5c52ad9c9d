"""RoPE placement audit on real bridges: attached shears and Momentum Attention models."""

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from spectral_forensics.audit import audit_rope_placement, random_windows
from spectral_forensics.models import LoadedModel, bridge_from_hf
from spectral_forensics.momentum.modeling import MomentumConfig, MomentumForCausalLM
from spectral_forensics.rope import rope_spec_from_config

# rope_theta = 100 spreads the 8 bands of a 16-dimensional head from 1 down to 0.0056 rad/token,
# so the pre-RoPE shift is large in the fast bands and negligible in the slow ones.
COMMON = dict(
    vocab_size=101, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, rope_theta=100.0, max_position_embeddings=512,
)


def loaded_llama():
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**COMMON)).eval()
    return LoadedModel(bridge_from_hf(model), None, rope_spec_from_config(model.config), "llama")


def loaded_momentum(placement, gamma=2.0):
    torch.manual_seed(0)
    config = MomentumConfig(**COMMON, gamma=gamma, placement=placement, attention_only=True)
    model = MomentumForCausalLM(config).eval()
    return LoadedModel(bridge_from_hf(model), None, rope_spec_from_config(config), placement)


WINDOWS = random_windows(101, 8, 256, seed=1)


def test_attached_shears_are_told_apart():
    audit = audit_rope_placement(loaded_llama(), WINDOWS, gamma=2.0, progress=False)
    post, pre = audit.measurements
    assert post.label == "attached post_rope"
    assert np.all(post.verdict == "post_rope")
    assert np.all(pre.verdict == "pre_rope")
    assert np.all(post.r > 0.99)
    assert np.all(pre.r < post.r - 0.1)
    # The measured per-band distance from the post-RoPE closed form is 2γ|sin(θ_i/2)| before
    # RoPE and zero after it.
    expected = audit.expected_mismatch
    np.testing.assert_allclose(pre.mismatch, expected, atol=0.05 * expected.max())
    assert np.nanmax(post.mismatch) < 0.05 * expected.max()


@pytest.mark.parametrize("placement", ["post_rope", "pre_rope"])
def test_native_momentum_model_placement(placement):
    audit = audit_rope_placement(loaded_momentum(placement), WINDOWS, progress=False)
    (measurement,) = audit.measurements
    assert audit.native_placement == placement
    assert np.all(measurement.verdict == placement)
    np.testing.assert_allclose(audit.gamma, 2.0)


def test_plain_model_needs_gamma():
    with pytest.raises(ValueError, match="--gamma"):
        audit_rope_placement(loaded_llama(), WINDOWS, progress=False)


def test_model_without_rope_rejected():
    config = GPT2Config(vocab_size=101, n_embd=32, n_layer=1, n_head=2, n_positions=256)
    model = GPT2LMHeadModel(config).eval()
    loaded = LoadedModel(bridge_from_hf(model), None, rope_spec_from_config(config), "gpt2")
    with pytest.raises(ValueError, match="rotary position embeddings"):
        audit_rope_placement(loaded, WINDOWS, gamma=1.0, progress=False)


def test_windows_shorter_than_segment_rejected():
    with pytest.raises(ValueError, match="nperseg=128"):
        audit_rope_placement(loaded_llama(), WINDOWS[:, :64], gamma=1.0, nperseg=128, progress=False)


@pytest.mark.slow
def test_notebook_03_executes():
    from conftest import execute_notebook

    notebook = execute_notebook(
        "03_rope_placement_audit.ipynb", {"SF_NB_TOKENS": "512", "SF_NB_LAYERS": "0,29"}
    )
    text = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.outputs)
    assert "built post_rope -> verdicts ['post_rope']" in text
    assert "built pre_rope  -> verdicts ['pre_rope']" in text


def test_audit_of_training_run_reports_both_accuracies(tmp_path, capsys):
    from spectral_forensics.cli import main
    from spectral_forensics.evaluate import evaluate_run
    from spectral_forensics.train import TrainConfig, train

    run_dir = tmp_path / "run"
    train(TrainConfig(task="induction", seq_len=64, vocab_size=64, layers=1, d_model=32, heads=2,
                      gamma=2.0, placement="pre_rope", steps=8, batch_size=8, eval_every=4,
                      eval_batches=1, out_dir=str(run_dir)), progress=False)
    status = main(["audit-rope", "--model", str(run_dir), "--tokens", "256", "--window", "64",
                   "--nperseg", "32", "--quiet", "--no-plots", "--out", str(tmp_path / "audit")])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "task accuracy with the shear at each placement" in captured.out
    import json

    payload = json.loads((tmp_path / "audit" / "metrics.json").read_text())
    accuracies = payload["settings"]["task_accuracy"]
    assert set(accuracies) == {"post_rope", "pre_rope"}
    expected = evaluate_run(run_dir, write=False)["eval"]["accuracy"]
    assert accuracies["pre_rope"] == pytest.approx(expected)
    assert payload["summary"]["native pre_rope"]["accuracy"] == pytest.approx(expected)


def _shared_pass(loaded, windows, **kwargs):
    from spectral_forensics.analysis import analyse
    from spectral_forensics.audit import SharedPassAudit

    audit = SharedPassAudit(loaded, list(range(loaded.rope.n_layers)), nperseg=64, n_windows=2, **kwargs)
    analyse(loaded, None, windows=windows, nperseg=64, observers=audit.observers(), progress=False)
    return audit.result()


@pytest.mark.parametrize("placement", ["post_rope", "pre_rope"])
def test_shared_pass_native_equals_own_passes(placement):
    loaded = loaded_momentum(placement)
    shared = _shared_pass(loaded, WINDOWS)
    own = audit_rope_placement(loaded, WINDOWS[:2], nperseg=64, progress=False)
    assert shared.settings["n_windows"] == 2
    assert shared.settings["window"] == 256
    (a,), (b,) = shared.measurements, own.measurements
    assert a.label == f"native {placement}"
    assert b.label == a.label
    np.testing.assert_allclose(a.h, b.h, rtol=1e-9, atol=1e-12)
    assert list(a.verdict.ravel()) == [placement] * a.verdict.size
    assert list(b.verdict.ravel()) == list(a.verdict.ravel())


def test_shared_pass_attached_leaves_model_unchanged():
    loaded = loaded_llama()
    with torch.no_grad():
        before = loaded.bridge(WINDOWS[:1], return_type="logits")
    shared = _shared_pass(loaded, WINDOWS, gamma=2.0)
    own = audit_rope_placement(loaded, WINDOWS[:2], gamma=2.0, nperseg=64, progress=False)
    # Layer 1's keys differ a little between the two: the attached shear of layer 0 changes
    # what layer 1 reads, and copies of the keys do not.
    for a, b in zip(shared.measurements, own.measurements, strict=True):
        assert a.label == b.label
        assert list(a.verdict.ravel()) == list(b.verdict.ravel())
        np.testing.assert_allclose(a.r[0], b.r[0], atol=1e-6)
        np.testing.assert_allclose(a.r, b.r, atol=0.01)
    np.testing.assert_allclose(shared.measurements[1].mismatch, shared.expected_mismatch,
                               atol=0.05 * shared.expected_mismatch.max())
    with torch.no_grad():
        after = loaded.bridge(WINDOWS[:1], return_type="logits")
    assert torch.equal(before, after)


def test_shared_pass_audit_without_pass_raises():
    from spectral_forensics.audit import SharedPassAudit

    audit = SharedPassAudit(loaded_llama(), [0, 1], gamma=1.0)
    with pytest.raises(RuntimeError, match="read no keys"):
        audit.result()
