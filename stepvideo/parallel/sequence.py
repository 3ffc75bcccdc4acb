"""Sequence parallel for the DiT (DeepSpeed-Ulysses).

The ranks of a job are cut into sequence-parallel (SP) groups of ``degree`` consecutive ranks (one
node's GPUs share an all-to-all). Every rank of a group sees the same samples; the DiT's video tokens
are split over the group (rank ``r`` holds tokens ``[r*L, (r+1)*L)``, ``L = ceil(N / degree)``; the
last ranks hold zero padding when ``N % degree != 0``, and the pad is masked out of the attention keys).
Around self-attention an all-to-all turns (sequence shard, all heads) into (full sequence, head shard)
and back: DeepSpeed's ``deepspeed.sequence.layer.DistributedAttention``. Everything else in a block is
per token (RMSNorm, 3D RoPE with each rank's own positions, FFN) or attends from the local queries to
the whole text (cross-attention), so it needs no communication. The final projection is gathered to
the full sequence before the unpatchify.

Gradients. :meth:`SequenceParallel.gather`'s backward sums the output gradient over the group and
keeps the local slice (Megatron's reduce-scatter convention): the ranks of an SP group then look like
data-parallel replicas computing the same loss, and the *mean* of their parameter gradients is the
gradient of that loss. The engine's data-parallel all-reduce (a mean over all ranks, ZeRO 0-3) thus
gives the right gradient with no scaling: mean over (dp x sp) ranks = mean over the dp groups.

Data-parallel position: ``dp_rank = rank // degree``, ``dp_world = world // degree``.

The model knows nothing of this module: it calls the few methods of the context it is given
(``shard``, ``pad_mask``, ``attention``, ``gather``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from stepvideo.errors import InputError

__all__ = ["SequenceParallel", "init_sequence_parallel", "sp_layout"]


def sp_layout(rank: int, world: int, degree: int) -> dict[str, Any]:
    """Where ``rank`` sits: its SP group (consecutive ranks), its rank in it, its data-parallel rank/world."""
    if degree < 1 or world % degree:
        raise InputError(f"sp_degree {degree} must be >= 1 and divide the number of ranks {world}")
    first = rank - rank % degree
    return {"group_ranks": list(range(first, first + degree)), "sp_rank": rank % degree,
            "dp_rank": rank // degree, "dp_world": world // degree}


def _deepspeed_comm():
    """deepspeed.comm on the existing torch process group (quietly; the CPU accelerator without a GPU)."""
    if "DS_ACCELERATOR" not in os.environ and not torch.cuda.is_available():
        os.environ["DS_ACCELERATOR"] = "cpu"
    import deepspeed.comm as ds_comm

    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning)
    if not ds_comm.is_initialized():
        with contextlib.redirect_stdout(io.StringIO()):
            ds_comm.init_distributed(dist_backend=dist.get_backend(), auto_mpi_discovery=False,
                                     dist_init_required=False)
    return ds_comm


class _LocalAttention(torch.nn.Module):
    """The attention each rank runs on (full sequence, its heads): stepvideo.models.attention's kernel."""

    def forward(self, q, k, v, key_mask=None, backend="auto"):
        from stepvideo.models.attention import attention

        return attention(q, k, v, key_mask, backend=backend)


