"""DC/AC orthogonality measures: closed forms, planted signals and the placement split."""

import doctest
import math

import numpy as np
import pytest
import torch
from transformers import LlamaConfig

import spectral_forensics.metrics.orthogonality as orthogonality_module
from spectral_forensics.metrics.orthogonality import (
    band_separation,
    orthogonality,
    spectral_overlap,
    split_semantic_mechanistic,
    time_cosine,
)
from spectral_forensics.momentum.operator import momentum_shear
from spectral_forensics.rope import rope_spec_from_config, rotate
from spectral_forensics.spectral.temporal import welch_psd


def _rope_spec(head_dim=16, base=10000.0):
    config = LlamaConfig(
        vocab_size=10,
        hidden_size=2 * head_dim,
        num_attention_heads=2,
        num_hidden_layers=1,
        rope_theta=base,
    )
    return rope_spec_from_config(config)


def _slow_complex_content(rng, theta, shape=(2, 1024, 2), slow=2 * np.pi / 128):
    """Pre-RoPE vectors whose band i is A_i e^{j(ω0 t + φ)}: one slow line per band.

    Returns the (batch, pos, head, d_head) array in rotate-half layout and the amplitudes A
    of shape (head, n_bands).
    """
    batch, n_pos, n_heads = shape
    n_bands = theta.size
    t = np.arange(n_pos)[None, :, None, None]
    amplitude = rng.uniform(0.5, 1.5, size=(n_heads, n_bands))
    phase = rng.uniform(0, 2 * np.pi, size=(batch, 1, n_heads, n_bands))
    angle = slow * t + phase
    x = np.concatenate([amplitude * np.cos(angle), amplitude * np.sin(angle)], axis=-1)
    return x, amplitude


def test_doctests_pass():
    result = doctest.testmod(orthogonality_module)
    assert result.attempted > 0
    assert result.failed == 0


def test_overlap_closed_forms():
    rng = np.random.default_rng(0)
    spectrum = rng.uniform(0.1, 2.0, size=(3, 33))
    np.testing.assert_allclose(spectral_overlap(spectrum, spectrum), 1.0)
    np.testing.assert_allclose(spectral_overlap(spectrum, 7.5 * spectrum), 1.0)

    low = np.zeros(33)
    low[:10] = 1.0
    high = np.zeros(33)
    high[20:] = 4.0
    assert spectral_overlap(low, high) == 0.0

    # Half of the bins shared: Σ sqrt(1/2 · 1) over one bin of a two-bin spectrum.
    assert spectral_overlap(np.array([1.0, 1.0]), np.array([1.0, 0.0])) == pytest.approx(
        math.sqrt(0.5)
    )
    assert np.isnan(spectral_overlap(np.zeros(4), np.ones(4)))


def test_overlap_axis_and_torch_input():
    rng = np.random.default_rng(1)
    psd_s = rng.uniform(0, 1, size=(17, 4))
    psd_m = rng.uniform(0, 1, size=(17, 4))
    along_first = spectral_overlap(torch.from_numpy(psd_s), psd_m, axis=0)
    np.testing.assert_allclose(along_first, spectral_overlap(psd_s.T, psd_m.T))
    assert along_first.shape == (4,)
    assert np.all((along_first > 0) & (along_first < 1))


@pytest.mark.parametrize(
    "psd_s, psd_m, message",
    [
        (np.ones(4), np.ones(5), "same frequency grid"),
        (np.array([1.0, -0.5]), np.ones(2), "negative"),
        (np.ones(3, dtype=complex), np.ones(3), "complex"),
    ],
)
def test_overlap_rejects_invalid_spectra(psd_s, psd_m, message):
    with pytest.raises(ValueError, match=message):
        spectral_overlap(psd_s, psd_m)


