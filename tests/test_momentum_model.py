"""Tests of MomentumConfig and MomentumForCausalLM: configuration, forward pass, checkpoints."""

import json
import os

import pytest
import torch
from torch.nn import functional as F
from transformers import AutoConfig, AutoModelForCausalLM

from spectral_forensics.momentum.modeling import (
    CheckpointMismatchError,
    MomentumConfig,
    MomentumForCausalLM,
    apply_rotary,
    expand_gamma,
)
from spectral_forensics.momentum.operator import momentum_shear

VOCAB = 40


def tiny_config(**overrides):
    settings = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=32,
        initializer_range=0.2,
        gamma=1.5,
    )
    settings.update(overrides)
    return MomentumConfig(**settings)


def tiny_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return MomentumForCausalLM(tiny_config(**overrides)).eval()


def tokens(batch=2, n_pos=10, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, n_pos), generator=generator)


def test_config_defaults_and_model_type():
    config = tiny_config(num_key_value_heads=None)
    assert config.model_type == "momentum"
    assert config.num_key_value_heads == 4
    assert config.head_dim == 8
    assert config.use_cache is False
    assert config.gamma_table() == [[1.5] * 4, [1.5] * 4]


def test_expand_gamma_forms():
    assert expand_gamma(2.0, 2, 2) == [[2.0, 2.0], [2.0, 2.0]]
    assert expand_gamma([0.0, 3.0], 2, 2) == [[0.0, 0.0], [3.0, 3.0]]
    assert expand_gamma([[1.0, 2.0], 0.5], 2, 2) == [[1.0, 2.0], [0.5, 0.5]]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"placement": "after_rope"}, "placement"),
        ({"gamma": -1.0}, "finite and >= 0"),
        ({"gamma": float("nan")}, "finite and >= 0"),
        ({"gamma": [1.0, 2.0, 3.0]}, "one per layer"),
        ({"gamma": [[1.0, 2.0], 1.0]}, r"gamma\[0\]"),
        ({"num_key_value_heads": 3}, "num_key_value_heads"),
        ({"num_key_value_heads": 2, "gamma": [[1.0, 2.0, 2.0, 2.0], 1.0]}, "share key/value head"),
        ({"head_dim": 7}, "head_dim"),
        ({"hidden_size": 0}, "hidden_size"),
        ({"max_position_embeddings": -4}, "max_position_embeddings"),
        ({"rope_theta": float("inf")}, "rope_theta"),
        ({"attention_dropout": 1.5}, "attention_dropout"),
    ],
)
def test_config_invalid_values_raise(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


def test_forward_shapes_and_loss():
    model = tiny_model()
    ids = tokens()
    output = model(ids, labels=ids)
    assert output.logits.shape == (2, 10, VOCAB)
    expected = F.cross_entropy(output.logits[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1))
    assert torch.allclose(output.loss, expected)


def test_gamma_zero_equals_no_momentum():
    ids = tokens()
    baseline = tiny_model(placement="none", gamma=0.0)
    for placement in ("post_rope", "pre_rope"):
        model = tiny_model(placement=placement, gamma=0.0)
        model.load_state_dict(baseline.state_dict())
        assert torch.equal(model(ids).logits, baseline(ids).logits)


def test_placements_differ_for_positive_gamma():
    ids = tokens()
    models = {p: tiny_model(placement=p, gamma=2.0) for p in ("post_rope", "pre_rope", "none")}
    logits = {p: m(ids).logits for p, m in models.items()}
    assert (logits["post_rope"] - logits["none"]).abs().max() > 1e-3
    assert (logits["pre_rope"] - logits["none"]).abs().max() > 1e-3
    assert (logits["post_rope"] - logits["pre_rope"]).abs().max() > 1e-3


def _layer_queries_keys(model, hidden, position_ids):
    """Return the projected (batch, head, pos, d_head) queries and keys and the RoPE tables."""
    attention = model.model.layers[0].self_attn
    batch, n_pos, _ = hidden.shape
    query = attention.q_proj(hidden).view(batch, n_pos, -1, 8).transpose(1, 2)
    key = attention.k_proj(hidden).view(batch, n_pos, -1, 8).transpose(1, 2)
    cos, sin = model.model.rotary_emb(hidden, position_ids)
    return attention, query, key, cos, sin


@pytest.mark.parametrize("placement", ["post_rope", "pre_rope"])
def test_attention_scores_use_placement(placement):
    gamma = [[0.5, 0.5, 3.0, 3.0], 1.0]
    model = tiny_model(placement=placement, gamma=gamma, num_key_value_heads=2)
    hidden = torch.randn(1, 6, 32)
    positions = torch.arange(6)[None]
    attention, query, key, cos, sin = _layer_queries_keys(model, hidden, positions)
    gamma_q = torch.tensor([0.5, 0.5, 3.0, 3.0])[:, None, None]
    gamma_k = torch.tensor([0.5, 3.0])[:, None, None]
    if placement == "pre_rope":
        query = apply_rotary(momentum_shear(query, gamma_q, dim=2), cos, sin)
        key = apply_rotary(momentum_shear(key, gamma_k, dim=2), cos, sin)
    else:
        query = momentum_shear(apply_rotary(query, cos, sin), gamma_q, dim=2)
        key = momentum_shear(apply_rotary(key, cos, sin), gamma_k, dim=2)
    key = key.repeat_interleave(2, dim=1)
    scores = query @ key.transpose(-1, -2) / 8**0.5
    causal = torch.ones(6, 6, dtype=torch.bool).tril()
    expected = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)
    _, pattern = attention(hidden, (cos, sin), attention_mask=causal[None, None])
    assert torch.allclose(pattern, expected, atol=1e-6)


