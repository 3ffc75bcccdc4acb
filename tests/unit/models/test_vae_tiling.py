"""Exact (layer-streamed) VAE tiling: equal to the untiled model up to float rounding."""

from __future__ import annotations

import pytest
import torch

from stepvideo.models import vae_tiling
from stepvideo.models.vae import VAEConfig, VideoVAE

# measured max abs diff / max |untiled| is ~1e-6 on every case below (float32, seeded random init)
REL_TOL = 1e-5


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Many small per-tile ops: intra-op threads only add sync cost on a small (shared) CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _model(config: VAEConfig, dual_path: bool = True, seed: int = 0) -> VideoVAE:
    torch.manual_seed(seed)
    model = VideoVAE(config).eval()
    model.set_dual_path(dual_path)
    return model


def _video(t: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, t, 3, h, w, generator=g) * 2 - 1


def _latent(model: VideoVAE, t: int, h: int, w: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, t, model.config.z_channels, h, w, generator=g)


def assert_exact(got: torch.Tensor, ref: torch.Tensor) -> None:
    assert got.shape == ref.shape and got.device == ref.device
    diff, scale = float((got - ref).abs().max()), float(ref.abs().max())
    assert diff <= REL_TOL * scale, f"max abs diff {diff:.2e} (output max {scale:.2f})"


def _check_chunk(model: VideoVAE, t: int, h: int, w: int, tile: int) -> None:
    """Encoder chunk (T frames, h x w px) and decoder chunk (same output size) vs untiled."""
    with torch.no_grad():
        x = _video(t, h, w).permute(0, 2, 1, 3, 4)
        assert_exact(vae_tiling.encode_chunk(model.encoder, x, tile), model.encoder(x))
        f = model.config.spatial_factor
        z = _latent(model, model.latent_frames(t), h // f, w // f).permute(0, 2, 1, 3, 4)
        assert_exact(vae_tiling.decode_chunk(model.decoder, z, tile), model.decoder(z))


# ---- the tiny geometry at 17x64x96: reference computed once ------------------------------------


@pytest.fixture(scope="module")
def tiny() -> VideoVAE:
    return _model(VAEConfig.tiny())


@pytest.fixture(scope="module")
def tiny_ref(tiny):
    video, latent = _video(17, 64, 96), _latent(tiny, 3, 4, 6)
    return video, tiny.encode_moments(video), latent, tiny.decode(latent)


@pytest.mark.parametrize("tile", [32, 48])  # 48: tiles of 48 and 16 rows (unequal)
def test_exact_equals_untiled_tiny(tiny, tiny_ref, tile):
    video, moments, latent, decoded = tiny_ref
    assert_exact(tiny.encode_moments(video, tile_size=tile, tile_mode="exact"), moments)
    assert_exact(tiny.decode(latent, tile_size=tile, tile_mode="exact"), decoded)


def test_exact_single_image(tiny):
    video, latent = _video(1, 64, 96), _latent(tiny, 1, 4, 6)
    assert_exact(tiny.encode(video, tile_size=32, tile_mode="exact"), tiny.encode(video))
    assert_exact(tiny.decode(latent, tile_size=32, tile_mode="exact"), tiny.decode(latent))


def test_exact_one_latent_cell_per_tile(tiny):
    """Tile 16: every tile edge is interior at every level, so any halo error shows."""
    _check_chunk(tiny, 17, 48, 32, 16)
    _check_chunk(tiny, 1, 32, 48, 16)


# ---- other geometries ------------------------------------------------------------------------------


WIDE = VAEConfig(  # other widths, 2 res blocks (width changes -> nin_shortcut), other 3D levels
    z_channels=4,
    num_res_blocks=2,
    encoder_ch=16,
    encoder_ch_mult=(1, 2, 2, 2),
    decoder_ch=8,
    decoder_ch_mult=(1, 2, 4, 4),
    encoder_temporal_levels=(0, 2),
    decoder_temporal_levels=(1, 3),
    norm_groups=4,
)
THREE_LEVELS = VAEConfig(  # spatial factor 8
    z_channels=4,
    num_res_blocks=1,
    encoder_ch=16,
    encoder_ch_mult=(1, 2, 2),
    decoder_ch=16,
    decoder_ch_mult=(1, 2, 2),
    encoder_temporal_levels=(0, 1),
    decoder_temporal_levels=(1, 2),
    norm_groups=8,
)


@pytest.mark.parametrize(
    "config,dual_path,tile",
    [
        (VAEConfig.demo(), True, 16),
        (VAEConfig.demo(), True, 32),
        (VAEConfig.tiny(), False, 16),
        (WIDE, True, 16),
        (THREE_LEVELS, True, 8),
        (VAEConfig.tiny().stage1(), False, 8),
    ],
    ids=["demo-16", "demo-32", "single-path", "wide-2res", "three-levels", "stage1-4x8x8"],
)
def test_exact_other_geometries(config, dual_path, tile):
    model = _model(config, dual_path)
    _check_chunk(model, 17, 32, 48, tile)
    _check_chunk(model, 1, 48, 32, tile)


# ---- public API ------------------------------------------------------------------------------------


def test_exact_multi_chunk_public_api(tiny):
    video = _video(34, 32, 48)
    z = tiny.encode(video)
    assert_exact(tiny.encode(video, tile_size=32, tile_mode="exact"), z)
    assert_exact(tiny.decode(z, tile_size=32, tile_mode="exact"), tiny.decode(z))  # chunk mix included


def test_exact_whole_frame_tile_is_untiled(tiny):
    video = _video(1, 32, 48)
    z = tiny.encode(video)
    assert torch.equal(tiny.encode(video, tile_size=48, tile_mode="exact"), z)
    assert torch.equal(tiny.decode(z, tile_size=48, tile_mode="exact"), tiny.decode(z))


def test_tile_mode_validation(tiny):
    video, latent = torch.zeros(1, 1, 3, 32, 32), torch.zeros(1, 1, 4, 2, 2)
    with pytest.raises(ValueError, match="tile_mode must be one of 'blend', 'exact'"):
        tiny.encode(video, tile_size=16, tile_mode="exactly")
    with pytest.raises(ValueError, match="tile_mode must be one of"):
        tiny.decode(latent, tile_mode="Exact")
    with pytest.raises(ValueError, match="tile_overlap must be 0 with tile_mode='exact'"):
        tiny.posterior(video, tile_size=16, tile_overlap=16, tile_mode="exact")
    with pytest.raises(ValueError, match="tile_overlap must be 0"):
        tiny.decode(latent, tile_size=16, tile_overlap=16, tile_mode="exact")
    with pytest.raises(ValueError, match="multiples of 16"):
        tiny.encode_moments(video, tile_size=24, tile_mode="exact")
    with torch.no_grad(), pytest.raises(ValueError, match="multiples of 16"):
        vae_tiling.encode_chunk(tiny.encoder, video.permute(0, 2, 1, 3, 4), 8)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (storage on host, compute on GPU)")
def test_exact_host_storage_gpu_compute():
    model = _model(VAEConfig.tiny()).cuda()
    video = _video(17, 32, 48)
    moments = model.encode_moments(video, tile_size=16, tile_mode="exact")
    assert moments.device == video.device
    assert_exact(moments, model.encode_moments(video))
    z = moments[:, :, :4]
    assert_exact(model.decode(z, tile_size=16, tile_mode="exact"), model.decode(z))
