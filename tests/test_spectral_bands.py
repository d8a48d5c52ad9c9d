"""RoPE band components, causal cross sums and band masks, on numpy arrays and torch tensors."""

import doctest

import numpy as np
import pytest
import torch

from spectral_forensics import rope
from spectral_forensics.results import BandSpectrum
from spectral_forensics.spectral import bands
from spectral_forensics.spectral.bands import (
    band_dc_fraction,
    band_energy_sum,
    causal_cross_sum,
    dc_band_mask,
    expand_kv_heads,
    to_bands,
)


def _random_complex(rng, shape):
    return rng.standard_normal(shape) + 1j * rng.standard_normal(shape)


def _brute_force_cross(q, k):
    """Sum q[b, t] conj(k[b, s]) over b and s <= t with explicit loops (batch, pos, head, band)."""
    batch, n_tokens = q.shape[:2]
    total = np.zeros(q.shape[2:], dtype=np.complex128)
    pairs = 0
    for b in range(batch):
        for t in range(n_tokens):
            for s in range(t + 1):
                total += q[b, t] * np.conj(k[b, s])
                pairs += 1
    return total, pairs


def _llama_spec(head_dim=8, base=10000.0):
    theta = base ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    return rope.RopeSpec(
        model_type="llama",
        n_layers=1,
        n_heads=1,
        n_kv_heads=1,
        head_dim=head_dim,
        has_rope=True,
        base=base,
        rotary_dim=head_dim,
        pairing=rope.ROTATE_HALF,
        rope_type="default",
        theta=theta,
    )


def test_to_bands_rotate_half_pairing():
    x = np.arange(8.0)
    real_dims, imag_dims = rope.band_dimensions(8, rope.ROTATE_HALF)
    z = to_bands(x, real_dims, imag_dims)
    assert z.tolist() == [0 + 4j, 1 + 5j, 2 + 6j, 3 + 7j]


def test_to_bands_adjacent_pairing():
    x = np.arange(8.0)
    real_dims, imag_dims = rope.band_dimensions(8, rope.ADJACENT_PAIRS)
    z = to_bands(x, real_dims, imag_dims)
    assert z.tolist() == [0 + 1j, 2 + 3j, 4 + 5j, 6 + 7j]


def test_to_bands_partial_rotary_ignores_tail():
    x = np.arange(8.0)
    real_dims, imag_dims = rope.band_dimensions(4, rope.ROTATE_HALF)
    assert to_bands(x, real_dims, imag_dims).tolist() == [0 + 2j, 1 + 3j]


def test_to_bands_torch_dtypes():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 3, 8)).astype(np.float32)
    real_dims, imag_dims = rope.band_dimensions(8, rope.ROTATE_HALF)
    z_numpy = to_bands(x, real_dims, imag_dims)
    z_torch = to_bands(torch.from_numpy(x), real_dims, imag_dims)
    assert isinstance(z_torch, torch.Tensor)
    assert z_torch.dtype == torch.complex64
    assert z_numpy.dtype == np.complex64
    assert z_torch.shape == (2, 5, 3, 4)
    np.testing.assert_array_equal(z_torch.numpy(), z_numpy)
    assert to_bands(torch.from_numpy(x).double(), real_dims, imag_dims).dtype == torch.complex128
    assert to_bands(torch.from_numpy(x).bfloat16(), real_dims, imag_dims).dtype == torch.complex64


def test_rotation_is_band_multiplication():
    """rope.rotate by position t multiplies every band by e^{j θ_i t}."""
    spec = _llama_spec()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, spec.head_dim))
    positions = np.arange(6)
    rotated = rope.rotate(x, positions, spec)
    real_dims, imag_dims = spec.band_dimensions()
    expected = to_bands(x, real_dims, imag_dims) * np.exp(1j * positions[:, None] * spec.theta)
    np.testing.assert_allclose(to_bands(rotated, real_dims, imag_dims), expected, atol=1e-12)


def test_to_bands_rejects_out_of_range_dims():
    with pytest.raises(ValueError, match="imag_dims contains indices outside"):
        to_bands(np.zeros(4), [0, 1], [2, 4])


