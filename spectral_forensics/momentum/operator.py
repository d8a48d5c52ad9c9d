"""The momentum shear on query and key sequences, its inverse and its phase-space matrix.

For a per-head query or key sequence ``x_t`` along the token axis, the kinematic momentum is
``p_t = x_t - x_{t-1}`` with ``p_t = 0`` at the first token of every document, and the shear is

    x̂_t = x_t + γ p_t = (1 + γ) x_t - γ x_{t-1}.

Every function here is a pure tensor function with an explicit token axis ``dim``. The module
imports torch only, so it can be checked against the formulas without any model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = [
    "document_starts_from_ids",
    "inverse_momentum_shear",
    "kinematic_momentum",
    "momentum_shear",
    "phase_space_matrix",
    "validate_gamma",
]


def validate_gamma(gamma: float | Sequence | torch.Tensor, name: str = "gamma") -> None:
    """Check that a momentum coupling is finite and non-negative.

    Parameters
    ----------
    gamma : float, sequence of floats or torch.Tensor
        Momentum coupling γ (dimensionless), one value or any nested sequence or tensor of them.
    name : str, optional
        Parameter name used in the error message.

    Raises
    ------
    ValueError
        If any entry is negative, NaN or infinite, or the value is not numeric.
    """
    if isinstance(gamma, torch.Tensor):
        if gamma.device.type == "meta":
            return  # shape-only tensors carry no values to check
        values = gamma.detach().reshape(-1)
        invalid = ~torch.isfinite(values) | (values < 0)
        if bool(invalid.any()):
            _raise_invalid_gamma(name, values[invalid].tolist())
        return
    try:
        values = _flatten(gamma)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"{name}={gamma!r} is not a number or a nested list of numbers; pass a finite "
            f"float >= 0, one per layer, or one per layer and head."
        ) from error
    invalid = [value for value in values if not math.isfinite(value) or value < 0]
    if invalid:
        _raise_invalid_gamma(name, invalid)


def _raise_invalid_gamma(name: str, invalid: list[float]) -> None:
    shown = ", ".join(f"{value:g}" for value in invalid[:4])
    raise ValueError(
        f"{name} contains invalid value(s) {shown}; the momentum coupling must be finite "
        f"and >= 0 (0 turns the shear off). Replace negative, NaN or infinite entries."
    )


def _flatten(gamma: float | Sequence | torch.Tensor) -> list[float]:
    """Flatten a possibly ragged nesting of numbers and tensors into a list of floats."""
    if isinstance(gamma, torch.Tensor):
        return gamma.detach().to(torch.float64).reshape(-1).tolist()
    if isinstance(gamma, (str, bytes)):
        raise TypeError(f"gamma={gamma!r} is a string")
    if isinstance(gamma, Sequence):
        return [value for entry in gamma for value in _flatten(entry)]
    return [float(gamma)]


def document_starts_from_ids(document_ids: torch.Tensor) -> torch.Tensor:
    """Mark the first token of every document in rows of packed document ids.

    Parameters
    ----------
    document_ids : torch.Tensor
        Integer document id per token, shape ``(pos,)`` or ``(batch, pos)``. A new document
        starts wherever the id differs from the previous token's id.

    Returns
    -------
    torch.Tensor
        Boolean tensor of the same shape, True at position 0 and at every change of id.
    """
    if document_ids.ndim not in (1, 2):
        raise ValueError(
            f"document_ids has shape {tuple(document_ids.shape)}; expected (pos,) or "
            f"(batch, pos)."
        )
    starts = torch.ones_like(document_ids, dtype=torch.bool)
    starts[..., 1:] = document_ids[..., 1:] != document_ids[..., :-1]
    return starts


def _starts_like(document_starts: torch.Tensor, x: torch.Tensor, dim: int) -> torch.Tensor:
    """Reshape a ``(pos,)`` or ``(batch, pos)`` start mask to broadcast against ``x``."""
    if document_starts.dtype != torch.bool:
        raise ValueError(
            f"document_starts has dtype {document_starts.dtype}; expected a boolean mask "
            f"(use document_starts_from_ids to derive one from document ids)."
        )
    n_pos = x.shape[dim]
    if document_starts.shape[-1] != n_pos or document_starts.ndim not in (1, 2):
        raise ValueError(
            f"document_starts has shape {tuple(document_starts.shape)}; expected (pos,) or "
            f"(batch, pos) with pos={n_pos} matching axis {dim} of x."
        )
    shape = [1] * x.ndim
    shape[dim] = n_pos
    if document_starts.ndim == 2:
        if dim == 0 or document_starts.shape[0] not in (1, x.shape[0]):
            raise ValueError(
                f"document_starts has batch size {document_starts.shape[0]} but x has shape "
                f"{tuple(x.shape)} with the token axis at {dim}; the batch axis of x must be "
                f"axis 0 and match."
            )
        shape[0] = document_starts.shape[0]
    return document_starts.reshape(shape)


def _gamma_like(
    gamma: float | torch.Tensor, x: torch.Tensor, validate: bool = True
) -> float | torch.Tensor:
    if validate:
        validate_gamma(gamma)
    if isinstance(gamma, torch.Tensor):
        return gamma.to(device=x.device, dtype=x.dtype)
    return float(gamma)


def kinematic_momentum(
    x: torch.Tensor, dim: int, document_starts: torch.Tensor | None = None
) -> torch.Tensor:
    """Compute the kinematic momentum ``p_t = x_t - x_{t-1}`` along a token axis.

    Parameters
    ----------
    x : torch.Tensor
        Sequence of vectors, any shape, with tokens along ``dim``.
    dim : int
        Token axis of ``x``.
    document_starts : torch.Tensor, optional
        Boolean mask of shape ``(pos,)`` or ``(batch, pos)`` (batch on axis 0 of ``x``), True at
        the first token of each document. ``p_t`` is 0 there. Position 0 always counts as a start.

    Returns
    -------
    torch.Tensor
        ``p`` with the shape of ``x``; ``p_0 = 0``.
    """
    dim = dim % x.ndim
    previous = torch.cat([x.narrow(dim, 0, 1), x.narrow(dim, 0, x.shape[dim] - 1)], dim=dim)
    momentum = x - previous
    if document_starts is not None:
        starts = _starts_like(document_starts.to(x.device), x, dim)
        momentum = momentum.masked_fill(starts, 0.0)
    return momentum


def momentum_shear(
    x: torch.Tensor,
    gamma: float | torch.Tensor,
    dim: int,
    document_starts: torch.Tensor | None = None,
    validate: bool = True,
) -> torch.Tensor:
    """Apply the momentum shear ``x̂_t = (1 + γ) x_t - γ x_{t-1}`` along a token axis.

    Parameters
    ----------
    x : torch.Tensor
        Queries or keys, any shape, with tokens along ``dim``; typically
        ``(batch, pos, head, d_head)`` with ``dim=1`` or ``(batch, head, pos, d_head)`` with
        ``dim=2``.
    gamma : float or torch.Tensor
        Momentum coupling γ >= 0 (dimensionless). A tensor must broadcast against ``x`` and
        have size 1 along ``dim``, e.g. shape ``(head, 1, 1)`` for per-head couplings on
        ``(batch, head, pos, d_head)``.
    dim : int
        Token axis of ``x``.
    document_starts : torch.Tensor, optional
        Boolean mask of shape ``(pos,)`` or ``(batch, pos)``, True at the first token of each
        packed document. The momentum is reset to 0 there, so nothing leaks across documents.
    validate : bool, optional
        Check γ for negative, NaN or infinite entries (default True). Callers that validated γ
        already may pass False to skip a device synchronisation on every call.

    Returns
    -------
    torch.Tensor
        The sheared sequence, same shape as ``x``. The first token (and each document's first
        token) is unchanged.

    Raises
    ------
    ValueError
        If γ is negative, NaN or infinite, or ``document_starts`` does not fit ``x``.

    Notes
    -----
    With ``p_t = x_t - x_{t-1}`` and ``p_0 = 0``:

    .. math:: \\hat x_t = x_t + \\gamma p_t = (1 + \\gamma) x_t - \\gamma x_{t-1}

    Along the token axis this is the causal FIR filter ``H(z) = (1 + γ) - γ z^{-1}``:
    ``|H(e^{jω})|^2 = 1 + 4 γ (1 + γ) sin^2(ω / 2)`` with ω in radians per token, so the
    DC component passes unchanged and the Nyquist component is scaled by ``1 + 2γ``.

    Examples
    --------
    >>> import torch
    >>> momentum_shear(torch.tensor([1.0, 2.0, 4.0]), 0.5, dim=0)
    tensor([1.0000, 2.5000, 5.0000])
    """
    gamma = _gamma_like(gamma, x, validate)
    if isinstance(gamma, torch.Tensor) and gamma.ndim > 0:
        _check_gamma_shape(gamma, x, dim)
    return x + gamma * kinematic_momentum(x, dim, document_starts)


def _check_gamma_shape(gamma: torch.Tensor, x: torch.Tensor, dim: int) -> None:
    try:
        shape = torch.broadcast_shapes(gamma.shape, x.shape)
    except RuntimeError as error:
        raise ValueError(
            f"gamma has shape {tuple(gamma.shape)}, which does not broadcast against x of shape "
            f"{tuple(x.shape)}; reshape it, e.g. (head, 1, 1) for (batch, head, pos, d_head)."
        ) from error
    if shape != x.shape:
        raise ValueError(
            f"gamma of shape {tuple(gamma.shape)} would broadcast x of shape {tuple(x.shape)} "
            f"to {tuple(shape)}; gamma must not add axes to x."
        )
    offset = x.ndim - gamma.ndim
    axis = (dim % x.ndim) - offset
    if axis >= 0 and gamma.shape[axis] != 1:
        raise ValueError(
            f"gamma has shape {tuple(gamma.shape)} with size {gamma.shape[axis]} along the "
            f"token axis {dim}; the coupling must be constant along tokens (size 1 there)."
        )


def inverse_momentum_shear(
    x_hat: torch.Tensor,
    gamma: float | torch.Tensor,
    dim: int,
    document_starts: torch.Tensor | None = None,
) -> torch.Tensor:
    """Recover ``x`` from its momentum shear ``x̂`` by solving the recurrence forward.

    Parameters
    ----------
    x_hat : torch.Tensor
        Sheared sequence, tokens along ``dim``.
    gamma : float or torch.Tensor
        The coupling γ >= 0 used for the shear; same broadcasting rules as in
        :func:`momentum_shear`.
    dim : int
        Token axis.
    document_starts : torch.Tensor, optional
        The document-start mask used for the shear.

    Returns
    -------
    torch.Tensor
        ``x`` with the shape of ``x_hat``.

    Notes
    -----
    The shear is inverted by

    .. math:: x_t = (\\hat x_t + \\gamma x_{t-1}) / (1 + \\gamma),\\qquad x_0 = \\hat x_0,

    and ``x_t = x̂_t`` at every document start. With ``a = γ / (1 + γ)`` in ``[0, 1)`` this is
    the first-order linear recurrence ``x_t = a x_{t-1} + b_t`` whose closed form is
    ``x_t = Σ_{s <= t} a^{t-s} b_s`` over the tokens ``s`` of the same document. The sum is
    evaluated as one matrix product with the lower-triangular matrix ``L[t, s] = a^{t-s}``.
    Its entries are powers of ``a < 1``, so they cannot overflow, whereas the scan form
    ``a^t Σ a^{-s} b_s`` divides by ``a^s``. Memory is O(pos²) per distinct γ and batch row.
    """
    gamma = _gamma_like(gamma, x_hat)
    dim = dim % x_hat.ndim
    if isinstance(gamma, torch.Tensor) and gamma.ndim > 0:
        _check_gamma_shape(gamma, x_hat, dim)
    n_pos = x_hat.shape[dim]
    work_dtype = torch.promote_types(x_hat.dtype, torch.float32)
    gamma_t = torch.as_tensor(gamma, dtype=work_dtype, device=x_hat.device)
    gamma_t = gamma_t.reshape((1,) * (x_hat.ndim - gamma_t.ndim) + tuple(gamma_t.shape))

    if document_starts is None:
        starts = torch.zeros((1,) * x_hat.ndim, dtype=torch.bool, device=x_hat.device)
        starts = starts.expand(*(n_pos if i == dim else 1 for i in range(x_hat.ndim)))
        starts = starts.clone()
    else:
        starts = _starts_like(document_starts.to(x_hat.device), x_hat, dim).clone()
    starts.narrow(dim, 0, 1).fill_(True)

    # b_t = x̂_t / (1 + γ) inside a document and x̂_t at its first token.
    x_work = x_hat.to(work_dtype)
    b = torch.where(starts, x_work, x_work / (1.0 + gamma_t))

    # Move the token axis last so that L (…, pos, pos) multiplies b (…, pos, 1).
    b_last = b.movedim(dim, -1).unsqueeze(-1)
    decay = (gamma_t / (1.0 + gamma_t)).movedim(dim, -1).unsqueeze(-1)
    segment = torch.cumsum(starts.to(torch.int64), dim=dim).movedim(dim, -1)
    token = torch.arange(n_pos, device=x_hat.device)
    lag = token[:, None] - token[None, :]
    same_document = segment.unsqueeze(-1) == segment.unsqueeze(-2)
    visible = (lag >= 0) & same_document
    # lag clamped at 0 keeps pow finite; the entries above the diagonal are masked anyway.
    powers = torch.pow(decay, lag.clamp(min=0).to(work_dtype))
    lower = torch.where(visible, powers, torch.zeros((), dtype=work_dtype, device=x_hat.device))
    x_last = torch.matmul(lower, b_last).squeeze(-1)
    return x_last.movedim(-1, dim).to(x_hat.dtype)


def phase_space_matrix(gamma: float | torch.Tensor) -> torch.Tensor:
    """Build the phase-space matrix of the shear, ``[[1, γ], [0, 1]]``.

    Parameters
    ----------
    gamma : float or torch.Tensor
        Momentum coupling γ >= 0, any shape.

    Returns
    -------
    torch.Tensor
        Shape ``gamma.shape + (2, 2)``, float64 for a Python float.

    Notes
    -----
    The shear maps ``(x, p) -> (x + γ p, p)`` in every coordinate, so

    .. math:: \\begin{pmatrix} \\hat x \\\\ p \\end{pmatrix}
              = \\begin{pmatrix} 1 & \\gamma \\\\ 0 & 1 \\end{pmatrix}
                \\begin{pmatrix} x \\\\ p \\end{pmatrix},

    whose determinant is 1: phase-space volume is preserved and the map is invertible.
    """
    validate_gamma(gamma)
    if isinstance(gamma, torch.Tensor) and gamma.is_floating_point():
        gamma_t = gamma
    else:
        gamma_t = torch.as_tensor(gamma, dtype=torch.float64)
    ones = torch.ones_like(gamma_t)
    zeros = torch.zeros_like(gamma_t)
    rows = [torch.stack([ones, gamma_t], dim=-1), torch.stack([zeros, ones], dim=-1)]
    return torch.stack(rows, dim=-2)