def test_document_ids_isolate_documents():
    model = tiny_model(gamma=3.0)
    first, second = tokens(1, 4, seed=2), tokens(1, 6, seed=3)
    packed = torch.cat([first, second], dim=1)
    document_ids = torch.tensor([[0] * 4 + [1] * 6])
    packed_logits = model(packed, document_ids=document_ids).logits
    alone_logits = model(second).logits
    # RoPE scores depend only on position differences, so the shifted positions do not matter.
    assert torch.allclose(packed_logits[:, 4:], alone_logits, atol=1e-5)
    leaky = model(packed).logits
    assert (leaky[:, 4:] - alone_logits).abs().max() > 1e-3


def test_left_padding_matches_unpadded():
    model = tiny_model(gamma=2.0)
    ids = tokens(1, 6)
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], dim=1)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 1]])
    logits = model(padded, attention_mask=mask).logits[:, 3:]
    assert torch.allclose(logits, model(ids).logits, atol=1e-5)


def test_attention_only_drops_mlp():
    model = tiny_model(attention_only=True)
    names = [name for name, _ in model.named_parameters()]
    assert not any(".mlp." in name for name in names)
    assert not any("post_attention_layernorm" in name for name in names)
    assert model(tokens()).logits.shape == (2, 10, VOCAB)


def test_learned_gamma_positive_and_trainable():
    model = tiny_model(learn_gamma=True, gamma=[0.0, [0.5, 0.5, 2.0, 2.0]], num_key_value_heads=2)
    gammas = model.momentum_gammas()
    assert gammas.shape == (2, 4)
    assert torch.allclose(gammas[1], torch.tensor([0.5, 0.5, 2.0, 2.0]), atol=1e-6)
    assert (gammas[0] > 0).all()
    assert (gammas[0] < 1e-8).all()
    raw = model.model.layers[1].self_attn.gamma_raw
    assert raw.shape == (2,)
    ids = tokens()
    model(ids, labels=ids).loss.backward()
    assert raw.grad is not None
    assert raw.grad.abs().sum() > 0


def test_fixed_gamma_is_buffer_not_weight():
    model = tiny_model(gamma=2.0)
    assert "model.layers.0.self_attn.gamma" not in model.state_dict()
    assert not any("gamma" in name for name, _ in model.named_parameters())


def test_save_load_round_trip(tmp_path):
    model = tiny_model(num_key_value_heads=2, placement="pre_rope")
    model.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").is_file()
    assert (tmp_path / "model.safetensors").is_file()
    ids = tokens()
    loaded = MomentumForCausalLM.from_pretrained(tmp_path).eval()
    assert torch.equal(loaded(ids).logits, model(ids).logits)
    auto = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(auto, MomentumForCausalLM)
    assert AutoConfig.from_pretrained(tmp_path).placement == "pre_rope"


