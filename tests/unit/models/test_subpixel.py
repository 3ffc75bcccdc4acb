"""The coarse-grid forms of nearest-x2 + conv equal the upsample-then-convolve they replace."""

import pytest
import torch
import torch.nn.functional as F

from stepvideo.models.subpixel import add_nearest2x, nearest2x_causal_conv3d, nearest2x_conv2d
from stepvideo.models.vae_blocks import Upsample3D, UpsampleResBlock3D

CL3D = torch.channels_last_3d


def _up(x):
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


def _ref2d(x, w, b):
    return F.conv2d(_up(x), w, b, padding=1)


def _ref3d(x, w, b):
    return F.conv3d(F.pad(_up(x), (0, 0, 0, 0, 2, 0)), w, b, padding=(0, 1, 1))


@pytest.mark.parametrize("shape", [(2, 5, 7, 4), (1, 3, 1, 1), (3, 4, 6, 6)])
@pytest.mark.parametrize("bias", [True, False])
def test_conv2d_matches_upsample_then_conv_with_gradients(shape, bias):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g, requires_grad=True)
    w = torch.randn(6, shape[1], 3, 3, generator=g, requires_grad=True)
    b = torch.randn(6, generator=g, requires_grad=True) if bias else None
    ours, ref = nearest2x_conv2d(x, w, b), _ref2d(x, w, b)
    assert ours.shape == ref.shape and ours.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    gy = torch.randn(ref.shape, generator=g)
    params = [x, w] + ([b] if bias else [])
    got = torch.autograd.grad(ours, params, gy)
    want = torch.autograd.grad(ref, params, gy)
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", [(1, 3, 1, 2, 3), (2, 4, 3, 4, 5)])
def test_causal_conv3d_matches_upsample_then_causal_conv_with_gradients(shape):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=g).contiguous(memory_format=CL3D).requires_grad_()
    w = torch.randn(5, shape[1], 3, 3, 3, generator=g, requires_grad=True)
    b = torch.randn(5, generator=g, requires_grad=True)
    ours, ref = nearest2x_causal_conv3d(x, w, b), _ref3d(x, w, b)
    assert ours.shape == ref.shape and ours.is_contiguous(memory_format=CL3D)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    gy = torch.randn(ref.shape, generator=g)
    for a, e in zip(torch.autograd.grad(ours, [x, w, b], gy), torch.autograd.grad(ref, [x, w, b], gy)):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4)


def test_causality_survives_the_coarse_grid():
    """Changing the last coarse frame changes only the last two fine frames."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 2, 4, 3, 3, generator=g)
    w, b = torch.randn(3, 2, 3, 3, 3, generator=g), torch.zeros(3)
    y0 = nearest2x_causal_conv3d(x, w, b)
    x[:, :, -1] += 1.0
    y1 = nearest2x_causal_conv3d(x, w, b)
    torch.testing.assert_close(y0[:, :, :6], y1[:, :, :6], rtol=0, atol=0)
    assert not torch.allclose(y0[:, :, 6:], y1[:, :, 6:])


@pytest.mark.parametrize("inplace", [True, False])
@pytest.mark.parametrize("layout", [CL3D, torch.contiguous_format])
def test_add_nearest2x_broadcasts_like_interpolate(inplace, layout):
    g = torch.Generator().manual_seed(3)
    coarse = torch.randn(2, 3, 2, 3, 4, generator=g).contiguous(memory_format=CL3D)
    fine = torch.randn(2, 3, 4, 6, 8, generator=g).contiguous(memory_format=layout)
    want = fine + _up(coarse)
    got = add_nearest2x(fine.clone(memory_format=torch.preserve_format), coarse, inplace)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    if layout is CL3D:
        assert got.is_contiguous(memory_format=CL3D)


def test_bad_shapes_name_what_is_wrong():
    with pytest.raises(ValueError, match="3x3 kernel"):
        nearest2x_conv2d(torch.zeros(1, 2, 3, 3), torch.zeros(2, 2, 1, 1), None)
    with pytest.raises(ValueError, match="3x3x3 kernel"):
        nearest2x_causal_conv3d(torch.zeros(1, 2, 1, 3, 3), torch.zeros(2, 2, 3, 3), None)
    with pytest.raises(ValueError, match="not coarse"):
        add_nearest2x(torch.zeros(1, 2, 4, 4, 4), torch.zeros(1, 2, 2, 2, 3), False)


def test_upsample3d_equals_its_block_on_the_upsampled_input_with_gradients():
    torch.manual_seed(4)
    m = Upsample3D(8, groups=2)
    x = torch.randn(1, 8, 3, 4, 4).contiguous(memory_format=CL3D).requires_grad_()
    with torch.no_grad():  # the in-place path
        torch.testing.assert_close(m(x), UpsampleResBlock3D.forward(m.conv3d, _up(x)), rtol=1e-5, atol=1e-5)
    params = [x, *m.parameters()]
    got = torch.autograd.grad(m.conv3d.forward_upsampled(x).square().sum(), params)
    want = torch.autograd.grad(UpsampleResBlock3D.forward(m.conv3d, _up(x)).square().sum(), params)
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4)
