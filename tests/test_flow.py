import pytest
import torch

from mvdit import MvditError
from mvdit.flow import (
    euler_sample,
    interpolate,
    sample_timesteps,
    shift_for_tokens,
    shift_time,
    timestep_schedule,
    velocity_target,
)


def test_interpolant_endpoints_and_velocity():
    x0, noise = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    torch.testing.assert_close(interpolate(x0, noise, torch.zeros(2)), x0)
    torch.testing.assert_close(interpolate(x0, noise, torch.ones(2)), noise)
    # d x_t / dt equals the velocity target
    t = torch.full((2,), 0.3)
    dt = 1e-3
    fd = (interpolate(x0, noise, t + dt) - interpolate(x0, noise, t)) / dt
    torch.testing.assert_close(fd, velocity_target(x0, noise), rtol=1e-3, atol=1e-3)


def test_logit_normal_and_shift():
    g = torch.Generator().manual_seed(0)
    t = sample_timesteps(20000, g)
    assert 0 < t.min() and t.max() < 1 and abs(t.mean() - 0.5) < 0.01
    shifted = sample_timesteps(20000, torch.Generator().manual_seed(0), shift=3.0)
    assert shifted.mean() > t.mean() + 0.1  # a shift > 1 spends more time at high noise
    assert shift_time(0.5, 3.0) == pytest.approx(0.75)
    assert shift_for_tokens(256) == pytest.approx(1.0) and shift_for_tokens(4096) == pytest.approx(
        3.0
    )
    assert 1.0 < shift_for_tokens(1344) < 3.0


@pytest.mark.parametrize("steps", [1, 4, 40])
def test_euler_counts_steps_and_evaluations(steps):
    calls = []

    def model(x, t, text):
        calls.append(x.shape[0])
        return torch.zeros_like(x)

    noise = torch.randn(3, 2)
    cond, uncond = {"text": torch.ones(3, 1)}, {"text": torch.zeros(3, 1)}
    _, nfe = euler_sample(model, noise, timestep_schedule(steps), cond, uncond, guidance=4.0)
    assert nfe == 2 * steps and calls == [6] * steps  # CFG runs both branches as one batch
    calls.clear()
    _, nfe = euler_sample(model, noise, timestep_schedule(steps), cond, None, guidance=1.0)
    assert nfe == steps and calls == [3] * steps


def test_euler_is_exact_for_straight_paths():
    # the true velocity field of a single point x0 along straight paths transports noise to x0
    x0 = torch.tensor([[1.5, -2.0]])

    def model(x, t, text):
        return (x - x0) / t.view(-1, 1)

    noise = torch.randn(1, 2)
    out, _ = euler_sample(model, noise, [1.0, 0.5, 0.25, 0.0], {"text": torch.zeros(1, 1)})
    torch.testing.assert_close(out, x0)


def test_cfg_extrapolates_between_branches():
    def model(x, t, text):
        return text.expand_as(x)

    out, _ = euler_sample(
        model,
        torch.zeros(1, 1),
        [1.0, 0.0],
        {"text": torch.ones(1, 1)},
        {"text": torch.zeros(1, 1)},
        guidance=3.0,
    )
    assert out.item() == pytest.approx(-3.0)  # x += (0 - 1) * (0 + 3 * (1 - 0))


@pytest.mark.parametrize("bad", [[1.0], [1.0, 1.0, 0.0], [0.5, 0.7, 0.0], [1.5, 0.0]])
def test_bad_schedules_are_rejected(bad):
    with pytest.raises(MvditError):
        euler_sample(lambda x, t, text: x, torch.zeros(1, 1), bad, {"text": torch.zeros(1, 1)})


def test_schedule_shape():
    s = timestep_schedule(4, shift=3.0)
    assert len(s) == 5 and s[0] == 1.0 and s[-1] == 0.0
    with pytest.raises(MvditError):
        timestep_schedule(0)
