"""Measured transfer functions between hook stages of a real Momentum Attention bridge."""

import numpy as np
import pytest
import torch

from spectral_forensics.analysis import head_gammas, measured_transfer_result
from spectral_forensics.extract import StreamingExtractor
from spectral_forensics.models import LoadedModel, bridge_from_hf
from spectral_forensics.momentum.modeling import MomentumConfig, MomentumForCausalLM
from spectral_forensics.rope import rope_spec_from_config
from spectral_forensics.spectral.transfer import magnitude_db


def momentum_bridge(gamma, placement="post_rope"):
    torch.manual_seed(0)
    config = MomentumConfig(
        vocab_size=101,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        gamma=gamma,
        placement=placement,
        attention_only=True,
    )
    model = MomentumForCausalLM(config).eval()
    return LoadedModel(bridge_from_hf(model), None, rope_spec_from_config(config), "momentum")


def measure(loaded, pair=("rot_k", "mom_k"), windows=8, length=256):
    heads = list(range(loaded.rope.n_heads))
    layers = list(range(loaded.rope.n_layers))
    extractor = StreamingExtractor(
        loaded.bridge, loaded.rope, layers, heads, bands=False, temporal_stages=(),
        nperseg=64, transfer_pairs=(pair,),
    )
    tokens = torch.randint(0, 101, (windows, length), generator=torch.Generator().manual_seed(3))
    stats = extractor.run(tokens, batch_size=4, progress=False)
    return measured_transfer_result(stats, pair, head_gammas(loaded, layers, heads, 0.0))


def test_post_rope_transfer_matches_closed_form():
    result = measure(momentum_bridge([[1.0, 1.0, 3.0, 3.0], [0.5, 0.5, 2.0, 2.0]]))
    np.testing.assert_allclose(result.gamma, [[1.0, 1.0, 3.0, 3.0], [0.5, 0.5, 2.0, 2.0]])
    coherent = result.coherence >= 0.99
    assert coherent.mean() > 0.9
    deviation = np.abs(magnitude_db(result.h) - magnitude_db(result.theory))
    assert deviation[coherent].max() < 0.1
    assert np.all(result.r >= 0.99)
    assert np.all(result.max_dev_db < 0.1)


def test_query_stage_pair_per_head():
    result = measure(momentum_bridge(2.0), pair=("rot_q", "mom_q"))
    assert result.h.shape == (2, 4, 33)
    assert np.all(result.r >= 0.99)


def test_pair_of_different_heads_rejected():
    loaded = momentum_bridge(1.0)
    with pytest.raises(ValueError, match="rot_q:mom_k"):
        StreamingExtractor(loaded.bridge, loaded.rope, [0], [0], transfer_pairs=(("rot_q", "mom_k"),))


def test_momentum_stage_missing_on_plain_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(
        LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                    num_attention_heads=2)
    ).eval()
    bridge = bridge_from_hf(model)
    with pytest.raises(ValueError, match="attach_momentum"):
        StreamingExtractor(bridge, rope_spec_from_config(model.config), [0], [0],
                           transfer_pairs=(("rot_k", "mom_k"),))


def test_bode_plot_overlays_measured_transfer():
    from spectral_forensics.analysis import analyse
    from spectral_forensics.audit import random_windows
    from spectral_forensics.plots.bode import plot_head_bode

    loaded = momentum_bridge([[1.0, 1.0, 3.0, 3.0], [0.5, 0.5, 2.0, 2.0]])
    analysis = analyse(loaded, None, windows=random_windows(101, 4, 128), nperseg=32,
                       transfer_pairs=[("rot_k", "mom_k")], progress=False)
    figure = plot_head_bode(analysis, layer=1, head=2)
    labels = [line.get_label() for ax in figure.axes for line in ax.get_lines()]
    assert any(label.startswith("measured H rot_k:mom_k") for label in labels)
    assert "closed form for rot_k:mom_k" in labels
    record = analysis.records()[6]
    assert record["transfer_gamma_rot_k_mom_k"] == 2.0
    assert record["transfer_r_rot_k_mom_k"] > 0.99
