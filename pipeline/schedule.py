"""The reference flow-matching schedule and Euler update (MODEL.md §5).

diffusers' ``FlowMatchEulerDiscreteScheduler`` shifts the sigmas twice when given ``shift``, so it ends at
0.108 instead of the reference's 0.011 for 7 steps / shift 11; this module is the reference schedule itself.
"""

from __future__ import annotations

import torch

from pipeline.errors import InputError

_T_MIN = 0.001


def flow_matching_sigmas(steps: int, shift: float) -> list[float]:
    """``steps + 1`` noise levels from 1 down to 0: ``linspace(1, 0.001, N)`` shifted, then 0 appended.

    Host-side floats (float64): each step hands them to the model as scalars, so no tensor is involved.
    """
    if steps < 1:
        raise InputError(f"steps must be at least 1, got {steps}")
    if shift <= 0:
        raise InputError(f"shift must be positive, got {shift}")
    ts = [1.0 + (_T_MIN - 1.0) * i / (steps - 1) for i in range(steps)] if steps > 1 else [1.0]
    return [shift * t / (1.0 + (shift - 1.0) * t) for t in ts] + [0.0]


def model_timestep(sigma: float) -> float:
    """The DiT's timestep input for a noise level: ``sigma · 1000``."""
    return sigma * 1000.0


def euler_step(latent: torch.Tensor, velocity: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """``x ← x + (σ_{i+1} − σ_i)·v`` for ``x_t = (1−t)·x0 + t·ε`` and ``v = ε − x0``; accumulates in fp32."""
    return (latent.float() + (sigma_next - sigma) * velocity.float()).to(latent.dtype)
