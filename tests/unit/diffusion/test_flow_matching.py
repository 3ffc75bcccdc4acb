"""Flow matching objective, timestep samplers, official schedule parity and the Euler/CFG sampler."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import SHARED
from stepvideo.diffusion.flow_matching import (
    TimestepSampler,
    flow_matching_loss,
    flow_matching_step_loss,
    interpolate,
    time_shift,
    training_pair,
)
from stepvideo.diffusion.sampler import (
    SAMPLER_PRESETS,
    euler_sample,
    flow_schedule,
    guided_denoiser,
    sample,
    sampler_preset,
)

REF = SHARED / "reference" / "stepvideo_scheduler.json"
ref_missing = pytest.mark.skipif(not REF.is_file(), reason="scheduler reference JSON not present")


def _schedules():
    return json.loads(REF.read_text())["schedules"]


# -- official schedule ----------------------------------------------------------------------------


@ref_missing
@pytest.mark.parametrize("reverse", [False, True])
def test_schedule_matches_reference(reverse):
    found = 0
    for s in _schedules():
        if s["reverse"] != reverse:
            continue
        found += 1
        sigmas, timesteps = flow_schedule(s["num_inference_steps"], s["time_shift"], reverse=reverse)
        assert sigmas.dtype == torch.float32
        ref_sig = torch.tensor(s["sigmas"], dtype=torch.float32)
        ref_ts = torch.tensor(s["timesteps"], dtype=torch.float32)
        assert torch.equal(sigmas, ref_sig), (s["time_shift"], (sigmas - ref_sig).abs().max())
        assert torch.equal(timesteps, ref_ts)
        dt = sigmas[1:] - sigmas[:-1]
        assert torch.equal(dt, torch.tensor(s["dt_float32"], dtype=torch.float32))
        f64 = torch.tensor(s["sigmas_exact_float64_formula"], dtype=torch.float64)
        assert (sigmas.double() - f64).abs().max() < 2e-7
    assert found >= 2


@ref_missing
def test_schedule_direction_default():
    sigmas, ts = flow_schedule(10, 13.0)
    assert ts[0] == 0.0 and sigmas[-1] == 1.0 and bool((sigmas[1:] > sigmas[:-1]).all())


@ref_missing
def test_euler_toy_trajectory_matches_reference():
    for s in _schedules():
        toy = s["toy_euler_example"]
        traj = [torch.tensor(toy["x0"], dtype=torch.float32)[None]]

        def fn(x, t):  # the reference's toy model: v = -x + t
            return -x + t.view(-1, 1)

        out = euler_sample(
            fn, traj[0], s["num_inference_steps"], s["time_shift"], s["reverse"],
            callback=lambda i, n, t, x: traj.append(x.clone()),
        )
        ref = torch.tensor(toy["trajectory"], dtype=torch.float32)
        got = torch.cat(traj, dim=0)
        assert got.shape == ref.shape
        assert (got - ref).abs().max() <= 1e-6, (s["time_shift"], s["reverse"])
        assert torch.equal(out[0], got[-1])


def test_presets():
    d, t = SAMPLER_PRESETS["default"], SAMPLER_PRESETS["turbo"]
    assert (d.num_steps, d.shift, d.cfg_scale, d.reverse) == (50, 13.0, 9.0, False)
    assert t.shift == 17.0 and 10 <= t.num_steps <= 15
    assert sampler_preset("turbo", num_steps=15).num_steps == 15
    with pytest.raises(ValueError):
        sampler_preset("nope")
    with pytest.raises(ValueError):
        flow_schedule(0)


# -- sampler on a Gaussian toy with the exact velocity field ----------------------------------------


def _gaussian_velocity(mu, s):
    """Exact E[x1 - x0 | x_t] for x0 ~ N(0,1), x1 ~ N(mu, s^2) (elementwise)."""

    def fn(x, t):
        t = t.view(-1, *([1] * (x.ndim - 1))).double()
        x = x.double()
        var = (1 - t) ** 2 + t**2 * s**2
        return (mu + (t * s**2 - (1 - t)) / var * (x - t * mu)).float()

    return fn


def test_euler_recovers_point_target_exactly():
    # s = 0: all mass at mu; v = (mu - x) / (1 - t) and the last Euler step lands on mu exactly
    mu = torch.tensor([[1.5, -2.0, 0.25]])
    noise = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))

    def fn(x, t):
        return (mu - x) / (1 - t.view(-1, 1))

    for shift in (1.0, 13.0):
        out = euler_sample(fn, noise, num_steps=7, shift=shift)
        assert (out - mu).abs().max() < 1e-5


def test_euler_gaussian_transport():
    g = torch.Generator().manual_seed(1)
    mu, s = 2.0, 0.5
    noise = torch.randn(2, 3, 4, 5, generator=g)
    # the ODE maps x0 -> mu + s * x0 exactly; Euler converges to it at first order
    target = mu + s * noise
    for shift in (1.0, 13.0):
        errs = [(euler_sample(_gaussian_velocity(mu, s), noise, n, shift) - target).abs().max().item() for n in (100, 200, 400)]
        assert errs[0] / errs[1] == pytest.approx(2.0, rel=0.1) and errs[1] / errs[2] == pytest.approx(2.0, rel=0.1)
        assert errs[2] < (0.01 if shift == 1.0 else 0.05)


def test_progress_callback_and_shapes():
    calls = []
    x = torch.zeros(2, 3)
    out = sample(lambda x, t: torch.ones_like(x), x, config=sampler_preset("turbo"), callback=lambda i, n, t, xx: calls.append((i, n)))
    assert len(calls) == 10 and calls[-1] == (9, 10)
    assert torch.allclose(out, torch.ones(2, 3))  # integral of v = 1 over t in [0, 1]


class _FakeDiT(torch.nn.Module):
    """v = mean of llm tokens (masked) broadcast; records batch sizes."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))
        self.batches = []

    def forward(self, x, t, llm_emb, llm_mask=None, clip_emb=None, clip_mask=None):
        self.batches.append(x.shape[0])
        m = llm_mask.float() if llm_mask is not None else torch.ones(llm_emb.shape[:2])
        mean = (llm_emb[..., 0] * m).sum(1) / m.sum(1)
        return self.w * mean.view(-1, *([1] * (x.ndim - 1))).expand_as(x)