def test_cross_sum_brute_force_numpy():
    rng = np.random.default_rng(2)
    q = _random_complex(rng, (2, 7, 3, 4))
    k = _random_complex(rng, (2, 7, 3, 4))
    cross, n_pairs = causal_cross_sum(q, k, axis=1, batch_axis=0)
    expected, expected_pairs = _brute_force_cross(q, k)
    assert cross.shape == (3, 4)
    assert n_pairs == expected_pairs == 2 * 7 * 8 // 2
    np.testing.assert_allclose(cross, expected, rtol=1e-12)


def test_cross_sum_brute_force_torch():
    rng = np.random.default_rng(3)
    q = _random_complex(rng, (2, 7, 3, 4)).astype(np.complex64)
    k = _random_complex(rng, (2, 7, 3, 4)).astype(np.complex64)
    cross, n_pairs = causal_cross_sum(
        torch.from_numpy(q), torch.from_numpy(k), axis=1, batch_axis=0
    )
    expected, expected_pairs = _brute_force_cross(
        q.astype(np.complex128), k.astype(np.complex128)
    )
    assert isinstance(cross, torch.Tensor)
    assert cross.dtype == torch.complex64
    assert n_pairs == expected_pairs
    np.testing.assert_allclose(cross.numpy(), expected, rtol=1e-5, atol=1e-4)


def test_cross_sum_double_precision():
    rng = np.random.default_rng(4)
    q = torch.from_numpy(_random_complex(rng, (1, 512, 2, 4)).astype(np.complex64))
    k = torch.from_numpy(_random_complex(rng, (1, 512, 2, 4)).astype(np.complex64))
    single, _ = causal_cross_sum(q, k)
    double, _ = causal_cross_sum(q, k, dtype=torch.complex128)
    assert double.dtype == torch.complex128
    reference, _ = causal_cross_sum(
        q.numpy().astype(np.complex128), k.numpy().astype(np.complex128)
    )
    np.testing.assert_allclose(double.numpy(), reference, rtol=1e-12)
    scale = np.abs(reference).max()
    assert np.abs(single.numpy() - reference).max() < 1e-5 * scale


def test_cross_sum_token_axis_last():
    """Token axis last and no batch axis: (head, band, pos)."""
    rng = np.random.default_rng(5)
    q = _random_complex(rng, (1, 6, 2, 3))
    k = _random_complex(rng, (1, 6, 2, 3))
    expected, _ = _brute_force_cross(q, k)
    q_last = np.moveaxis(q[0], 0, -1)
    k_last = np.moveaxis(k[0], 0, -1)
    cross, n_pairs = causal_cross_sum(q_last, k_last, axis=-1, batch_axis=None)
    assert n_pairs == 21
    np.testing.assert_allclose(cross, expected, rtol=1e-12)


def test_cross_sum_shape_mismatch():
    with pytest.raises(ValueError, match="expand_kv_heads"):
        causal_cross_sum(np.zeros((1, 4, 4, 2), complex), np.zeros((1, 4, 2, 2), complex))