def test_save_learned_gamma_writes_config(tmp_path):
    model = tiny_model(learn_gamma=True, gamma=1.0)
    with torch.no_grad():
        model.model.layers[0].self_attn.gamma_raw.add_(1.0)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["gamma"][0][0] == pytest.approx(model.momentum_gammas()[0, 0].item(), rel=1e-6)
    loaded = MomentumForCausalLM.from_pretrained(tmp_path)
    assert torch.allclose(loaded.momentum_gammas(), model.momentum_gammas())


def test_corrupted_safetensors_raises(tmp_path):
    tiny_model().save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointMismatchError, match="model.safetensors") as caught:
        MomentumForCausalLM.from_pretrained(tmp_path)
    assert "corrupted" in str(caught.value)
    weights.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointMismatchError, match="re-save"):
        AutoModelForCausalLM.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"num_key_value_heads": 2}, "shape mismatches"),
        ({"attention_only": True}, "unexpected tensors"),
        ({"learn_gamma": True}, "missing tensors"),
        ({"hidden_size": 64}, "shape mismatches"),
    ],
)
def test_mismatched_config_raises(tmp_path, change, message):
    tiny_model().save_pretrained(tmp_path)
    config_path = tmp_path / "config.json"
    saved = json.loads(config_path.read_text())
    saved.update(change)
    config_path.write_text(json.dumps(saved))
    with pytest.raises(CheckpointMismatchError, match=message) as caught:
        MomentumForCausalLM.from_pretrained(tmp_path)
    assert os.fspath(tmp_path / "config.json") in str(caught.value)


def test_greedy_generate_matches_argmax_loop():
    model = tiny_model(gamma=2.0)
    prompt = tokens(1, 4)
    generated = model.generate(prompt, max_new_tokens=5, do_sample=False, pad_token_id=0)
    sequence = prompt
    for _ in range(5):
        next_token = model(sequence).logits[:, -1].argmax(-1, keepdim=True)
        sequence = torch.cat([sequence, next_token], dim=1)
    assert torch.equal(generated, sequence)


def test_cache_argument_rejected():
    model = tiny_model()
    with pytest.raises(ValueError, match="no key/value cache"):
        model(tokens(), past_key_values=object())


def test_sequence_longer_than_limit_raises():
    model = tiny_model(max_position_embeddings=8)
    with pytest.raises(ValueError, match="max_position_embeddings=8"):
        model(tokens(1, 9))


def test_smeared_keys_mix_previous_key():
    model = tiny_model(placement="none", smear_keys=True, num_key_value_heads=2)
    attention = model.model.layers[0].self_attn
    with torch.no_grad():
        attention.smear_alpha.copy_(torch.tensor([0.0, 2.0]))
    hidden = torch.randn(1, 6, 32)
    positions = torch.arange(6)[None]
    _, query, key, cos, sin = _layer_queries_keys(model, hidden, positions)
    keep = torch.sigmoid(torch.tensor([0.0, 2.0]))[:, None, None]
    smeared = key.clone()
    smeared[:, :, 1:] = keep * key[:, :, 1:] + (1 - keep) * key[:, :, :-1]
    key = apply_rotary(smeared, cos, sin).repeat_interleave(2, dim=1)
    query = apply_rotary(query, cos, sin)
    scores = query @ key.transpose(-1, -2) / 8**0.5
    causal = torch.ones(6, 6, dtype=torch.bool).tril()
    expected = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)
    _, pattern = attention(hidden, (cos, sin), attention_mask=causal[None, None])
    assert torch.allclose(pattern, expected, atol=1e-6)


def test_smeared_keys_train_and_round_trip(tmp_path):
    model = tiny_model(placement="none", smear_keys=True).train()
    ids = tokens()
    model(ids, labels=ids).loss.backward()
    assert all(layer.self_attn.smear_alpha.grad.abs().sum() > 0 for layer in model.model.layers)
    with torch.no_grad():
        model.model.layers[0].self_attn.smear_alpha.fill_(1.25)
    model.eval().save_pretrained(tmp_path)
    loaded = MomentumForCausalLM.from_pretrained(tmp_path).eval()
    assert torch.equal(loaded.model.layers[0].self_attn.smear_alpha, model.model.layers[0].self_attn.smear_alpha)
    assert torch.allclose(loaded(ids).logits, model(ids).logits)


def test_bridge_refuses_smeared_keys(tmp_path):
    from spectral_forensics.models import load_model

    tiny_model(placement="none", smear_keys=True).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="smear_keys=True"):
        load_model(tmp_path)
