from itertools import pairwise

import pytest
import torch

from pipeline.errors import InputError
from pipeline.schedule import euler_step, flow_matching_sigmas, model_timestep


def test_seven_steps_shift_eleven_matches_model_md_example():
    sigmas = flow_matching_sigmas(7, 11.0)
    expected = [1.0, 0.982, 0.957, 0.917, 0.847, 0.689, 0.011, 0.0]
    assert sigmas == pytest.approx(expected, abs=5e-4)


def test_schedule_is_monotone_and_ends_at_zero():
    sigmas = flow_matching_sigmas(20, 7.0)
    assert sigmas[0] == 1.0 and sigmas[-1] == 0.0
    assert all(later < earlier for earlier, later in pairwise(sigmas))


def test_shift_one_is_plain_linspace():
    sigmas = flow_matching_sigmas(4, 1.0)
    assert sigmas[:-1] == pytest.approx(torch.linspace(1, 0.001, 4, dtype=torch.float64).tolist(), abs=1e-15)
    assert flow_matching_sigmas(1, 11.0) == [1.0, 0.0]


@pytest.mark.parametrize(("steps", "shift"), [(0, 11.0), (7, 0.0), (7, -1.0)])
def test_bad_schedule_arguments_raise(steps, shift):
    with pytest.raises(InputError):
        flow_matching_sigmas(steps, shift)


def test_euler_recovers_clean_sample_with_exact_velocity():
    x0 = torch.randn(2, 3)
    noise = torch.randn(2, 3)
    sigmas = flow_matching_sigmas(7, 11.0)
    latent = noise.clone()
    for sigma, sigma_next in pairwise(sigmas):
        latent = euler_step(latent, noise - x0, sigma, sigma_next)
    assert torch.allclose(latent, x0, atol=1e-5)


def test_timestep_is_sigma_times_1000():
    assert model_timestep(0.982) == pytest.approx(982.0)
