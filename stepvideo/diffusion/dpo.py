"""Diffusion-DPO in the flow-matching parameterisation (Video-DPO, the cascade's last stage).

A preference pair is a prompt c, a chosen latent x1^w and a rejected latent x1^l. Both are noised
with the SAME noise x0 and the SAME timestep t (so the two errors differ only by the sample), and
both the policy v_theta and the frozen reference v_ref (the SFT model) predict the velocity:

    x_t^k     = (1 - t) x0 + t x1^k                   k in {w, l}     (flow_matching.interpolate)
    err_m(k)  = || v_m(x_t^k, t, c) - (x1^k - x0) ||^2  (mean over the latent), m in {theta, ref}

Diffusion-DPO (Wallace et al. 2023, eq. 14) bounds the DPO objective of the whole reverse chain by
per-timestep denoising errors; with the velocity in place of the noise prediction it reads

    loss = -log sigmoid( -beta/2 * [ (err_theta(w) - err_ref(w)) - (err_theta(l) - err_ref(l)) ] )

- err_theta(w) - err_ref(w): how much better (negative) the policy denoises the chosen sample than
  the reference does; the same for the rejected one. The loss pushes the first below the second.
- beta: the strength of the KL regulariser towards the reference. It is constant over timesteps:
  carrying Diffusion-DPO's weighting over literally gives beta_t = beta (1 - t)^2, which the
  Flow-DPO study (VideoAlign, arXiv 2501.13918) found reward-hacks. Step-Video's report lowered
  beta from Diffusion-DPO's 5000 (whose gradients exploded and forced a 1e-8 learning rate) and
  raised the learning rate.
- the implicit reward of a sample is r(k) = -beta/2 (err_theta(k) - err_ref(k)); the reward margin
  is r(w) - r(l) (the sigmoid's argument) and the implicit reward accuracy the share of pairs where
  it is > 0.
- `kl_proxy`: the mean squared distance between the policy's and the reference's velocities. For
  the Gaussian step of the sampler the KL between the two next-step distributions is proportional
  to it, so it tracks how far the policy has moved.

An optional `sft_weight` adds the plain flow-matching loss on the chosen sample (a regulariser that
keeps the policy a good denoiser of preferred videos).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _per_sample_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (pred.float() - target.float()).pow(2).flatten(1).mean(dim=1)


def flow_dpo_loss(policy_w: torch.Tensor, policy_l: torch.Tensor, ref_w: torch.Tensor, ref_l: torch.Tensor,
                  target_w: torch.Tensor, target_l: torch.Tensor, beta: float,
                  sft_weight: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The flow-matching DPO loss of a batch of pairs (see the module doc) and its statistics.

    policy_* / ref_*: velocities predicted by the policy (with grad) and the frozen reference (no
    grad) for the chosen (w) and rejected (l) samples, all (B, ...); target_*: x1 - x0 of each.
    Returns (scalar loss, {"implicit_acc", "reward_margin", "reward_chosen", "reward_rejected",
    "kl_proxy", "err_policy_w", "err_policy_l", "err_ref_w", "err_ref_l", "dpo_loss"}), all detached
    batch means."""
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    shapes = {tuple(x.shape) for x in (policy_w, policy_l, ref_w, ref_l, target_w, target_l)}
    if len(shapes) != 1:
        raise ValueError(f"policy, reference and target velocities must share one shape, got {sorted(shapes)}")
    err_pw, err_pl = _per_sample_mse(policy_w, target_w), _per_sample_mse(policy_l, target_l)
    err_rw, err_rl = _per_sample_mse(ref_w, target_w).detach(), _per_sample_mse(ref_l, target_l).detach()
    reward_w = -0.5 * beta * (err_pw - err_rw)
    reward_l = -0.5 * beta * (err_pl - err_rl)
    margin = reward_w - reward_l
    dpo = -F.logsigmoid(margin).mean()
    loss = dpo + sft_weight * err_pw.mean() if sft_weight > 0 else dpo
    with torch.no_grad():
        kl = 0.5 * (_per_sample_mse(policy_w, ref_w) + _per_sample_mse(policy_l, ref_l))
        acc = (margin > 0).float() + 0.5 * (margin == 0).float()
        stats = {"implicit_acc": acc.mean(), "reward_margin": margin.mean(), "reward_chosen": reward_w.mean(),
                 "reward_rejected": reward_l.mean(), "kl_proxy": kl.mean(), "err_policy_w": err_pw.mean(),
                 "err_policy_l": err_pl.mean(), "err_ref_w": err_rw.mean(), "err_ref_l": err_rl.mean(),
                 "dpo_loss": dpo.detach()}
    return loss, {k: v.detach() for k, v in stats.items()}


__all__ = ["flow_dpo_loss"]
