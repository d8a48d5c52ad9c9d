"""Welch spectra along the token axis: planted sinusoids, power shares, layouts and input checks."""

import doctest

import numpy as np
import pytest
import scipy.signal
import torch

from spectral_forensics.results import TemporalSpectrum
from spectral_forensics.spectral import temporal
from spectral_forensics.spectral.temporal import (
    dc_ac_split,
    peak_frequency,
    validate_nperseg,
    welch_psd,
)


def _planted_sinusoids(rng, omegas, shape=(2, 1024, 3, 8), noise=0.5):
    """Return (batch, pos, head, d_head) noise where head h also oscillates at omegas[h]."""
    batch, n_tokens, n_heads, d_head = shape
    t = np.arange(n_tokens)[None, :, None, None]
    phase = rng.uniform(0, 2 * np.pi, size=(batch, 1, n_heads, d_head))
    omega = np.asarray(omegas)[None, None, :, None]
    return np.cos(omega * t + phase) + noise * rng.standard_normal(shape)


@pytest.mark.parametrize("nperseg", [64, 128])
def test_welch_peak_at_planted_frequency(nperseg):
    rng = np.random.default_rng(0)
    omegas = np.array([0.3, 1.234, 2.9])  # not on the bin grid
    x = _planted_sinusoids(rng, omegas)
    freqs, psd = welch_psd(x, nperseg=nperseg, axis=1, average_axes=(0, 3))
    assert psd.shape == (3, nperseg // 2 + 1)
    bin_width = 2 * np.pi / nperseg
    np.testing.assert_allclose(np.diff(freqs), bin_width)
    peaks = peak_frequency(freqs, psd)
    assert peaks.shape == (3,)
    assert np.all(np.abs(peaks - omegas) <= bin_width)


def test_welch_frequency_grid_zero_to_pi():
    freqs, _ = welch_psd(np.zeros(256), nperseg=64)
    assert freqs[0] == 0.0
    assert freqs[-1] == pytest.approx(np.pi)
    assert freqs.size == 33


def test_dc_ac_split_planted_power_shares():
    """A cos(ω1 t) + B cos(ω2 t) has power A²/2 below the cutoff and B²/2 above it."""
    rng = np.random.default_rng(1)
    n_tokens = 4096
    t = np.arange(n_tokens)
    amp_low, amp_high = 2.0, 1.0
    phases = rng.uniform(0, 2 * np.pi, size=(2, 16, 1))
    x = amp_low * np.cos(0.2 * t + phases[0]) + amp_high * np.cos(2.5 * t + phases[1])
    freqs, psd = welch_psd(x, nperseg=128, axis=-1, average_axes=0)
    dc_power, ac_power, dc_fraction = dc_ac_split(freqs, psd, cutoff=1.0)
    assert dc_power == pytest.approx(amp_low**2 / 2, rel=0.02)
    assert ac_power == pytest.approx(amp_high**2 / 2, rel=0.02)
    assert dc_fraction == pytest.approx(amp_low**2 / (amp_low**2 + amp_high**2), abs=0.01)


def test_dc_ac_split_matches_temporal_spectrum():
    rng = np.random.default_rng(2)
    psd = rng.uniform(size=(2, 3, 33))
    freqs = np.linspace(0, np.pi, 33)
    spectrum = TemporalSpectrum(freqs=freqs, psd={"rot_q": psd}, cutoff=0.5, nperseg=64)
    _, _, dc_fraction = dc_ac_split(freqs, psd, cutoff=0.5)
    np.testing.assert_allclose(dc_fraction, spectrum.dc_fraction("rot_q"), rtol=1e-12)


def test_dc_ac_split_zero_power_is_nan():
    freqs = np.linspace(0, np.pi, 5)
    dc_power, ac_power, dc_fraction = dc_ac_split(freqs, np.zeros((2, 5)), cutoff=1.0)
    np.testing.assert_array_equal(dc_power, 0.0)
    np.testing.assert_array_equal(ac_power, 0.0)
    assert np.all(np.isnan(dc_fraction))


def test_dc_ac_split_axis_argument():
    freqs = np.linspace(0, np.pi, 5)
    psd = np.array([1.0, 1.0, 0.0, 0.0, 2.0])
    _, _, last = dc_ac_split(freqs, np.tile(psd, (3, 1)), cutoff=np.pi / 2, axis=-1)
    _, _, first = dc_ac_split(freqs, np.tile(psd, (3, 1)).T, cutoff=np.pi / 2, axis=0)
    np.testing.assert_allclose(last, 0.5)
    np.testing.assert_allclose(first, 0.5)


def test_dc_ac_split_rejects_bad_cutoff():
    with pytest.raises(ValueError, match=r"cutoff=4\.0 is out of range"):
        dc_ac_split(np.linspace(0, np.pi, 5), np.ones(5), cutoff=4.0)


def test_welch_power_integrates_to_variance():
    rng = np.random.default_rng(3)
    sigma = 1.7
    x = sigma * rng.standard_normal((32, 2048))
    freqs, psd = welch_psd(x, nperseg=128, average_axes=0)
    dc_power, ac_power, _ = dc_ac_split(freqs, psd, cutoff=np.pi)
    assert dc_power + ac_power == pytest.approx(sigma**2, rel=0.03)


def test_welch_matches_scipy_on_one_channel():
    rng = np.random.default_rng(4)
    x = rng.standard_normal(1000)
    freqs, psd = welch_psd(x, nperseg=100)
    f_ref, p_ref = scipy.signal.welch(x, fs=2 * np.pi, nperseg=100)
    np.testing.assert_allclose(freqs, f_ref)
    np.testing.assert_allclose(psd, p_ref, rtol=1e-12)


def test_welch_average_equals_mean_of_channels():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 300, 3, 4))
    _, averaged = welch_psd(x, nperseg=50, axis=1, average_axes=(0, 3))
    _, per_channel = welch_psd(x, nperseg=50, axis=1)
    assert per_channel.shape == (2, 3, 4, 26)
    np.testing.assert_allclose(averaged, per_channel.mean(axis=(0, 2)), rtol=1e-12)