def test_band_separation_planted_pair():
    rng = np.random.default_rng(2)
    t = np.arange(4096)
    phases = rng.uniform(0, 2 * np.pi, size=(2, 8, 1))
    slow = np.cos(0.1 * t + phases[0])
    fast = np.cos(2.5 * t + phases[1])
    freqs, psd_slow = welch_psd(slow, nperseg=128, average_axes=0)
    _, psd_fast = welch_psd(fast, nperseg=128, average_axes=0)

    separated = band_separation(freqs, psd_slow, psd_fast, cutoff=1.0)
    assert separated.semantic_low_share == pytest.approx(1.0, abs=1e-3)
    assert separated.mechanistic_high_share == pytest.approx(1.0, abs=1e-3)

    swapped = band_separation(freqs, psd_fast, psd_slow, cutoff=1.0)
    assert swapped.semantic_low_share == pytest.approx(0.0, abs=1e-3)
    assert swapped.mechanistic_high_share == pytest.approx(0.0, abs=1e-3)

    # 2 cos(0.1 t) + cos(2.5 t) puts 4 / 5 of its power below the cutoff.
    mixed = 2 * slow + fast
    _, psd_mixed = welch_psd(mixed, nperseg=128, average_axes=0)
    shares = band_separation(freqs, psd_mixed, psd_mixed, cutoff=1.0)
    assert shares.semantic_low_share == pytest.approx(0.8, abs=0.01)
    assert shares.mechanistic_high_share == pytest.approx(0.2, abs=0.01)


def test_band_separation_rejects_bad_cutoff():
    freqs = np.linspace(0, np.pi, 5)
    with pytest.raises(ValueError, match="cutoff=4"):
        band_separation(freqs, np.ones(5), np.ones(5), cutoff=4.0)


def test_time_cosine_closed_forms():
    t = np.arange(256)
    omega = 2 * np.pi * 8 / 256  # whole periods, so cos and sin are exactly orthogonal
    assert time_cosine(np.cos(omega * t), np.sin(omega * t)) == pytest.approx(0.0, abs=1e-12)
    assert time_cosine(np.cos(0.3 * t), np.cos(1.7 * t)) == pytest.approx(0.0, abs=0.02)
    assert time_cosine(np.cos(0.3 * t), 3 * np.cos(0.3 * t)) == pytest.approx(1.0)
    assert time_cosine(np.cos(0.3 * t), -np.cos(0.3 * t)) == pytest.approx(-1.0)
    assert np.isnan(time_cosine(np.ones(8), np.zeros(8)))
    # Complex inputs: Re<s, m> / (|s| |m|), here the cosine of a 60 degree phase offset.
    z = np.exp(1j * 0.4 * t)
    assert time_cosine(z, z * np.exp(1j * np.pi / 3)) == pytest.approx(0.5)


def test_time_cosine_flattens_channels_per_head():
    rng = np.random.default_rng(3)
    s = rng.standard_normal((2, 64, 3, 4))  # (batch, pos, head, d_head)
    m = rng.standard_normal((2, 64, 3, 4))
    result = time_cosine(s, m, axis=1, channel_axes=(0, 3))
    assert result.shape == (3,)
    for head in range(3):
        a, b = s[:, :, head].ravel(), m[:, :, head].ravel()
        assert result[head] == pytest.approx(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    with pytest.raises(ValueError, match="repeats an axis"):
        time_cosine(s, m, axis=1, channel_axes=(1,))


def test_split_sums_to_sheared_signal():
    spec = _rope_spec()
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 40, 2, 16))
    gamma = 0.7
    positions = np.arange(40)
    rotated = np.stack([rotate(x[b].transpose(1, 0, 2), positions, spec) for b in range(2)])
    rotated = rotated.transpose(0, 2, 1, 3)  # back to (batch, pos, head, d_head)

    s, m = split_semantic_mechanistic(rotated, gamma, "post_rope")
    sheared = momentum_shear(torch.from_numpy(rotated), gamma, dim=1)
    np.testing.assert_allclose((s + m).numpy(), sheared.numpy(), atol=1e-12)
    np.testing.assert_allclose(s.numpy(), rotated)

    s_pre, m_pre = split_semantic_mechanistic(
        x, gamma, "pre_rope", spec.theta, pairing=spec.pairing
    )
    sheared_pre = momentum_shear(torch.from_numpy(x), gamma, dim=1).numpy()
    rotated_shear = np.stack(
        [rotate(sheared_pre[b].transpose(1, 0, 2), positions, spec) for b in range(2)]
    ).transpose(0, 2, 1, 3)
    np.testing.assert_allclose((s_pre + m_pre).numpy(), rotated_shear, atol=1e-12)
    np.testing.assert_allclose(s_pre.numpy(), rotated, atol=1e-12)