class _Gather(torch.autograd.Function):
    """All-gather along ``dim``; backward: sum over the group, keep the local slice (see the module doc)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group, degree: int, sp_rank: int, dim: int) -> torch.Tensor:
        ctx.group, ctx.sp_rank, ctx.dim, ctx.local = group, sp_rank, dim, x.shape[dim]
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(degree)]
        dist.all_gather(parts, x, group=group)
        return torch.cat(parts, dim=dim)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.group)
        return grad.narrow(ctx.dim, ctx.sp_rank * ctx.local, ctx.local).contiguous(), None, None, None, None


@dataclass(eq=False)
class SequenceParallel:
    """One rank's SP context: its group and position, the shard/gather helpers and the Ulysses attention."""

    group: Any  # torch ProcessGroup of the SP group
    degree: int
    sp_rank: int
    dp_rank: int
    dp_world: int
    group_ranks: list[int] = field(default_factory=list)
    _attn: Any = field(default=None, repr=False)

    # -- layout

    def local_len(self, n: int) -> int:
        """Tokens per rank for a sequence of ``n`` (the padded length is ``degree * local_len(n)``)."""
        return -(-n // self.degree)

    def shard(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """This rank's slice of ``x`` along ``dim`` (zero-padded to ``degree * local_len``): a copy, so the
        full tensor is freed once the caller drops it."""
        n = x.shape[dim]
        local = self.local_len(n)
        pad = self.degree * local - n
        if pad:
            shape = list(x.shape)
            shape[dim] = pad
            x = torch.cat([x, x.new_zeros(shape)], dim=dim)
        return x.narrow(dim, self.sp_rank * local, local).clone()

    def pad_mask(self, n: int, batch: int, device) -> torch.Tensor | None:
        """(batch, padded length) key mask, True on the ``n`` real tokens; None when nothing is padded."""
        padded = self.degree * self.local_len(n)
        if padded == n:
            return None
        return (torch.arange(padded, device=device) < n)[None].expand(batch, padded)

    def gather(self, x: torch.Tensor, n: int, dim: int = 1) -> torch.Tensor:
        """The full sequence from every rank's shard along ``dim``, trimmed to ``n`` (differentiable)."""
        full = _Gather.apply(x, self.group, self.degree, self.sp_rank, dim)
        return full.narrow(dim, 0, n)

    # -- attention

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None = None,
                  backend: str = "auto") -> torch.Tensor:
        """Ulysses self-attention: q/k/v (B, L, heads, D) sequence shards -> (B, L, heads, D) output shard.

        All-to-all to (B, degree * L, heads / degree, D), attention over the whole sequence with
        ``key_mask`` (B, degree * L) (the pad), all-to-all back. DeepSpeed's DistributedAttention."""
        heads = q.shape[2]
        if heads % self.degree:
            raise InputError(f"sequence parallel needs the head count ({heads}) divisible by sp_degree {self.degree}")
        if self._attn is None:
            _deepspeed_comm()
            from deepspeed.sequence.layer import DistributedAttention

            # batch-first layout: scatter the heads (dim 2), gather the sequence (dim 1)
            self._attn = DistributedAttention(_LocalAttention(), self.group, scatter_idx=2, gather_idx=1,
                                              num_kv_heads=heads)
        return self._attn(q, k, v, 0, None, key_mask, backend)


_CONTEXTS: dict[tuple[int, int], SequenceParallel] = {}


def init_sequence_parallel(degree: int) -> SequenceParallel | None:
    """This rank's SP context for ``degree`` (None for 1: no sequence parallel). Collective: every rank
    of the default process group calls it (each creates every SP group, as torch requires); the groups
    are made once per process and degree."""
    degree = int(degree)
    if degree == 1:
        return None
    if not dist.is_initialized():
        raise InputError(f"sp_degree {degree} needs a process group (run under torchrun with a multiple of "
                         f"{degree} ranks)")
    rank, world = dist.get_rank(), dist.get_world_size()
    key = (degree, world)
    if key not in _CONTEXTS:
        layout = sp_layout(rank, world, degree)
        mine = None
        for first in range(0, world, degree):
            group = dist.new_group(list(range(first, first + degree)))
            if first == layout["group_ranks"][0]:
                mine = group
        _CONTEXTS[key] = SequenceParallel(group=mine, degree=degree, sp_rank=layout["sp_rank"],
                                          dp_rank=layout["dp_rank"], dp_world=layout["dp_world"],
                                          group_ranks=layout["group_ranks"])
    return _CONTEXTS[key]