def test_planted_band_peaks():
    """q and k correlated only in band 3: the cross spectrum peaks there with the planted phase."""
    rng = np.random.default_rng(6)
    batch, n_tokens, n_heads, head_dim = 2, 256, 2, 16
    real_dims, imag_dims = rope.band_dimensions(head_dim, rope.ROTATE_HALF)
    content = 2.0 * np.exp(1j * 0.7)  # the same complex value at every token
    q_band = content * np.exp(1j * 0.5) + 0.3 * _random_complex(rng, (batch, n_tokens, n_heads))
    k_band = content + 0.3 * _random_complex(rng, (batch, n_tokens, n_heads))
    q = 0.3 * rng.standard_normal((batch, n_tokens, n_heads, head_dim))
    k = 0.3 * rng.standard_normal((batch, n_tokens, n_heads, head_dim))
    q[..., real_dims[3]], q[..., imag_dims[3]] = q_band.real, q_band.imag
    k[..., real_dims[3]], k[..., imag_dims[3]] = k_band.real, k_band.imag

    for make in (np.asarray, torch.from_numpy):
        q_bands = to_bands(make(q), real_dims, imag_dims)
        k_bands = to_bands(make(k), real_dims, imag_dims)
        cross, n_pairs = causal_cross_sum(q_bands, k_bands, axis=1, batch_axis=0)
        mean_product = np.asarray(cross) / n_pairs
        assert mean_product.shape == (n_heads, head_dim // 2)
        assert np.all(np.argmax(np.abs(mean_product), axis=-1) == 3)
        np.testing.assert_allclose(np.abs(mean_product[:, 3]), 4.0, rtol=0.05)
        np.testing.assert_allclose(np.angle(mean_product[:, 3]), 0.5, atol=0.05)
        others = np.delete(np.abs(mean_product), 3, axis=-1)
        assert others.max() < 0.05


def test_band_energy_sum_numpy_and_torch():
    rng = np.random.default_rng(7)
    z = _random_complex(rng, (2, 9, 3, 4))
    expected = (np.abs(z) ** 2).sum(axis=(0, 1))
    np.testing.assert_allclose(band_energy_sum(z, axis=1, batch_axis=0), expected, rtol=1e-12)
    from_torch = band_energy_sum(torch.from_numpy(z), axis=1, batch_axis=0)
    assert isinstance(from_torch, torch.Tensor)
    assert not from_torch.is_complex()
    np.testing.assert_allclose(from_torch.numpy(), expected, rtol=1e-12)


def test_dc_band_mask_from_wavelengths():
    spec = _llama_spec(head_dim=64)
    theta = np.append(spec.theta, 0.0)
    cutoff = 512.0
    mask = dc_band_mask(theta, cutoff)
    expected = np.append(spec.wavelengths > cutoff, True)
    np.testing.assert_array_equal(mask, expected)
    assert 0 < mask.sum() < mask.size
    mask_torch = dc_band_mask(torch.from_numpy(theta), cutoff)
    assert isinstance(mask_torch, torch.Tensor)
    np.testing.assert_array_equal(mask_torch.numpy(), expected)


def test_dc_band_mask_rejects_bad_cutoff():
    with pytest.raises(ValueError, match="cutoff_wavelength=0"):
        dc_band_mask(np.array([1.0]), 0)


def test_band_dc_fraction_values():
    cross = np.array([[3j, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    mask = np.array([False, True, True, False])
    fraction = band_dc_fraction(cross, mask)
    assert fraction[0] == pytest.approx(0.25)
    assert np.isnan(fraction[1])
    from_torch = band_dc_fraction(torch.from_numpy(cross), torch.from_numpy(mask))
    assert isinstance(from_torch, torch.Tensor)
    assert from_torch[0].item() == pytest.approx(0.25)
    assert torch.isnan(from_torch[1])


def test_band_dc_fraction_matches_band_spectrum():
    rng = np.random.default_rng(8)
    theta = _llama_spec(head_dim=16).theta
    cross = _random_complex(rng, (2, 3, theta.size))
    mask = dc_band_mask(theta, 64)
    spectrum = BandSpectrum(
        theta=theta,
        cross=cross,
        q_energy=np.ones(cross.shape),
        k_energy=np.ones(cross.shape),
        dc_mask=mask,
        cutoff_wavelength=64,
    )
    np.testing.assert_allclose(band_dc_fraction(cross, mask), spectrum.dc_fraction, rtol=1e-12)


def test_expand_kv_heads_mapping_numpy():
    n_heads, n_kv_heads = 6, 2
    k = np.broadcast_to(np.arange(n_kv_heads)[None, None, :, None], (1, 3, n_kv_heads, 4))
    expanded = expand_kv_heads(k, n_heads, axis=2)
    assert expanded.shape == (1, 3, n_heads, 4)
    group = n_heads // n_kv_heads
    for head in range(n_heads):
        assert np.all(expanded[:, :, head] == head // group)


def test_expand_kv_heads_mapping_torch():
    spec = rope.RopeSpec(
        model_type="llama", n_layers=1, n_heads=8, n_kv_heads=2, head_dim=4, has_rope=True,
        base=10000.0, rotary_dim=4, pairing=rope.ROTATE_HALF, rope_type="default",
        theta=np.ones(2),
    )
    k = torch.arange(2.0).reshape(1, 1, 2, 1).expand(1, 3, 2, 4)
    expanded = expand_kv_heads(k, spec.n_heads, axis=2)
    assert isinstance(expanded, torch.Tensor)
    for head in range(spec.n_heads):
        assert torch.all(expanded[:, :, head] == spec.kv_head(head))


def test_expand_kv_heads_rejects_non_multiple():
    with pytest.raises(ValueError, match="n_heads=5 is not a multiple of the 2"):
        expand_kv_heads(np.zeros((1, 3, 2, 4)), 5, axis=2)


def test_bands_docstring_examples():
    result = doctest.testmod(bands)
    assert result.attempted > 0
    assert result.failed == 0