def test_split_pre_rope_in_post_rope_frame():
    """Band i of the pre-RoPE momentum, seen post-RoPE, is γ (r_t - e^{jθ_i} r_{t-1})."""
    spec = _rope_spec()
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 30, 1, 16))
    gamma = 1.3
    s, m = split_semantic_mechanistic(x, gamma, "pre_rope", spec.theta)
    re, im = spec.band_dimensions()
    s_head, m_head = s.numpy()[0, :, 0], m.numpy()[0, :, 0]  # (pos, d_head)
    r = s_head[:, re] + 1j * s_head[:, im]
    m_band = m_head[:, re] + 1j * m_head[:, im]
    expected = gamma * (r[1:] - np.exp(1j * spec.theta) * r[:-1])
    np.testing.assert_allclose(m_band[1:], expected, atol=1e-12)
    np.testing.assert_allclose(m_band[0], 0.0)


def test_split_adjacent_pairs_and_partial_rotary():
    spec = _rope_spec(head_dim=16)
    theta = spec.theta[:4]  # 8 rotated dimensions, 8 unrotated
    rng = np.random.default_rng(6)
    x = rng.standard_normal((1, 20, 1, 16))
    s, m = split_semantic_mechanistic(x, 0.5, "pre_rope", theta, pairing="adjacent")
    angle = np.arange(20)[:, None] * theta
    z = x[0, :, 0, 0:8:2] + 1j * x[0, :, 0, 1:8:2]
    rotated = z * np.exp(1j * angle)
    np.testing.assert_allclose(s.numpy()[0, :, 0, 0:8:2], rotated.real, atol=1e-12)
    np.testing.assert_allclose(s.numpy()[0, :, 0, 1:8:2], rotated.imag, atol=1e-12)
    # Unrotated dimensions get the same momentum as under the post-RoPE placement.
    _, m_post = split_semantic_mechanistic(s.numpy(), 0.5, "post_rope")
    np.testing.assert_allclose(m.numpy()[..., 8:], m_post.numpy()[..., 8:], atol=1e-12)


def test_static_content_momentum_by_placement():
    """Static content: pre-RoPE momentum 0, post-RoPE momentum 2γ|sin(θ_i/2)||x| per band."""
    spec = _rope_spec()
    rng = np.random.default_rng(7)
    static = np.repeat(rng.standard_normal((1, 1, 2, 16)), 50, axis=1)
    gamma = 2.0
    _, m_pre = split_semantic_mechanistic(static, gamma, "pre_rope", spec.theta)
    assert np.abs(m_pre.numpy()).max() < 1e-12

    s, _ = split_semantic_mechanistic(static, gamma, "pre_rope", spec.theta)
    _, m_post = split_semantic_mechanistic(s.numpy(), gamma, "post_rope")
    re, im = spec.band_dimensions()
    m_tokens = m_post.numpy()[0, 1:]  # (pos - 1, head, d_head)
    magnitude = np.hypot(m_tokens[..., re], m_tokens[..., im])
    band_size = np.hypot(static[0, 0][:, re], static[0, 0][:, im])  # (head, band)
    expected = 2 * gamma * np.abs(np.sin(spec.theta / 2)) * band_size
    np.testing.assert_allclose(magnitude, np.broadcast_to(expected, magnitude.shape), rtol=1e-9)


def test_split_resets_momentum_at_document_starts():
    rng = np.random.default_rng(8)
    r = rng.standard_normal((2, 12, 1, 4))
    starts = torch.zeros((2, 12), dtype=torch.bool)
    starts[:, 0] = True
    starts[0, 5] = True
    starts[1, 8] = True
    _, m = split_semantic_mechanistic(r, 1.0, "post_rope", document_starts=starts)
    assert np.abs(m.numpy()[0, 5]).max() == 0
    assert np.abs(m.numpy()[1, 8]).max() == 0
    np.testing.assert_allclose(m.numpy()[0, 6], r[0, 6] - r[0, 5])