def test_cfg_combination_and_batching():
    model = _FakeDiT()
    cond = {"llm_emb": torch.full((2, 5, 3), 2.0), "llm_mask": torch.ones(2, 5, dtype=torch.bool)}
    # negative prompt: shorter, batch 1 (broadcast), padded internally with masked zeros
    uncond = {"llm_emb": torch.full((1, 2, 3), 0.5)}
    fn = guided_denoiser(model, cond, uncond, cfg_scale=3.0)
    v = fn(torch.zeros(2, 1, 1, 1, 1), torch.zeros(2))
    assert model.batches == [4]  # one doubled batch
    assert torch.allclose(v, torch.full_like(v, 0.5 + 3.0 * (2.0 - 0.5)))
    fn1 = guided_denoiser(model, cond, None)
    assert torch.allclose(fn1(torch.zeros(2, 1, 1, 1, 1), torch.zeros(2)), torch.full((2, 1, 1, 1, 1), 2.0))
    out = sample(model, torch.zeros(2, 1, 1, 1, 1), cond, uncond, config=sampler_preset("default", num_steps=3, cfg_scale=3.0))
    assert torch.allclose(out, torch.full_like(out, 5.0), atol=1e-5)


# -- objective ------------------------------------------------------------------------------------


def test_interpolation_and_target():
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(3, 2, 4, 5, 6, generator=g)
    t = torch.tensor([0.0, 0.5, 1.0])
    x_t, target, noise = training_pair(x1, t, generator=g)
    assert x_t.shape == target.shape == noise.shape == x1.shape
    assert torch.equal(x_t[0], noise[0]) and torch.equal(x_t[2], x1[2])
    assert torch.allclose(x_t[1], 0.5 * (noise[1] + x1[1]))
    assert torch.equal(target, x1 - noise)
    # moving along the target velocity from x_t reaches the data at t = 1
    assert torch.allclose(x_t + (1 - t).view(-1, 1, 1, 1, 1) * target, x1, atol=1e-6)
    with pytest.raises(ValueError):
        interpolate(noise, x1[:2], t)


def test_loss_values_and_shapes():
    pred = torch.zeros(4, 2, 3)
    target = torch.ones(4, 2, 3)
    assert flow_matching_loss(pred, target).item() == 1.0
    per = flow_matching_loss(pred, target * torch.arange(4.0).view(-1, 1, 1), reduction="none")
    assert per.shape == (4,) and torch.allclose(per, torch.arange(4.0) ** 2)
    w = torch.tensor([1.0, 0.0, 0.0, 0.0])
    assert flow_matching_loss(pred, target, weight=w).item() == 0.25
    with pytest.raises(ValueError):
        flow_matching_loss(pred, target[:2])

    # the exact conditional velocity gives zero loss
    x1 = torch.randn(2, 3, 4)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(2, 3, 4, generator=g)
    loss, aux = flow_matching_step_loss(lambda x, t: x1 - noise, x1, noise=noise, generator=g)
    assert loss.item() == 0.0 and aux["t"].shape == (2,)


@pytest.mark.parametrize("kind", ["uniform", "logit_normal", "shifted"])
def test_timestep_samplers(kind):
    s = TimestepSampler(kind=kind, shift=5.0)
    a = s.sample(4096, generator=torch.Generator().manual_seed(3))
    b = s.sample(4096, generator=torch.Generator().manual_seed(3))
    c = s.sample(4096, generator=torch.Generator().manual_seed(4))
    assert a.dtype == torch.float32 and a.shape == (4096,)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert bool((a >= 0).all() and (a <= 1).all())
    if kind == "uniform":
        assert abs(a.mean().item() - 0.5) < 0.02
    if kind == "logit_normal":
        assert abs(a.median().item() - 0.5) < 0.03
    if kind == "shifted":  # shift > 1 puts more mass near noise (t near 0)
        assert a.mean().item() < 0.35
        u = torch.rand(4096, generator=torch.Generator().manual_seed(3))
        assert torch.allclose(a, 1 - time_shift(1 - u, 5.0))
    r = TimestepSampler(kind=kind, t_min=0.1, t_max=0.9).sample(1000, generator=torch.Generator().manual_seed(0))
    assert bool((r >= 0.1).all() and (r <= 0.9).all())


def test_sampler_validation():
    with pytest.raises(ValueError):
        TimestepSampler(kind="beta")
    with pytest.raises(ValueError):
        TimestepSampler(std=0)
    with pytest.raises(ValueError):
        TimestepSampler(t_min=0.5, t_max=0.5)
