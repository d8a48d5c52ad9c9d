"""Closed-form momentum responses against scipy.signal, and transfers measured on filtered noise."""

import doctest

import numpy as np
import pytest
import scipy.signal
import torch

from spectral_forensics.spectral import transfer
from spectral_forensics.spectral.transfer import (
    agreement,
    coriolis_error,
    highpass_magnitude,
    magnitude_db,
    measured_transfer,
    momentum_coefficients,
    momentum_phase,
    momentum_response,
    momentum_response_pre_rope,
    phase_deg,
)

GAMMAS = [0.0, 0.225, 1.0, 4.0]
OMEGA = np.linspace(0.0, np.pi, 257)
THETA = 10000.0 ** (-np.arange(0, 64, 2) / 64)  # RoPE bands of a 64-dim head, base 10000


@pytest.mark.parametrize("gamma", GAMMAS)
def test_response_unit_dc_gain(gamma):
    h = momentum_response(0.0, gamma)
    assert abs(h) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("gamma", GAMMAS)
def test_response_nyquist_gain(gamma):
    h = momentum_response(np.pi, gamma)
    assert abs(h) == pytest.approx(1.0 + 2.0 * gamma, rel=1e-12)


@pytest.mark.parametrize("gamma", GAMMAS)
def test_response_squared_magnitude_formula(gamma):
    h = momentum_response(OMEGA, gamma)
    expected = 1.0 + 4.0 * gamma * (1.0 + gamma) * np.sin(OMEGA / 2.0) ** 2
    np.testing.assert_allclose(np.abs(h) ** 2, expected, rtol=1e-12)


