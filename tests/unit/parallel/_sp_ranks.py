"""Two ranks under torchrun (gloo): the demo-sized DiT at sequence parallel 2 against the same model at
SP 1 (each rank also runs the single-device forward), forward and gradients; writes OUT/rank{r}.json,
and a 2-step generation at SP 2 vs SP 1; rank 0 writes OUT/model/ (the weights after one SGD step taken at SP 2) with OUT/sp2_out.safetensors
(its SP-2 forward on a fixed input) for the checkpoint-portability check at one rank.

    torchrun --nproc_per_node 2 tests/unit/parallel/_sp_ranks.py OUT
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from stepvideo.models.dit import DiTConfig, StepVideoDiT  # noqa: E402
from stepvideo.parallel import init_sequence_parallel  # noqa: E402
from stepvideo.training.engine import init_distributed  # noqa: E402

# (frames, latent h, w, patch): 2*4*4 = 32 tokens split evenly; 3*3*3 = 27 (odd: one pad token);
# 3 x 6 x 6 at patch 2 = 27 tokens
CASES = {"even": (2, 4, 4, 1), "padded": (3, 3, 3, 1), "patch2": (3, 6, 6, 2)}


def build(patch: int, checkpointing: bool = False) -> StepVideoDiT:
    torch.manual_seed(0)
    cfg = DiTConfig.preset("demo", num_heads=4, head_dim=16, patch_size=patch, gradient_checkpointing=checkpointing)
    return StepVideoDiT(cfg).train()


def inputs(f: int, h: int, w: int, seed: int = 1) -> tuple:
    g = torch.Generator().manual_seed(seed)
    b = 2
    x = torch.randn(b, f, 16, h, w, generator=g)
    t = torch.rand(b, generator=g)
    llm, clip = torch.randn(b, 7, 64, generator=g), torch.randn(b, 5, 32, generator=g)
    llm_mask = torch.ones(b, 7, dtype=torch.bool)
    llm_mask[1, 4:] = False  # a padded caption
    target = torch.randn(b, f, 16, h, w, generator=g)
    return (x, t, llm, llm_mask, clip, None), target


def forward_backward(model, args, target):
    x = args[0].clone().requires_grad_(True)
    out = model(x, *args[1:])
    loss = (out - target).pow(2).mean()
    model.zero_grad(set_to_none=True)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    return out.detach(), loss.detach(), grads, x.grad.detach().clone()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def main() -> None:
    out_dir = Path(sys.argv[1])
    rank, world = init_distributed()
    sp = init_sequence_parallel(2)
    report: dict = {"rank": rank, "world": world, "sp_rank": sp.sp_rank, "dp_world": sp.dp_world}
    for name, (f, h, w, patch) in CASES.items():
        for ckpt in (False, True):
            model = build(patch, ckpt)
            args, target = inputs(f, h, w)
            ref_out, ref_loss, ref_grads, ref_xgrad = forward_backward(model, args, target)
            model.set_sequence_parallel(sp)
            out, loss, grads, xgrad = forward_backward(model, args, target)
            # the ranks of an SP group are data-parallel replicas to the engine: their mean gradient is the one
            for g in [*grads.values(), xgrad]:
                dist.all_reduce(g)
                g /= sp.degree
            report[f"{name}{'-ckpt' if ckpt else ''}"] = {
                "tokens": f * (h // patch) * (w // patch),
                "forward_rel": rel(out, ref_out), "loss_rel": rel(loss, ref_loss),
                "grad_rel": max(rel(grads[k], ref_grads[k]) for k in ref_grads),
                "grad_abs": max(float((grads[k] - ref_grads[k]).abs().max()) for k in ref_grads),
                "input_grad_rel": rel(xgrad, ref_xgrad),
            }
    # one SGD step at SP 2 (mean gradients), then the weights and the SP-2 forward for the 1-rank check
    model = build(1)
    model.set_sequence_parallel(sp)
    args, target = inputs(*CASES["padded"][:3])
    _, _, grads, _ = forward_backward(model, args, target)
    with torch.no_grad():
        for n, p in model.named_parameters():
            dist.all_reduce(grads[n])
            p -= 0.1 * grads[n] / sp.degree
        model.eval()
        out = model(*inputs(*CASES["padded"][:3], seed=5)[0])
    report["ulysses"] = sp._attn is not None  # DeepSpeed's DistributedAttention ran
    # generation: every rank of the group samples the same video (same seed, the gathered output)
    from stepvideo.pipelines.t2v import T2VPipeline

    if rank == 0:  # (transformers writes a model folder from the main process only: one writer, every rank loads)
        T2VPipeline.random("demo", seed=0).save_pretrained(out_dir / "pipe")
    dist.barrier()
    pipe = T2VPipeline.from_pretrained(out_dir / "pipe")
    kw = dict(num_frames=17, height=48, width=48, steps=2, seed=0, output_type="latent")  # 3x3x3 tokens
    ref = pipe.generate("a red circle", **kw)
    pipe.dit.set_sequence_parallel(sp)
    video = pipe.generate("a red circle", **kw)
    report["generate_rel"] = float((video - ref).abs().max() / ref.abs().max())
    if rank == 0:
        model.save_pretrained(out_dir / "model")
        save_file({"out": out.contiguous()}, str(out_dir / "sp2_out.safetensors"))
    (out_dir / f"rank{rank}.json").write_text(json.dumps(report, indent=2))
    dist.barrier()


if __name__ == "__main__":
    main()
