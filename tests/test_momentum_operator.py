"""Tests of the momentum shear operator against hand-computed and closed-form values."""

import math

import numpy as np
import pytest
import scipy.signal
import torch

from spectral_forensics.momentum.operator import (
    document_starts_from_ids,
    inverse_momentum_shear,
    kinematic_momentum,
    momentum_shear,
    phase_space_matrix,
    validate_gamma,
)


def test_shear_hand_computed_sequence():
    x = torch.tensor([1.0, 2.0, 4.0, 7.0], dtype=torch.float64)
    # (1 + γ) x_t - γ x_{t-1} with γ = 0.5; the first token is unchanged.
    expected = torch.tensor([1.0, 2.5, 5.0, 8.5], dtype=torch.float64)
    assert torch.equal(momentum_shear(x, 0.5, dim=0), expected)


def test_momentum_first_token_zero():
    x = torch.randn(2, 5, 3)
    p = kinematic_momentum(x, dim=1)
    assert torch.equal(p[:, 0], torch.zeros(2, 3))
    assert torch.allclose(p[:, 1:], x[:, 1:] - x[:, :-1])


def test_shear_token_axis_any_position():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 4, dtype=torch.float64)  # (batch, head, pos, d_head)
    along_2 = momentum_shear(x, 1.5, dim=2)
    along_1 = momentum_shear(x.transpose(1, 2), 1.5, dim=1).transpose(1, 2)
    assert torch.allclose(along_2, along_1)
    negative = momentum_shear(x, 1.5, dim=-2)
    assert torch.equal(negative, along_2)


def test_shear_per_head_gamma_broadcast():
    torch.manual_seed(1)
    x = torch.randn(2, 3, 6, 4, dtype=torch.float64)
    gammas = [0.0, 1.0, 4.0]
    sheared = momentum_shear(x, torch.tensor(gammas, dtype=torch.float64)[:, None, None], dim=2)
    for head, gamma in enumerate(gammas):
        one = momentum_shear(x[:, head], gamma, dim=1)
        assert torch.allclose(sheared[:, head], one)


def test_shear_gamma_zero_identity():
    x = torch.randn(3, 7, 2)
    assert torch.equal(momentum_shear(x, 0.0, dim=1), x)


@pytest.mark.parametrize("gamma", [0.0, 0.225, 1.0, 4.0, 20.0])
def test_inverse_round_trip(gamma):
    torch.manual_seed(2)
    x = torch.randn(2, 9, 3, 4, dtype=torch.float64)  # (batch, pos, head, d_head)
    starts = torch.zeros(2, 9, dtype=torch.bool)
    starts[1, 5] = True
    x_hat = momentum_shear(x, gamma, dim=1, document_starts=starts)
    recovered = inverse_momentum_shear(x_hat, gamma, dim=1, document_starts=starts)
    assert torch.allclose(recovered, x, atol=1e-10, rtol=0)


def test_inverse_round_trip_per_head_float32():
    torch.manual_seed(3)
    x = torch.randn(2, 4, 64, 8)  # (batch, head, pos, d_head)
    gamma = torch.tensor([0.0, 0.5, 2.0, 4.0])[:, None, None]
    recovered = inverse_momentum_shear(momentum_shear(x, gamma, dim=2), gamma, dim=2)
    assert recovered.dtype == torch.float32
    assert (recovered - x).abs().max().item() < 1e-4


def test_inverse_matches_forward_recurrence():
    torch.manual_seed(4)
    x_hat = torch.randn(10, dtype=torch.float64)
    gamma = 1.7
    expected = [x_hat[0].item()]
    for t in range(1, 10):
        expected.append((x_hat[t].item() + gamma * expected[-1]) / (1 + gamma))
    recovered = inverse_momentum_shear(x_hat, gamma, dim=0)
    assert torch.allclose(recovered, torch.tensor(expected, dtype=torch.float64))


def test_phase_space_determinant_one():
    gammas = torch.tensor([0.0, 0.225, 1.0, 4.0, 100.0], dtype=torch.float64)
    matrices = phase_space_matrix(gammas)
    assert matrices.shape == (5, 2, 2)
    determinants = torch.linalg.det(matrices)
    assert torch.allclose(determinants, torch.ones(5, dtype=torch.float64))


def test_phase_space_matrix_maps_to_shear():
    torch.manual_seed(5)
    x = torch.randn(8, dtype=torch.float64)
    p = kinematic_momentum(x, dim=0)
    matrix = phase_space_matrix(2.0)
    assert torch.equal(matrix, torch.tensor([[1.0, 2.0], [0.0, 1.0]], dtype=torch.float64))
    mapped = matrix @ torch.stack([x, p])
    assert torch.allclose(mapped[0], momentum_shear(x, 2.0, dim=0))
    assert torch.equal(mapped[1], p)
    inverse = torch.linalg.inv(matrix)
    assert torch.allclose(inverse @ mapped, torch.stack([x, p]))