@pytest.mark.parametrize("gamma", GAMMAS)
def test_response_matches_freqz(gamma):
    b, a = momentum_coefficients(gamma)
    assert b.tolist() == [1.0 + gamma, -gamma]
    assert a.tolist() == [1.0]
    w, h_scipy = scipy.signal.freqz(b, a, worN=OMEGA)
    np.testing.assert_allclose(w, OMEGA)
    np.testing.assert_allclose(momentum_response(OMEGA, gamma), h_scipy, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("gamma", GAMMAS)
def test_phase_formula_matches_freqz(gamma):
    b, a = momentum_coefficients(gamma)
    _, h_scipy = scipy.signal.freqz(b, a, worN=OMEGA)
    phase = momentum_phase(OMEGA, gamma)
    np.testing.assert_allclose(phase, np.angle(h_scipy), atol=1e-12)
    assert np.all(phase >= 0.0)
    assert np.all(phase < np.pi / 2)


@pytest.mark.parametrize("gamma", [0.225, 1.0, 4.0])
def test_zero_inside_unit_circle(gamma):
    b, a = momentum_coefficients(gamma)
    zeros, poles, _ = scipy.signal.tf2zpk(b, a)
    assert zeros.shape == (1,)
    assert zeros[0] == pytest.approx(gamma / (1.0 + gamma), rel=1e-12)
    assert abs(zeros[0]) < 1.0
    assert poles.size == 0


def test_response_broadcasts_per_head_gamma():
    gamma = np.array([0.0, 0.5, 2.0])
    h = momentum_response(OMEGA, gamma[:, None])
    assert h.shape == (3, OMEGA.size)
    for row, g in zip(h, gamma):
        np.testing.assert_allclose(row, (1 + g) - g * np.exp(-1j * OMEGA), rtol=1e-12)


def test_highpass_matches_freqz():
    gamma = 0.7
    _, h_scipy = scipy.signal.freqz([gamma, -gamma], [1.0], worN=OMEGA)
    np.testing.assert_allclose(highpass_magnitude(OMEGA, gamma), np.abs(h_scipy), atol=1e-12)


@pytest.mark.parametrize("direction", [1, -1])
@pytest.mark.parametrize("gamma", [0.225, 1.0, 4.0])
def test_pre_rope_is_shifted_response(gamma, direction):
    h_pre = momentum_response_pre_rope(OMEGA, gamma, THETA, direction=direction)
    assert h_pre.shape == (THETA.size, OMEGA.size)
    shifted = momentum_response(OMEGA[None, :] - direction * THETA[:, None], gamma)
    np.testing.assert_allclose(np.abs(h_pre), np.abs(shifted), rtol=1e-12)


@pytest.mark.parametrize("gamma", [0.225, 1.0, 4.0])
def test_pre_rope_unity_gain_at_band(gamma):
    # omega of shape (n_bands, 1) evaluates band i at its own frequency θ_i.
    h_at_band = momentum_response_pre_rope(THETA[:, None], gamma, THETA)
    assert h_at_band.shape == (THETA.size, 1)
    np.testing.assert_allclose(np.abs(h_at_band[:, 0]), 1.0, rtol=1e-12)
    h_at_dc = momentum_response_pre_rope(0.0, gamma, THETA)[:, 0]
    assert np.all(np.abs(h_at_dc[THETA > 0.1]) > 1.0)


def test_pre_rope_unrotated_band_equals_post_rope():
    h_pre = momentum_response_pre_rope(OMEGA, 1.5, np.array([0.0]))
    np.testing.assert_allclose(h_pre[0], momentum_response(OMEGA, 1.5), rtol=1e-12)


@pytest.mark.parametrize("direction", [1, -1])
def test_coriolis_error_is_pre_minus_post(direction):
    gamma = 2.0
    h_pre = momentum_response_pre_rope(OMEGA, gamma, THETA, direction=direction)
    mismatch = np.abs(h_pre - momentum_response(OMEGA, gamma))
    expected = 2.0 * gamma * np.abs(np.sin(THETA / 2.0))
    expected_grid = np.broadcast_to(expected[:, None], mismatch.shape)
    np.testing.assert_allclose(mismatch, expected_grid, atol=1e-12)
    np.testing.assert_allclose(coriolis_error(THETA, gamma), expected, rtol=1e-12)


def test_pre_rope_matches_simulated_rotation():
    """A shear applied before a rotation e^{jθt} has the response H(e^{j(ω - θ)}) after it."""
    rng = np.random.default_rng(1)
    gamma, theta = 1.0, 0.8
    x = rng.standard_normal((32, 4096)) + 1j * rng.standard_normal((32, 4096))
    b, a = momentum_coefficients(gamma)
    rotation = np.exp(1j * theta * np.arange(x.shape[-1]))
    rotated = rotation * x
    sheared_then_rotated = rotation * scipy.signal.lfilter(b, a, x, axis=-1)

    estimate = measured_transfer(rotated, sheared_then_rotated, nperseg=128, average_axes=0)
    theory = momentum_response_pre_rope(estimate.freqs, gamma, np.array([theta]))[0]
    reliable = estimate.coherence > 0.99
    assert reliable.mean() > 0.9
    deviation = np.abs(magnitude_db(estimate.h) - magnitude_db(theory))[reliable]
    assert deviation.max() < 0.1
    mirrored = momentum_response_pre_rope(estimate.freqs, gamma, np.array([theta]), direction=-1)[0]
    assert np.abs(magnitude_db(estimate.h) - magnitude_db(mirrored))[reliable].max() > 1.0


def test_magnitude_db_values():
    db = magnitude_db(np.array([1.0, 10.0, 0.1j, 0.0]))
    np.testing.assert_allclose(db[:3], [0.0, 20.0, -20.0], atol=1e-12)
    assert np.isfinite(db[3])
    assert db[3] < -6000.0


def test_magnitude_db_custom_floor():
    assert magnitude_db(0.0, floor=1e-6) == pytest.approx(-120.0)


def test_phase_deg_values_and_unwrap():
    np.testing.assert_allclose(phase_deg(np.array([1.0, 1j, -1.0, -1j])), [0.0, 90.0, 180.0, -90.0])
    turning = np.exp(1j * np.linspace(0, 3 * np.pi, 10))
    unwrapped = phase_deg(turning, unwrap=True)
    np.testing.assert_allclose(unwrapped, np.degrees(np.linspace(0, 3 * np.pi, 10)), atol=1e-9)


def test_negative_gamma_rejected():
    with pytest.raises(ValueError, match="gamma contains invalid value"):
        momentum_response(OMEGA, -0.5)


def test_momentum_coefficients_rejects_array():
    with pytest.raises(ValueError, match="one scalar coupling"):
        momentum_coefficients(np.array([0.5, 1.0]))


def test_pre_rope_rejects_bad_direction():
    with pytest.raises(ValueError, match="direction=2"):
        momentum_response_pre_rope(OMEGA, 1.0, THETA, direction=2)


@pytest.fixture(scope="module")
def filtered_noise():
    """White noise through the momentum filter (γ = 1), 64 channels × 4096 tokens."""
    rng = np.random.default_rng(0)
    gamma = 1.0
    x = rng.standard_normal((64, 4096))
    b, a = momentum_coefficients(gamma)
    return gamma, x, scipy.signal.lfilter(b, a, x, axis=-1)


def test_transfer_matches_closed_form(filtered_noise):
    gamma, x, y = filtered_noise
    estimate = measured_transfer(x, y, nperseg=128, average_axes=0)
    assert estimate.freqs[0] == 0.0
    assert estimate.freqs[-1] == pytest.approx(np.pi)
    assert estimate.h.shape == (65,)

    reliable = estimate.coherence >= 0.99
    assert reliable.sum() >= 60
    measured_db = magnitude_db(estimate.h)
    theory_db = magnitude_db(momentum_response(estimate.freqs, gamma))
    assert np.abs(measured_db - theory_db)[reliable].max() < 0.1
    r, max_dev = agreement(measured_db, theory_db, mask=reliable)
    assert r >= 0.99
    assert max_dev < 0.1

    phase_error = np.abs(estimate.phase_deg - np.degrees(momentum_phase(estimate.freqs, gamma)))
    assert phase_error[reliable].max() < 1.0


def test_transfer_coherence_matches_scipy(filtered_noise):
    _, x, y = filtered_noise
    estimate = measured_transfer(x[0], y[0] + 0.3 * x[1], nperseg=128)
    freqs, coherence = scipy.signal.coherence(x[0], y[0] + 0.3 * x[1], fs=2 * np.pi, nperseg=128)
    np.testing.assert_allclose(estimate.freqs, freqs)
    np.testing.assert_allclose(estimate.coherence, coherence, rtol=1e-10)


def test_transfer_averages_before_dividing():
    """Channels with gains c and variances σ² give H = Σ c σ² / Σ σ², not the mean of c."""
    rng = np.random.default_rng(2)
    scales = np.array([1.0, 3.0])[:, None]
    gains = np.array([1.0, 2.0])[:, None]
    x = scales * rng.standard_normal((2, 2048))
    estimate = measured_transfer(x, gains * x, nperseg=64, average_axes=0)
    _, pxx = scipy.signal.welch(x, fs=2 * np.pi, nperseg=64)
    expected = (gains * pxx).sum(0) / pxx.sum(0)
    np.testing.assert_allclose(estimate.h.real, expected, rtol=1e-10)
    assert np.all(estimate.h.real > 1.7)


def test_transfer_noisy_output_coherence(filtered_noise):
    gamma, x, y = filtered_noise
    sigma = 1.5
    noise = sigma * np.random.default_rng(3).standard_normal(y.shape)
    clean = measured_transfer(x, y, nperseg=128, average_axes=0)
    noisy = measured_transfer(x, y + noise, nperseg=128, average_axes=0)

    # White noise of variance σ² added to y = h * x gives C = |H|² / (|H|² + σ²).
    gain = np.abs(momentum_response(noisy.freqs, gamma)) ** 2
    expected = gain / (gain + sigma**2)
    np.testing.assert_allclose(noisy.coherence[1:], expected[1:], atol=0.05)
    assert np.all(noisy.coherence[1:] < clean.coherence[1:])


def test_transfer_nonlinear_stage_coherence(filtered_noise):
    _, x, _ = filtered_noise
    estimate = measured_transfer(x, x**2, nperseg=128, average_axes=0)
    assert np.mean(estimate.coherence) < 0.05


def test_transfer_per_head_gains():
    """(batch, pos, head, d_head) averaged over batch and channels gives one curve per head."""
    rng = np.random.default_rng(4)
    gammas = np.array([0.0, 0.5, 3.0])
    x = rng.standard_normal((2, 1024, 3, 16))
    outputs = []
    for head, gamma in enumerate(gammas):
        b, a = momentum_coefficients(gamma)
        outputs.append(scipy.signal.lfilter(b, a, x[:, :, head], axis=1))
    y = np.stack(outputs, axis=2)
    estimate = measured_transfer(x, y, nperseg=64, axis=1, average_axes=(0, 3))
    assert estimate.h.shape == (3, 33)
    theory_db = magnitude_db(momentum_response(estimate.freqs, gammas[:, None]))
    r, max_dev = agreement(magnitude_db(estimate.h), theory_db, mask=estimate.coherence >= 0.99)
    assert r.shape == (3,)
    assert np.all(max_dev < 0.1)
    assert np.all(r[1:] >= 0.99)


def test_measured_transfer_accepts_torch():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 512)).astype(np.float32)
    from_numpy = measured_transfer(x, 2 * x, nperseg=64, average_axes=0)
    from_torch = measured_transfer(
        torch.from_numpy(x), torch.from_numpy(2 * x), nperseg=64, average_axes=0
    )
    np.testing.assert_allclose(from_torch.h, from_numpy.h)
    np.testing.assert_allclose(from_numpy.h.real[1:], 2.0, rtol=1e-4)


