"""LoRA fine-tuning of the DiT (issue 24): peft injection on the official module paths, frozen base,
training lowers the loss, scale 0 is the base bitwise, the explicit merge formula, peft / ComfyUI /
diffusers files, and the `lora` / `generate --lora` commands."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from stepvideo.cli import app
from stepvideo.diffusion.flow_matching import flow_matching_loss, training_pair
from stepvideo.errors import InputError, MissingError
from stepvideo.models.dit import DiTConfig, StepVideoDiT
from stepvideo.models.lora import fuse_lora, load_adapter, merge_lora, parse_lora_arg
from stepvideo.training.lora import (DEFAULT_TARGETS, LoraSpec, adapter_of, adapter_state_dict, apply_lora,
                                     base_state_dict, export_lora, lora_parameters, save_adapter, set_scale)

runner = CliRunner()
SPEC = LoraSpec(rank=4, alpha=8.0)
OFFICIAL = ("attn1.wqkv", "attn1.wo", "attn2.wq", "attn2.wkv", "attn2.wo", "ff.net.0.proj", "ff.net.2")


def _dit(seed=0, **kw) -> StepVideoDiT:
    torch.manual_seed(seed)
    model = StepVideoDiT(DiTConfig.preset("demo", **kw)).eval()
    with torch.no_grad():  # non-trivial norms/biases so every path matters
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


def _inputs(model, b=2, f=1, h=4, w=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    c = model.config
    return dict(x=torch.randn(b, f, c.in_channels, h, w, generator=g), t=torch.rand(b, generator=g),
                llm_emb=torch.randn(b, 5, c.llm_dim, generator=g), clip_emb=torch.randn(b, 3, c.clip_dim, generator=g))


@torch.no_grad()
def _randomize_b(model, seed=3, std=0.05):
    """A trained-looking adapter: peft starts B at zero (a no-op), so give B values."""
    g = torch.Generator().manual_seed(seed)
    for n, p in model.named_parameters():
        if ".lora_B." in n:
            p.copy_(std * torch.randn(p.shape, generator=g))


def _lora_model(seed=0):
    base = _dit(seed)
    model = apply_lora(copy.deepcopy(base), SPEC)
    _randomize_b(model)
    return base, model.eval()


def _expected_modules(n_layers=2):
    return sorted(f"transformer_blocks.{i}.{t}" for i in range(n_layers) for t in OFFICIAL)


# ----------------------------------------------------------------------------------------------
# injection, freezing, training


def test_default_targets_are_the_official_projections_and_paths_stay_plain():
    assert DEFAULT_TARGETS == OFFICIAL
    model = apply_lora(_dit(), SPEC)
    names = {n for n, _ in model.named_modules()}
    for m in _expected_modules():
        assert f"{m}.lora_A.default" in names and f"{m}.base_layer" in names
    assert not any(n.startswith("base_model") for n in names)
    assert sorted(k[: -len(".lora_A.weight")] for k in adapter_state_dict(model) if k.endswith("lora_A.weight")) \
        == _expected_modules()
    base = base_state_dict(model)
    assert set(base) == set(_dit().state_dict())  # the base's own names, nothing of the adapter


def test_only_adapter_parameters_receive_gradients():
    model = apply_lora(_dit(), SPEC).train()
    _randomize_b(model)  # with B = 0 the gradient of A is exactly zero
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert len(trainable) == 2 * len(_expected_modules())
    out = model(**_inputs(model))
    out.square().mean().backward()
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, n
        else:
            assert p.grad is None, n


def test_a_few_steps_on_a_fixed_batch_lower_the_flow_matching_loss():
    model = apply_lora(_dit(), LoraSpec(rank=4, alpha=4.0)).train()
    inp = _inputs(model, b=2)
    g = torch.Generator().manual_seed(7)
    x_t, target, _ = training_pair(inp["x"], inp["t"], generator=g)
    opt = torch.optim.AdamW(lora_parameters(model), lr=3e-3)
    before = {k: v.clone() for k, v in base_state_dict(model).items()}
    losses = []
    for _ in range(12):
        loss = flow_matching_loss(model(x_t, inp["t"], inp["llm_emb"], clip_emb=inp["clip_emb"]), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses
    after = base_state_dict(model)
    assert all(torch.equal(before[k], after[k]) for k in before)  # the base never moved


def test_bad_specs_are_input_errors():
    for kw in ({"rank": 0}, {"alpha": -1.0}, {"dropout": 1.0}, {"target_modules": ()}):
        with pytest.raises(InputError):
            LoraSpec(**kw)
    with pytest.raises(InputError, match="attn3.wq"):
        apply_lora(_dit(), LoraSpec(target_modules=("attn3.wq",)))


# ----------------------------------------------------------------------------------------------
# scale and merge


def test_scale_zero_is_bitwise_the_base_and_scale_one_is_not():
    base, model = _lora_model()
    inp = _inputs(base)
    with torch.no_grad():
        ref = base(**inp)
        assert not torch.equal(model(**inp), ref)
        set_scale(model, 0.0)
        assert torch.equal(model(**inp), ref)
        set_scale(model, 1.0)
        assert not torch.equal(model(**inp), ref)
        fused = fuse_lora(copy.deepcopy(base), adapter_of(model, SPEC), 0.0)
        assert torch.equal(fused(**inp), ref)
    assert all(p.requires_grad for p in lora_parameters(model))  # set_scale left training state alone


def test_merge_is_w_plus_scale_alpha_over_rank_b_a_and_matches_the_adapter_model():
    base, model = _lora_model()
    adapter = adapter_of(model, SPEC)
    scale = 0.7
    merged = merge_lora(base.state_dict(), adapter, scale)
    assert adapter.modules == _expected_modules()
    for m in adapter.modules:
        w = base.state_dict()[m + ".weight"].double()
        a = adapter.weights[m + ".lora_A.weight"].double()
        b = adapter.weights[m + ".lora_B.weight"].double()
        expected = w + scale * (SPEC.alpha / SPEC.rank) * (b @ a)
        assert (merged[m + ".weight"].double() - expected).abs().max() < 1e-6
        assert not torch.equal(merged[m + ".weight"], base.state_dict()[m + ".weight"])
    untouched = set(merged) - {m + ".weight" for m in adapter.modules}
    assert all(merged[k] is base.state_dict()[k] or torch.equal(merged[k], base.state_dict()[k]) for k in untouched)

    merged_model = _dit()
    merged_model.load_state_dict(merged)
    set_scale(model, scale)
    inp = _inputs(base)
    with torch.no_grad():
        torch.testing.assert_close(merged_model(**inp), model(**inp), atol=1e-5, rtol=1e-5)
        fused = fuse_lora(copy.deepcopy(base), adapter, scale)
        assert torch.equal(fused.state_dict()["transformer_blocks.1.ff.net.2.weight"],
                           merged["transformer_blocks.1.ff.net.2.weight"])


def test_merge_refuses_an_adapter_for_another_model(tmp_path):
    _, model = _lora_model()
    save_adapter(tmp_path / "a", model, SPEC)
    other = StepVideoDiT(DiTConfig.preset("demo", num_layers=1))
    with pytest.raises(InputError, match="adapter_model.safetensors.*transformer_blocks.1"):
        fuse_lora(other, tmp_path / "a")
    wide = StepVideoDiT(DiTConfig.preset("demo", head_dim=16))
    with pytest.raises(InputError, match="adapter_model.safetensors"):
        fuse_lora(wide, tmp_path / "a")


# ----------------------------------------------------------------------------------------------
# files


def test_saved_adapter_loads_with_peft_and_gives_identical_outputs(tmp_path):
    from peft import PeftModel, set_peft_model_state_dict

    base, model = _lora_model()
    folder = save_adapter(tmp_path / "adapter", model, SPEC, lineage={"data_version": "abc"})
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors",
                                                         "lineage.json"]
    assert json.loads((folder / "lineage.json").read_text())["lora_spec"]["rank"] == 4
    cfg = json.loads((folder / "adapter_config.json").read_text())
    assert (cfg["r"], cfg["lora_alpha"], cfg["peft_type"]) == (4, 8.0, "LORA")
    inp = _inputs(base)
    with torch.no_grad():
        ref = model(**inp)
        peft_model = PeftModel.from_pretrained(copy.deepcopy(base), folder).eval()
        assert torch.equal(peft_model(**inp), ref)
        exported = export_lora(folder, "peft", tmp_path / "exported")
        assert torch.equal(PeftModel.from_pretrained(copy.deepcopy(base), exported).eval()(**inp), ref)
        injected = apply_lora(copy.deepcopy(base), SPEC).eval()
        loaded = load_adapter(folder)
        res = set_peft_model_state_dict(injected, loaded.weights)
        assert not res.unexpected_keys
        assert torch.equal(injected(**inp), ref)
    assert loaded.lineage["data_version"] == "abc"
    assert loaded.alphas == {m: 8.0 for m in _expected_modules()}


def test_comfyui_file_has_the_official_names_and_explicit_alphas(tmp_path):
    _, model = _lora_model()
    adapter = adapter_of(model, SPEC)
    out = export_lora(save_adapter(tmp_path / "a", model, SPEC), "comfyui", tmp_path / "style.safetensors")
    with safe_open(str(out), "pt") as fh:
        keys = set(fh.keys())
        alpha = fh.get_tensor("diffusion_model.transformer_blocks.0.attn1.wqkv.alpha")
        a = fh.get_tensor("diffusion_model.transformer_blocks.0.attn1.wqkv.lora_A.weight")
    expected = {f"diffusion_model.{m}.{s}" for m in _expected_modules()
                for s in ("lora_A.weight", "lora_B.weight", "alpha")}
    assert keys == expected
    assert alpha.ndim == 0 and alpha.item() == 8.0
    assert torch.equal(a, adapter.weights["transformer_blocks.0.attn1.wqkv.lora_A.weight"])
    back = load_adapter(out)  # no config beside it: the alphas come from the file
    assert back.alphas == adapter.alphas
    assert all(torch.equal(back.weights[k], v) for k, v in adapter.weights.items())


def test_diffusers_file_has_the_transformer_prefix_and_alpha_in_the_metadata(tmp_path):
    _, model = _lora_model()
    adapter = adapter_of(model, SPEC)
    out = export_lora(adapter, "diffusers", tmp_path / "pytorch_lora_weights.safetensors")
    with safe_open(str(out), "pt") as fh:
        keys, meta = set(fh.keys()), fh.metadata()
    assert keys == {f"transformer.{m}.{s}" for m in _expected_modules() for s in ("lora_A.weight", "lora_B.weight")}
    assert (meta["rank"], meta["alpha"]) == ("4", "8.0")
    assert json.loads(meta["lora_adapter_metadata"])["lora_alpha"] == 8.0
    back = load_adapter(out)
    assert back.alphas == adapter.alphas and set(back.weights) == set(adapter.weights)
    with pytest.raises(InputError, match="format"):
        export_lora(adapter, "kohya", tmp_path / "x.safetensors")
    with pytest.raises(InputError, match="x.pt"):
        export_lora(adapter, "comfyui", tmp_path / "x.pt")


def test_unreadable_adapters_are_errors_naming_the_file(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not safetensors")
    with pytest.raises(InputError, match="bad.safetensors"):
        load_adapter(bad)
    with pytest.raises(MissingError, match="nowhere"):
        load_adapter(tmp_path / "nowhere")
    from safetensors.torch import save_file

    save_file({"transformer_blocks.0.attn1.wo.lora_A.weight": torch.zeros(2, 4),
               "transformer_blocks.0.attn1.wo.lora_B.weight": torch.zeros(4, 2)}, str(tmp_path / "noalpha.safetensors"))
    with pytest.raises(InputError, match="noalpha.safetensors.*alpha"):
        load_adapter(tmp_path / "noalpha.safetensors")
    assert parse_lora_arg("a/b.safetensors:0.5") == (tmp_path.__class__("a/b.safetensors"), 0.5)
    assert parse_lora_arg("a/b.safetensors")[1] == 1.0


# ----------------------------------------------------------------------------------------------
# commands


def test_lora_export_merge_and_generate_commands(tmp_path):
    from stepvideo.data.video_io import read_video
    from stepvideo.models.io import load_state_dict
    from stepvideo.pipelines.t2v import T2VPipeline

    bundle = T2VPipeline.random(preset="demo", seed=1, workdir=tmp_path / "work").save_pretrained(tmp_path / "bundle")
    base = StepVideoDiT.from_pretrained(bundle / "dit")
    model = apply_lora(copy.deepcopy(base), SPEC)
    _randomize_b(model)
    folder = save_adapter(tmp_path / "adapter", model, SPEC)

    comfy = tmp_path / "comfy.safetensors"
    res = runner.invoke(app, ["lora", "export", str(folder), "--format", "comfyui", "--out", str(comfy)])
    assert res.exit_code == 0, res.output
    assert "diffusion_model.transformer_blocks.0.attn1.wqkv.alpha" in safe_open(str(comfy), "pt").keys()

    res = runner.invoke(app, ["lora", "merge", "--base", str(bundle), "--lora", f"{comfy}:0.5",
                              "--out", str(tmp_path / "merged")])
    assert res.exit_code == 0, res.output
    merged = load_state_dict(tmp_path / "merged")
    expected = merge_lora(base.state_dict(), load_adapter(folder), 0.5)
    assert set(merged) == set(expected)
    assert all(torch.allclose(merged[k], expected[k], atol=1e-7) for k in merged)
    StepVideoDiT.from_pretrained(tmp_path / "merged")  # a full DiT folder

    args = ["generate", "x", "--model", str(bundle), "--steps", "1", "--frames", "1", "--height", "16",
            "--width", "16"]
    res = runner.invoke(app, args + ["--out", str(tmp_path / "plain.mp4")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, args + ["--out", str(tmp_path / "zero.mp4"), "--lora", f"{comfy}:0"])
    assert res.exit_code == 0, res.output
    assert (read_video(tmp_path / "zero.mp4") == read_video(tmp_path / "plain.mp4")).all()
    res = runner.invoke(app, args + ["--out", str(tmp_path / "one.mp4"), "--lora", str(folder)])
    assert res.exit_code == 0, res.output
    assert (read_video(tmp_path / "one.mp4") != read_video(tmp_path / "plain.mp4")).any()  # it was applied

    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 16)
    for cmd in (args + ["--out", str(tmp_path / "b.mp4"), "--lora", f"{bad}:1"],
                ["lora", "export", str(bad), "--format", "comfyui", "--out", str(tmp_path / "c.safetensors")],
                ["lora", "merge", "--base", str(bundle), "--lora", str(tmp_path / "missing"), "--out",
                 str(tmp_path / "m2")]):
        res = runner.invoke(app, cmd)
        assert res.exit_code == 2, res.output
        lines = [ln for ln in res.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and ("bad.safetensors" in lines[0]
                                                                       or "missing" in lines[0]), res.output
    assert not (tmp_path / "b.mp4").exists() and not (tmp_path / "m2").exists()


@pytest.mark.parametrize("cmd", [["lora"], ["lora", "export"], ["lora", "merge"]], ids=" ".join)
def test_lora_commands_have_help(cmd):
    res = runner.invoke(app, [*cmd, "--help"])
    assert res.exit_code == 0 and "Usage" in res.output


def test_the_inference_side_imports_neither_peft_nor_training():
    """Pipelines may import stepvideo.models.lora (imports run down: training -> pipelines -> models)."""
    import subprocess
    import sys

    code = ("import sys, stepvideo.models.lora; "
            "bad = [m for m in sys.modules if m == 'peft' or m.startswith(('peft.', 'stepvideo.training'))]; "
            "sys.exit(1 if bad else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