def test_welch_float32_stays_float32():
    x = np.random.default_rng(6).standard_normal((1, 512, 9, 64)).astype(np.float32)
    freqs, psd = welch_psd(x, nperseg=128, axis=1, average_axes=(0, 3))
    assert psd.dtype == np.float32
    assert psd.shape == (9, 65)
    assert freqs.dtype == np.float64


def test_welch_accepts_torch_tensors():
    x = np.random.default_rng(7).standard_normal((1, 256, 2, 4)).astype(np.float32)
    _, from_numpy = welch_psd(x, nperseg=64, axis=1, average_axes=(0, 3))
    _, from_torch = welch_psd(torch.from_numpy(x), nperseg=64, axis=1, average_axes=(0, 3))
    np.testing.assert_allclose(from_torch, from_numpy)
    bf16 = torch.from_numpy(x).bfloat16()
    _, from_bf16 = welch_psd(bf16, nperseg=64, axis=1, average_axes=(0, 3))
    assert from_bf16.dtype == np.float32
    np.testing.assert_allclose(from_bf16, from_numpy, rtol=0.05)


def test_welch_complex_input_is_two_sided():
    n_tokens = 1024
    z = np.exp(-1j * 1.0 * np.arange(n_tokens))  # turns backwards at 1 rad/token
    freqs, psd = welch_psd(z, nperseg=64)
    assert freqs.size == 64
    assert peak_frequency(freqs, psd) == pytest.approx(-1.0, abs=2 * np.pi / 64)


def test_welch_short_sequence_error():
    message = r"sequence of 100 tokens is shorter than nperseg=128; use more tokens or a smaller"
    with pytest.raises(ValueError, match=message):
        welch_psd(np.zeros((2, 100, 3)), nperseg=128, axis=1)


def test_welch_rejects_token_axis_in_average_axes():
    with pytest.raises(ValueError, match="contains the token axis"):
        welch_psd(np.zeros((2, 100)), nperseg=32, axis=1, average_axes=(0, -1))


def test_validate_nperseg_rejects_bad_values():
    with pytest.raises(ValueError, match="nperseg=1 is not an integer >= 2"):
        validate_nperseg(100, 1)
    with pytest.raises(ValueError, match="nperseg=64.0 is not an integer"):
        validate_nperseg(100, 64.0)
    with pytest.raises(ValueError, match="noverlap=64 is out of range"):
        validate_nperseg(100, 64, noverlap=64)


def test_peak_frequency_nan_spectrum():
    freqs = np.linspace(0, np.pi, 4)
    psd = np.array([[0.0, 1.0, 0.0, 0.0], [0.0, np.nan, 1.0, 0.0]])
    peaks = peak_frequency(freqs, psd)
    assert peaks[0] == pytest.approx(np.pi / 3)
    assert np.isnan(peaks[1])


def test_temporal_docstring_examples():
    result = doctest.testmod(temporal)
    assert result.attempted > 0
    assert result.failed == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex64, np.complex128])
@pytest.mark.parametrize("n, nperseg, noverlap", [(512, 128, None), (100, 31, 10), (64, 64, None), (300, 65, 64)])
@pytest.mark.parametrize("detrend", [False, "constant"])
def test_welch_psd_equals_scipy_welch(dtype, n, nperseg, noverlap, detrend):
    rng = np.random.default_rng(n + nperseg)
    x = rng.standard_normal((3, n, 2))
    if np.issubdtype(dtype, np.complexfloating):
        x = x + 1j * rng.standard_normal((3, n, 2))
    x = x.astype(dtype)
    freqs, psd = welch_psd(x, nperseg, axis=1, noverlap=noverlap, detrend=detrend)
    expected_freqs, expected = scipy.signal.welch(
        x, fs=2 * np.pi, nperseg=nperseg, noverlap=noverlap, detrend=detrend, axis=1
    )
    expected = np.moveaxis(expected, 1, -1)
    assert psd.dtype == expected.dtype
    np.testing.assert_allclose(freqs, expected_freqs)
    tolerance = 1e-5 if np.finfo(psd.dtype).bits == 32 else 1e-12
    np.testing.assert_allclose(psd, expected, rtol=0, atol=tolerance * np.abs(expected).max())