def test_measured_transfer_short_sequence_error():
    x = np.zeros((2, 100))
    with pytest.raises(ValueError, match=r"sequence of 100 tokens is shorter than nperseg=128"):
        measured_transfer(x, x, nperseg=128)


def test_measured_transfer_shape_mismatch_error():
    with pytest.raises(ValueError, match="x has shape"):
        measured_transfer(np.zeros((2, 256)), np.zeros((3, 256)), nperseg=64)


def test_agreement_offset_and_mask():
    theory = np.array([0.0, 1.0, 4.0, 9.0])
    r, max_dev = agreement(theory + 2.0, theory)
    assert r == pytest.approx(1.0)
    assert max_dev == pytest.approx(2.0)

    measured = theory.copy()
    measured[2] = 50.0
    r_all, _ = agreement(measured, theory)
    r_masked, dev_masked = agreement(measured, theory, mask=[True, True, False, True])
    assert r_all < 0.9
    assert r_masked == pytest.approx(1.0)
    assert dev_masked == pytest.approx(0.0)


def test_agreement_anticorrelated_rows():
    theory = np.array([[0.0, 1.0, 2.0], [0.0, 1.0, 2.0]])
    measured = np.array([[0.0, 1.0, 2.0], [2.0, 1.0, 0.0]])
    r, _ = agreement(measured, theory)
    np.testing.assert_allclose(r, [1.0, -1.0])


