"""CausalConv3d's kernel choices without autograd: each is the padded conv3d's sum."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from stepvideo.models import causal_conv
from stepvideo.models.causal_conv import CL3D, CausalConv3d, conv3d, pad_time_front
from stepvideo.models.winograd import causal_time_conv3d, kernels


def _padded(x, weight, bias, pad=1):
    return F.conv3d(F.pad(x, (0, 0, 0, 0, 2, 0)), weight, bias, padding=(0, pad, pad))


@pytest.mark.parametrize("frames", [2, 3, 4, 5, 8, 9])
@pytest.mark.parametrize("pad", [1, 0])
def test_winograd_along_time_equals_the_padded_conv(frames, pad):
    g = torch.Generator().manual_seed(frames)
    x = torch.randn(2, 5, frames, 6, 7, generator=g).contiguous(memory_format=CL3D)
    w, b = torch.randn(4, 5, 3, 3, 3, generator=g) / 10, torch.randn(4, generator=g)
    got = causal_time_conv3d(x, w, b, (pad, pad))
    assert got.is_contiguous(memory_format=CL3D)
    torch.testing.assert_close(got, _padded(x, w, b, pad), rtol=1e-5, atol=1e-5)
    # any input layout, no bias
    torch.testing.assert_close(causal_time_conv3d(x.contiguous(), w, None, (pad, pad)), _padded(x, w, None, pad),
                               rtol=1e-5, atol=1e-5)


def test_winograd_is_causal():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 7, 4, 4, generator=g)
    w = torch.randn(3, 3, 3, 3, 3, generator=g)
    y = causal_time_conv3d(x, w, None, (1, 1))
    x2 = x.clone()
    x2[:, :, 4:] = 0  # later frames never reach earlier outputs
    torch.testing.assert_close(causal_time_conv3d(x2, w, None, (1, 1))[:, :, :4], y[:, :, :4])


def test_winograd_rejects_what_it_cannot_compute():
    x = torch.zeros(1, 3, 4, 4, 4)
    with pytest.raises(ValueError, match="3, kh, kw"):
        kernels(torch.zeros(3, 3, 2, 3, 3))
    with pytest.raises(ValueError, match="at least 2 frames"):
        causal_time_conv3d(x[:, :, :1], torch.zeros(3, 3, 3, 3, 3), None, (1, 1))
    with pytest.raises(ValueError, match="4 input channels, x has 3"):
        causal_time_conv3d(x, torch.zeros(3, 4, 3, 3, 3), None, (1, 1))


def test_wide_causal_convs_take_winograd_without_autograd_only():
    torch.manual_seed(0)
    w = causal_conv.WINOGRAD_MIN_WIDTH
    m = CausalConv3d(w, w, 3)
    x = torch.randn(1, w, 4, 16, 16).contiguous(memory_format=CL3D)
    ref = lambda v: m.conv(pad_time_front(v, 2))  # noqa: E731
    with torch.no_grad():
        assert m._winograd(x) and not m._winograd(x[:, :, :2])
        assert not CausalConv3d(w // 2, w, 3)._winograd(x[:, : w // 2])  # narrow: the transforms cost more
        assert not m._winograd(x[..., :8, :8])  # small: the weights' transform costs more
        torch.testing.assert_close(m(x), ref(x), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(m.silu_forward(x.clone()), ref(F.silu(x)), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(m(x, space_padding=0), F.conv3d(pad_time_front(x, 2), m.conv.weight, m.conv.bias),
                                   rtol=1e-4, atol=1e-4)
    assert not m._winograd(x)  # under autograd: the padded conv


@pytest.mark.parametrize("frames", [5, 9])
def test_causal_conv_that_skips_the_zero_frames_equals_the_padded_one(frames):
    """Without autograd a narrow CausalConv3d skips the two zero frames (``_trimmed``) when it pays:
    same outputs as the conv of the time-padded input, also through ``silu_forward``; the trimmed
    form's gradients are right too."""
    torch.manual_seed(0)
    m = CausalConv3d(8, 8, 3)
    x = torch.randn(2, 8, frames, 5, 6).contiguous(memory_format=CL3D)
    ref = lambda v: m.conv(pad_time_front(v, 2))  # noqa: E731
    with torch.no_grad():
        assert m._trims(x) and not m._trims(x[:, :, :4]) and not m._winograd(x)
        torch.testing.assert_close(m(x), ref(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(m.silu_forward(x.clone()), ref(F.silu(x)), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(m(x, space_padding=0), F.conv3d(pad_time_front(x, 2), m.conv.weight, m.conv.bias),
                                   rtol=1e-5, atol=1e-5)
    assert not m._trims(x)  # under autograd the padded form runs (its backward is cheaper)
    xg = x.clone().requires_grad_()
    got = torch.autograd.grad(m._trimmed(xg, (1, 1)).square().sum(), [xg, *m.parameters()])
    want = torch.autograd.grad(ref(xg).square().sum(), [xg, *m.parameters()])
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("layout", [CL3D, torch.contiguous_format])
def test_conv3d_takes_onednn_on_a_small_input_and_keeps_the_layout(layout):
    """N*C*T*H <= 20,480 sends F.conv3d to torch's reference kernel (NCTHW out); conv3d asks for
    oneDNN's: the same values, channels-last-3d kept."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 7, 16, 16, generator=g).contiguous(memory_format=layout)
    w = torch.randn(16, 16, 3, 3, 3, generator=g).contiguous(memory_format=CL3D) / 10
    b = torch.randn(16, generator=g)
    want = F.conv3d(x, w, b, stride=(1, 2, 2), padding=(0, 1, 1))
    with torch.no_grad():
        got = conv3d(x, w, b, (1, 2, 2), (0, 1, 1))
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        if layout is CL3D and torch.backends.mkldnn.is_available():
            assert got.is_contiguous(memory_format=CL3D) and not want.is_contiguous(memory_format=CL3D)
        before, torch.backends.mkldnn.enabled = torch.backends.mkldnn.enabled, False  # the user's switch is honoured
        try:
            torch.testing.assert_close(conv3d(x, w, b, (1, 2, 2), (0, 1, 1)), want, rtol=0, atol=0)
        finally:
            torch.backends.mkldnn.enabled = before
    wg = w.clone().requires_grad_()  # under autograd: F.conv3d, gradients as usual
    (gw,) = torch.autograd.grad(conv3d(x, wg, b, (1, 2, 2), (0, 1, 1)).sum(), [wg])
    (ew,) = torch.autograd.grad(F.conv3d(x, wg, b, stride=(1, 2, 2), padding=(0, 1, 1)).sum(), [wg])
    torch.testing.assert_close(gw, ew, rtol=0, atol=0)
