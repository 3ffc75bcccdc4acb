"""Frozen Linear weights stored in float8_e4m3fn (stepvideo.models.fp8, issue 24): the rounding
bound, a tiny DiT's forward against fp32 and bf16 storage, ~1/4 of fp32's bytes, and LoRA on an fp8
base (gradients reach only the adapters)."""

from __future__ import annotations

import copy

import pytest
import torch

from stepvideo.models.dit import DiTConfig, StepVideoDiT
from stepvideo.models.fp8 import FP8, FP8Linear, linear_weight_bytes, quantize_frozen_linears, quantize_weight
from stepvideo.training.lora import LoraSpec, apply_lora, lora_parameters

# relative output error ||y - y_fp32|| / ||y_fp32|| of the tiny DiTs' forward (measured: bf16
# storage 0.04%, fp8 per row 0.55-0.7%, fp8 per tensor 0.54-0.72%)
BF16_BOUND, FP8_BOUND = 2e-3, 2e-2


def _dit(preset="demo"):
    torch.manual_seed(0)
    return StepVideoDiT(DiTConfig.preset(preset)).eval().requires_grad_(False)


def _inputs(c, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, 2, c.in_channels, 8, 8, generator=g), torch.rand(2, generator=g),
            torch.randn(2, 16, c.llm_dim, generator=g), torch.randn(2, 8, c.clip_dim, generator=g))


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def test_quantize_weight_rounding_and_scale():
    w = torch.randn(64, 96) * torch.logspace(-3, 1, 64)[:, None]  # rows of very different magnitudes
    w8, scale = quantize_weight(w, "row")
    assert w8.dtype == FP8 and scale.shape == (64, 1) and scale.dtype == torch.float32
    assert torch.allclose(w8.float().abs().amax(dim=1), torch.full((64,), 448.0))
    back = w8.float() * scale
    normal = (w / scale).abs() >= 2.0**-6  # e4m3's normal range: 3 mantissa bits, half-ulp 2^-4
    assert ((back - w).abs() <= 2.0**-4 * w.abs() + 1e-12)[normal].all()
    _, s1 = quantize_weight(w, "tensor")
    assert s1.shape == (1, 1)
    with pytest.raises(ValueError, match="granularity"):
        quantize_weight(w, "col")


@pytest.mark.parametrize("preset", ["demo", "small"])
def test_dit_forward_error_against_fp32_and_bf16_storage(preset):
    m = _dit(preset)
    args = _inputs(m.config)
    with torch.no_grad():
        ref = m(*args[:3], clip_emb=args[3])
        bf = copy.deepcopy(m)
        for lin in bf.transformer_blocks.modules():
            if type(lin) is torch.nn.Linear:
                lin.weight.data = lin.weight.data.bfloat16().float()
        e_bf16 = _rel(bf(*args[:3], clip_emb=args[3]), ref)
        errs = {}
        for gran in ("row", "tensor"):
            q = copy.deepcopy(m)
            assert quantize_frozen_linears(q.transformer_blocks, gran) == 7 * m.config.num_layers
            errs[gran] = _rel(q(*args[:3], clip_emb=args[3]), ref)
    assert e_bf16 < BF16_BOUND
    assert all(e_bf16 < e < FP8_BOUND for e in errs.values()), (e_bf16, errs)


def test_stored_bytes_are_a_quarter_of_fp32():
    m = _dit("small")
    fp32 = linear_weight_bytes(m.transformer_blocks)
    quantize_frozen_linears(m.transformer_blocks)
    fp8 = linear_weight_bytes(m.transformer_blocks)
    assert 0.25 <= fp8 / fp32 < 0.26  # 1 B per element + 4 B per output row
    assert all(b.dtype in (FP8, torch.float32) for n, b in m.transformer_blocks.named_buffers())
    assert all(lin.weight.dtype == FP8 for lin in m.transformer_blocks.modules() if isinstance(lin, FP8Linear))


def test_input_gradient_matches_the_dequantized_linear_and_nothing_else_is_kept():
    lin = torch.nn.Linear(32, 48, bias=True).requires_grad_(False)
    q = FP8Linear.from_linear(lin)
    x = torch.randn(5, 32, requires_grad=True)
    y = q(x)
    w = q.weight.float() * q.scale
    x2 = x.detach().clone().requires_grad_(True)
    ref = torch.nn.functional.linear(x2, w, lin.bias)
    assert torch.allclose(y, ref, atol=1e-6)
    g = torch.randn_like(y)
    y.backward(g)
    ref.backward(g)
    assert torch.allclose(x.grad, x2.grad, atol=1e-5)
    assert not list(q.parameters())  # buffers only: frozen by construction
    with pytest.raises(ValueError, match="frozen"):
        FP8Linear.from_linear(torch.nn.Linear(4, 4))


def test_lora_on_an_fp8_base_trains_only_the_adapters():
    m = StepVideoDiT(DiTConfig.preset("demo")).train()
    base = copy.deepcopy(m).eval().requires_grad_(False)
    apply_lora(m, LoraSpec(rank=4, alpha=4.0))
    n = quantize_frozen_linears(m.transformer_blocks)
    assert n == 7 * m.config.num_layers  # every peft base_layer, no lora_A / lora_B
    lora = lora_parameters(m)
    assert lora and all(p.dtype == torch.float32 for p in lora)
    assert {id(p) for p in m.parameters() if p.requires_grad} == {id(p) for p in lora}
    args = _inputs(m.config)
    with torch.no_grad():  # B = 0: the fp8 base's output
        assert quantize_frozen_linears(base.transformer_blocks) == n
        assert torch.allclose(m.eval()(*args[:3], clip_emb=args[3]), base(*args[:3], clip_emb=args[3]), atol=1e-6)
    m.train()
    w8 = {k: v.clone() for k, v in m.named_buffers() if v.dtype == FP8}
    opt = torch.optim.AdamW(lora, lr=1e-2)
    losses = []
    for _ in range(3):
        out = m(*args[:3], clip_emb=args[3])
        loss = (out - args[0]).pow(2).mean()
        loss.backward()
        assert all(p.grad is not None for p in lora)
        assert all(p.grad is None for p in m.parameters() if not p.requires_grad)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    assert all(torch.equal(v.view(torch.uint8), w8[k].view(torch.uint8)) for k, v in m.named_buffers() if k in w8)