def test_agreement_too_few_points_is_nan():
    r, max_dev = agreement(np.array([1.0, 2.0]), np.array([1.0, 3.0]), mask=[True, False])
    assert np.isnan(r)
    assert max_dev == pytest.approx(0.0)
    r, max_dev = agreement(np.array([1.0, 2.0]), np.array([1.0, 3.0]), mask=[False, False])
    assert np.isnan(r)
    assert np.isnan(max_dev)


def test_transfer_docstring_examples():
    result = doctest.testmod(transfer, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0


@pytest.mark.parametrize("complex_input", [False, True])
@pytest.mark.parametrize("nperseg, noverlap", [(64, None), (31, 10)])
@pytest.mark.parametrize("detrend", [False, "constant"])
def test_cross_spectra_equal_scipy_welch_and_csd(complex_input, nperseg, noverlap, detrend):
    rng = np.random.default_rng(nperseg)
    x = rng.standard_normal((2, 300, 3))
    y = np.roll(x, 1, axis=1) + 0.3 * rng.standard_normal((2, 300, 3))
    if complex_input:
        x = x + 1j * rng.standard_normal((2, 300, 3))
        y = y - 0.5j * x
    freqs, pxx, pyy, pxy = transfer.cross_spectra(x, y, nperseg, axis=1, noverlap=noverlap, detrend=detrend)
    settings = dict(fs=2 * np.pi, nperseg=nperseg, noverlap=noverlap, detrend=detrend, axis=1)
    expected = [
        scipy.signal.welch(x, **settings)[1],
        scipy.signal.welch(y, **settings)[1],
        scipy.signal.csd(x, y, **settings)[1],
    ]
    np.testing.assert_allclose(freqs, scipy.signal.welch(x, **settings)[0])
    for ours, theirs in zip((pxx, pyy, pxy), expected, strict=True):
        theirs = np.moveaxis(theirs, 1, -1)
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-12 * np.abs(theirs).max())