def test_document_starts_from_ids_marks_changes():
    ids = torch.tensor([[0, 0, 1, 1, 1, 2], [5, 5, 5, 5, 5, 5]])
    expected = torch.tensor(
        [[True, False, True, False, False, True], [True, False, False, False, False, False]]
    )
    assert torch.equal(document_starts_from_ids(ids), expected)


def test_document_boundary_no_leak():
    torch.manual_seed(6)
    first = torch.randn(1, 4, 2, 3, dtype=torch.float64)
    second = torch.randn(1, 5, 2, 3, dtype=torch.float64)
    packed = torch.cat([first, second], dim=1)
    starts = document_starts_from_ids(torch.tensor([[0] * 4 + [1] * 5]))

    sheared = momentum_shear(packed, 3.0, dim=1, document_starts=starts)
    alone = momentum_shear(second, 3.0, dim=1)
    assert torch.allclose(sheared[:, 4:], alone)

    changed = packed.clone()
    changed[:, :4] += 10.0
    sheared_changed = momentum_shear(changed, 3.0, dim=1, document_starts=starts)
    assert torch.equal(sheared_changed[:, 4:], sheared[:, 4:])


def test_document_starts_one_dimensional_mask():
    x = torch.arange(6, dtype=torch.float64).reshape(1, 6, 1)
    starts = torch.tensor([True, False, False, True, False, False])
    sheared = momentum_shear(x, 1.0, dim=1, document_starts=starts)
    # 2 x_t - x_{t-1} except at the starts 0 and 3.
    expected = torch.tensor([0.0, 2.0, 3.0, 3.0, 5.0, 6.0], dtype=torch.float64)
    assert torch.equal(sheared.reshape(-1), expected)


@pytest.mark.parametrize("gamma", [0.5, 4.0])
def test_frequency_response_closed_form(gamma):
    n_pos = 64
    t = torch.arange(n_pos, dtype=torch.float64)
    omegas = np.linspace(0.1, math.pi, 7)
    _, h_scipy = scipy.signal.freqz(b=[1 + gamma, -gamma], a=[1], worN=omegas)
    for omega, h_ref in zip(omegas, h_scipy):
        tone = torch.exp(1j * omega * t)
        sheared = momentum_shear(tone.real, gamma, dim=0) + 1j * momentum_shear(
            tone.imag, gamma, dim=0
        )
        gain = (sheared[1:] / tone[1:]).numpy()  # the first token has no predecessor
        assert np.allclose(gain, h_ref, atol=1e-12)
        closed_form = 1 + 4 * gamma * (1 + gamma) * math.sin(omega / 2) ** 2
        assert abs(abs(h_ref) ** 2 - closed_form) < 1e-12


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf")])
def test_invalid_gamma_raises(bad):
    with pytest.raises(ValueError, match="finite"):
        validate_gamma(bad)
    with pytest.raises(ValueError, match="finite"):
        momentum_shear(torch.ones(1, 3, 2), bad, dim=1)
    with pytest.raises(ValueError, match="finite"):
        momentum_shear(torch.ones(1, 3, 2), torch.tensor([1.0, bad]), dim=1)


def test_invalid_gamma_in_nested_list_raises():
    with pytest.raises(ValueError, match="-2"):
        validate_gamma([1.0, [0.5, -2.0]])


def test_invalid_gamma_message_names_value():
    with pytest.raises(ValueError, match="-0.5"):
        momentum_shear(torch.ones(4), -0.5, dim=0)
    with pytest.raises(ValueError, match="nan"):
        inverse_momentum_shear(torch.ones(4), torch.tensor(float("nan")), dim=0)
    with pytest.raises(ValueError, match="not a number"):
        validate_gamma("large")


def test_gamma_varying_along_tokens_raises():
    x = torch.ones(2, 5, 3)
    with pytest.raises(ValueError, match="token axis"):
        momentum_shear(x, torch.ones(5, 1), dim=1)


def test_gamma_adding_axes_raises():
    with pytest.raises(ValueError, match="must not add axes"):
        momentum_shear(torch.ones(5, 3), torch.ones(2, 1, 1), dim=0)


def test_document_starts_shape_mismatch_raises():
    with pytest.raises(ValueError, match="document_starts"):
        short_mask = torch.ones(4, dtype=torch.bool)
        momentum_shear(torch.ones(2, 5, 3), 1.0, dim=1, document_starts=short_mask)
    with pytest.raises(ValueError, match="boolean"):
        momentum_shear(torch.ones(2, 5, 3), 1.0, dim=1, document_starts=torch.ones(2, 5))