def test_planted_slow_content_overlaps_less_post_rope():
    """Slow pre-RoPE content: pre-RoPE m is a scaled copy of s, post-RoPE m favours fast bands.

    Band i of x is A_i e^{j(ω0 t + φ)}, so r_t puts a line of power A_i² at ω0 + θ_i. Pre-RoPE,
    m = γ (1 - e^{-jω0}) r scales every band alike: O = 1 and cos = sin(ω0 / 2). Post-RoPE,
    band i of m is scaled by |2 sin((ω0 + θ_i) / 2)|, so for resolved lines
    O = Σ_i sqrt(a_i b_i) with a_i ∝ A_i² and b_i ∝ A_i² 4 sin²((ω0 + θ_i) / 2).
    """
    spec = _rope_spec(base=10000.0)
    rng = np.random.default_rng(9)
    slow = 2 * np.pi / 128
    x, amplitude = _slow_complex_content(rng, spec.theta, slow=slow)
    s, _ = split_semantic_mechanistic(x, 1.0, "pre_rope", spec.theta)

    pre = orthogonality(x, 1.0, "pre_rope", spec.theta, nperseg=256)
    post = orthogonality(s.numpy(), 1.0, "post_rope", nperseg=256)
    assert np.all(post.overlap < pre.overlap - 0.2)
    np.testing.assert_allclose(pre.overlap, 1.0, atol=1e-3)

    power = amplitude**2
    weight = power * 4 * np.sin((slow + spec.theta) / 2) ** 2
    line_overlap = np.sqrt(
        power / power.sum(-1, keepdims=True) * weight / weight.sum(-1, keepdims=True)
    ).sum(-1)
    np.testing.assert_allclose(post.overlap, line_overlap, atol=0.01)

    np.testing.assert_allclose(pre.time_cosine, math.sin(slow / 2), atol=1e-3)
    expected_post_cosine = (power * (1 - np.cos(slow + spec.theta))).sum(-1) / np.sqrt(
        power.sum(-1) * weight.sum(-1)
    )
    np.testing.assert_allclose(post.time_cosine, expected_post_cosine, atol=1e-3)

    # The mechanistic part sits above 2π/16 more under the post-RoPE placement.
    assert np.all(post.mechanistic_high_share > pre.mechanistic_high_share)
    np.testing.assert_allclose(post.semantic_low_share, pre.semantic_low_share)


def test_static_content_with_noise_overlaps_less_pre_rope():
    """Static content plus fluctuations: pre-RoPE m contains only the fluctuations.

    The static part has no pre-RoPE momentum, so pre-RoPE m is the rotated momentum of a
    random walk and white noise, a broadband spectrum far from the slow lines of s. Post-RoPE m
    is the high-passed r, whose lines at θ_i coincide with those of s.
    """
    spec = _rope_spec(base=10000.0)
    rng = np.random.default_rng(11)
    shape = (4, 512, 2, 16)
    static = rng.standard_normal((4, 1, 2, 16))
    drift = 0.02 * np.cumsum(rng.standard_normal(shape), axis=1)
    x = static + drift + 0.05 * rng.standard_normal(shape)
    s, _ = split_semantic_mechanistic(x, 1.0, "pre_rope", spec.theta)

    pre = orthogonality(x, 1.0, "pre_rope", spec.theta)
    post = orthogonality(s.numpy(), 1.0, "post_rope")
    assert np.all(pre.overlap < post.overlap - 0.15)
    assert np.all(np.abs(pre.time_cosine) < np.abs(post.time_cosine))


def test_orthogonality_result_layout():
    rng = np.random.default_rng(10)
    r = torch.from_numpy(rng.standard_normal((2, 128, 3, 8))).float()
    r[:, :, 2] = r[:, :, 0]  # heads 0 and 2 see the same sequence with different γ
    result = orthogonality(r, [0.5, 0.0, 2.0], "post_rope", nperseg=32)
    assert result.overlap.shape == (3,)
    assert result.psd_semantic.shape == (3, 17)
    assert result.freqs.shape == (17,)
    # γ = 0 leaves no mechanistic part.
    assert np.isnan(result.overlap[1])
    assert np.isnan(result.time_cosine[1])
    # Every measure is invariant to the scale of m.
    assert result.overlap[0] == pytest.approx(result.overlap[2])
    records = result.records()
    assert [record["head"] for record in records] == [0, 1, 2]
    assert records[2]["gamma"] == 2.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"placement": "both"}, "placement='both'"),
        ({"placement": "pre_rope"}, "theta is None"),
        ({"placement": "post_rope", "gamma": -1.0}, "finite and >= 0"),
        ({"placement": "post_rope", "gamma": [1.0, 2.0]}, "2 values but x has 3 heads"),
        ({"placement": "pre_rope", "theta": np.ones(5)}, "d_head=8"),
        ({"placement": "post_rope", "cutoff": 0.0}, "cutoff=0.0"),
        ({"placement": "post_rope", "nperseg": 256}, "nperseg=256"),
    ],
)
def test_orthogonality_rejects_invalid_arguments(kwargs, message):
    x = np.zeros((1, 64, 3, 8))
    arguments = {"gamma": 1.0, **kwargs}
    with pytest.raises(ValueError, match=message):
        orthogonality(x, **arguments)
