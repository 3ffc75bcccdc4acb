"""Parity check of :class:`stepvideo.models.vae.VideoVAE` against an official VAE reference file.

A reference is a ``.safetensors`` file (official ``state_dict`` names + ``__input__.*`` and
``__output__.*`` tensors) with a JSON description (``meta``) in the format of
``stepvideo_vae_tiny.json``: ``constructor.call`` holds the official ``AutoencoderKL(...)`` call,
``constructor.width_override`` (optional) the encoder/decoder width defaults it ran with. Nothing
here depends on one file's shapes.
"""

from __future__ import annotations

import ast
import os
import re
from typing import Any, Mapping

import torch

from stepvideo.models.vae import DiagonalGaussian, VAEConfig, VideoVAE
from stepvideo.errors import InputError

LATENT_TOLERANCE = 1e-4
DECODED_TOLERANCE = 5e-4

# Defaults of the official VideoEncoder / VideoDecoder classes (used when no override is given).
_OFFICIAL_ENCODER = {"ch": 32, "ch_mult": (4, 8, 16, 16)}
_OFFICIAL_DECODER = {"ch": 128, "ch_mult": (1, 2, 4, 4)}


def convert_official_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map released-checkpoint names to module names: ``decoder.conv_out.*`` -> ``decoder.conv_out.conv.*``.

    Names already in module form are kept, so this works on both the release and module dumps.
    Tensors whose names start with ``__`` (reference inputs/outputs) are dropped.
    """
    out: dict[str, torch.Tensor] = {}
    for name, t in state.items():
        if name.startswith("__"):
            continue
        if name.startswith("decoder.conv_out.") and not name.startswith("decoder.conv_out.conv."):
            name = "decoder.conv_out.conv." + name[len("decoder.conv_out.") :]
        out[name] = t
    return out


def _is_vae_reference(meta: Mapping[str, Any]) -> bool:
    """True when a reference JSON describes the official video VAE (AutoencoderKL)."""
    ctor = meta.get("constructor") if isinstance(meta, Mapping) else None
    call = ctor.get("call", "") if isinstance(ctor, Mapping) else ""
    return isinstance(call, str) and call.strip().startswith("AutoencoderKL(")


def _constructor_kwargs(call: str) -> dict[str, Any]:
    """Keyword arguments of the first ``AutoencoderKL(...)`` call in ``call``."""
    m = re.search(r"AutoencoderKL\((.*?)\)", call, re.S)
    if not m:
        raise InputError(f"cannot find an AutoencoderKL(...) call in {call!r}")
    node = ast.parse(f"f({m.group(1)})", mode="eval").body
    if not isinstance(node, ast.Call):  # pragma: no cover - parse of f(...) is always a Call
        raise InputError(f"cannot parse constructor call {call!r}")
    return {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords if kw.arg}


def _width(text: str, part: str, default: Mapping[str, Any]) -> tuple[int, tuple[int, ...]]:
    m = re.search(part + r"\s+ch\s*=\s*(\d+)\s*,\s*ch_mult\s*=\s*\(([\d,\s]+)\)", text)
    if not m:
        return int(default["ch"]), tuple(default["ch_mult"])
    return int(m.group(1)), tuple(int(v) for v in m.group(2).split(",") if v.strip())


def config_from_meta(meta: Mapping[str, Any]) -> VAEConfig:
    """The :class:`VAEConfig` of the official model a reference JSON describes."""
    ctor = meta.get("constructor", {})
    kwargs = _constructor_kwargs(ctor.get("call", ""))
    version = kwargs.get("version", 1)
    if version != 2:
        raise InputError(f"only the official version=2 VAE is implemented; the reference uses version={version}")
    override = str(ctor.get("width_override", ""))
    enc_ch, enc_mult = _width(override, "encoder", _OFFICIAL_ENCODER)
    dec_ch, dec_mult = _width(override, "decoder", _OFFICIAL_DECODER)
    return VAEConfig(
        in_channels=int(kwargs.get("in_channels", 3)),
        out_channels=int(kwargs.get("out_channels", 3)),
        z_channels=int(kwargs.get("z_channels", 16)),  # official AutoencoderKL default
        num_res_blocks=int(kwargs.get("num_res_blocks", 2)),
        encoder_ch=enc_ch,
        encoder_ch_mult=enc_mult,
        decoder_ch=dec_ch,
        decoder_ch_mult=dec_mult,
    )


def _tolerance(name: str) -> float:
    return DECODED_TOLERANCE if "decoded" in name else LATENT_TOLERANCE


def _seed_from(text: str) -> int | None:
    m = re.search(r"manual_seed\((\d+)\)", text or "")
    return int(m.group(1)) if m else None


def verify_vae_reference(
    safetensors_path: str | os.PathLike, meta: Mapping[str, Any]
) -> dict[str, tuple[float, float]]:
    """Rebuild the reference's model, load its weights strictly, rerun it and compare outputs.

    Returns ``{output name: (max_abs_diff, tolerance)}`` for every ``__output__.*`` tensor the
    file holds. Decoding starts from the file's ``latent_mean`` (as the reference was made), so
    decoder differences are not mixed with encoder ones. ``latent_sample`` uses the saved noise;
    ``latent_sample_noise`` is regenerated from the seed named in its description when there is
    one (the official ``encode`` draws from the global RNG).
    """
    from safetensors.torch import load_file

    tensors = load_file(str(safetensors_path))
    inputs = {k[len("__input__.") :]: v for k, v in tensors.items() if k.startswith("__input__.")}
    outputs = {k[len("__output__.") :]: v for k, v in tensors.items() if k.startswith("__output__.")}
    if "video" not in inputs:
        raise InputError(f"{safetensors_path}: no __input__.video tensor")

    model = VideoVAE(config_from_meta(meta)).float().eval()
    model.load_state_dict(convert_official_state_dict(tensors), strict=True)

    video = inputs["video"].float()
    moments = model.encode_moments(video)
    post = DiagonalGaussian(moments, model.config.logvar_range)
    ours: dict[str, torch.Tensor] = {
        "moments": moments,
        "latent_mean": post.mean,
        "latent_logvar": post.logvar,
    }
    if "latent_sample_noise" in outputs:
        ours["latent_sample"] = post.sample(noise=outputs["latent_sample_noise"].float())
        out_meta = meta.get("outputs", {}).get("__output__.latent_sample_noise", {})
        seed = _seed_from(out_meta.get("meaning", "") if isinstance(out_meta, Mapping) else "")
        if seed is not None:
            rng = torch.Generator().manual_seed(seed)
            ours["latent_sample_noise"] = torch.randn(post.mean.shape, generator=rng)
    latent = outputs.get("latent_mean", post.mean).float()
    if "decoded" in outputs:
        ours["decoded"] = model.decode(latent, mix=True)
    if "decoded_premix" in outputs:
        ours["decoded_premix"] = model.decode(latent, mix=False)

    result: dict[str, tuple[float, float]] = {}
    for name, ref in outputs.items():
        if name not in ours:
            continue
        got = ours[name]
        if tuple(got.shape) != tuple(ref.shape):
            result[name] = (float("inf"), _tolerance(name))
            continue
        result[name] = (float((got.double() - ref.double()).abs().max()), _tolerance(name))
    return result


__all__ = ["verify_vae_reference", "config_from_meta", "convert_official_state_dict", "_is_vae_reference"]
