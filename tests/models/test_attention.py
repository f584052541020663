import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.attention import Read, Write, _bank, attention_params, filterbank, read_glimpse, write_patch


def raw_params(height, width, n, *, gx=None, gy=None, delta=1.0, sigma2=1e-3, gamma=1.0, batch=1):
    """Raw linear outputs (B, 5) that map to the given image-unit parameters (inverting eq. 21-24).

    gx, gy: 1-based grid centre in pixels; the image centre when None.
    """
    g_x = 0.0 if gx is None else 2 * gx / (width + 1) - 1
    g_y = 0.0 if gy is None else 2 * gy / (height + 1) - 1
    log_delta = math.log(delta * (n - 1) / (max(height, width) - 1))
    row = torch.tensor([g_x, g_y, math.log(sigma2), log_delta, math.log(gamma)], dtype=torch.float64)
    return row.expand(batch, 5).clone()


@settings(max_examples=40, deadline=None)
@given(
    h=st.integers(4, 40), w=st.integers(4, 40), n=st.integers(1, 9),
    raw=st.lists(st.floats(-3, 3), min_size=5, max_size=5),
)
def test_filterbank_rows_sum_to_one(h, w, n, raw):
    p = attention_params(torch.tensor([raw], dtype=torch.float64), h, w, n)
    f_y, f_x = filterbank(p, h, w)
    assert f_y.shape == (1, n, h) and f_x.shape == (1, n, w)
    torch.testing.assert_close(f_y.sum(-1), torch.ones(1, n, dtype=torch.float64))
    torch.testing.assert_close(f_x.sum(-1), torch.ones(1, n, dtype=torch.float64))


@pytest.mark.parametrize("sigma2", [0.05, 0.5, 3.0])
def test_sharp_filters_hold_no_denormal_weights_and_match_the_gaussian(sigma2):
    # a sharp filter's far tail underflows exp; denormal weights there slow the CPU's exp and matmuls 20–190×
    h = w = 60
    raw = torch.cat([raw_params(h, w, 8, gx=gx, gy=gy, delta=2.0, sigma2=sigma2)
                     for gx, gy in [(30.5, 30.5), (3.2, 57.9), (-4.0, 70.0)]]).float()  # centred, near edges, off
    p = attention_params(raw, h, w, 8)
    f_y, f_x = filterbank(p, h, w)
    tiny = torch.finfo(torch.float32).tiny
    for f, g in ((f_y, p.g_y), (f_x, p.g_x)):
        assert f.dtype == torch.float32
        assert not ((f != 0) & (f.abs() < tiny)).any()
        # the closed form in float64: exp(−(a − μ_i)²/2σ²) normalised over the image's pixels (eq. 25-26)
        mu = g.double()[:, None] + (torch.arange(1, 9, dtype=torch.float64) - 4.5) * p.delta.double()[:, None]
        a = torch.arange(1, w + 1, dtype=torch.float64)
        log_f = -(a - mu[..., None]) ** 2 / (2 * p.sigma2.double()[:, None, None])
        exact = (log_f - log_f.logsumexp(-1, keepdim=True)).exp()
        torch.testing.assert_close(f.double(), exact, atol=1e-12, rtol=1e-5)


@pytest.mark.parametrize("size", [60, 28, 31])
def test_the_tail_clamp_takes_each_rows_own_peak_exactly(size):
    # the clamp's peak is x at the pixel nearest μ, not a max over the row: it must be that max to the bit, for μ on
    # and between pixels (ties at .5), near and far off either edge, or the weights would move
    g = torch.Generator().manual_seed(0)
    mu = torch.cat([torch.rand(64, 6, generator=g) * (size + 40) - 20,  # on the image and off both edges
                    torch.randint(-3, size + 4, (64, 6), generator=g) + torch.tensor([0.0, 0.5]).repeat(3)]).float()
    sigma2 = torch.rand(128, generator=g) * 8 + 0.05
    a = torch.arange(1, size + 1, dtype=torch.float32)
    x = (a - mu[..., None]).square() * (-0.5 / sigma2)[:, None, None]
    by_max = torch.softmax(x.clamp(min=x.amax(-1, keepdim=True) - 30.0), dim=-1)
    assert torch.equal(_bank(mu, sigma2, size), by_max)


def test_attention_params_train_after_a_sampler_ran_first():
    # its constant factors are made once; made first inside inference mode, they must still serve autograd
    with torch.inference_mode():
        attention_params(torch.zeros(2, 5), 17, 23, 3)
    raw = torch.zeros(2, 5, requires_grad=True)
    p = attention_params(raw, 17, 23, 3)
    (p.g_x + p.g_y + p.delta + p.sigma2 + p.gamma).sum().backward()
    torch.testing.assert_close(raw.grad[0], torch.tensor([12.0, 9.0, 1.0, 11.0, 1.0]))  # d/draw: (W+1)/2, (H+1)/2, …


def test_filter_centres_are_centred_on_the_grid_centre():
    h = w = 60
    p = attention_params(raw_params(h, w, 8, delta=3.0, sigma2=0.5), h, w, 8)
    assert p.g_x.item() == pytest.approx(30.5)  # (A+1)/2: the image centre in 1-based pixels
    f_y, f_x = filterbank(p, h, w)
    centres = (f_x[0] * torch.arange(1, w + 1, dtype=f_x.dtype)).sum(-1)
    torch.testing.assert_close(centres.mean(), p.g_x[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(centres.diff(), torch.full((7,), 3.0, dtype=f_x.dtype), atol=1e-6, rtol=0)


@pytest.mark.parametrize(("h", "w", "n"), [(60, 60, 8), (28, 28, 2), (27, 31, 5), (33, 33, 9)])
def test_read_with_unit_stride_and_tiny_sigma_returns_the_centre_patch(h, w, n):
    torch.manual_seed(0)
    x = torch.rand(2, 3, h, w, dtype=torch.float64)
    p = attention_params(raw_params(h, w, n, batch=2), h, w, n)
    f_y, f_x = filterbank(p, h, w)
    top, left = (h - n) // 2, (w - n) // 2
    centre = x[:, :, top : top + n, left : left + n]
    torch.testing.assert_close(read_glimpse(x, f_y, f_x), centre, atol=1e-4, rtol=0)


def test_write_puts_the_read_patch_back_in_place():
    h, w, n = 60, 60, 8
    x = torch.rand(1, 1, h, w, dtype=torch.float64)
    p = attention_params(raw_params(h, w, n, gx=20.5, gy=40.5), h, w, n)  # off-centre window
    f_y, f_x = filterbank(p, h, w)
    back = write_patch(read_glimpse(x, f_y, f_x), f_y, f_x)
    top, left = round(40.5 - 0.5 - n / 2), round(20.5 - 0.5 - n / 2)
    expected = torch.zeros_like(x)
    expected[..., top : top + n, left : left + n] = x[..., top : top + n, left : left + n]
    torch.testing.assert_close(back, expected, atol=1e-4, rtol=0)


def test_read_scales_by_gamma_and_write_divides_by_gamma():
    h, w, n = 28, 28, 4
    read = Read(5, 1, h, w, n).double()
    write = Write(5, 1, h, w, n).double()
    raw = raw_params(h, w, n, gamma=2.5)
    with torch.no_grad():
        read.params.weight.zero_()
        read.params.bias.copy_(raw[0])
        write.linear.weight.zero_()
        patch = torch.arange(n * n, dtype=torch.float64)
        write.linear.bias.copy_(torch.cat([patch, raw[0]]))
    x = torch.rand(1, 1, h, w, dtype=torch.float64)
    hidden = torch.zeros(1, 5, dtype=torch.float64)
    glimpse = read(x, x, hidden)
    centre = x[0, 0, 12:16, 12:16].flatten()
    torch.testing.assert_close(glimpse[0], 2.5 * torch.cat([centre, centre]), atol=1e-4, rtol=0)
    canvas, window = write(hidden)
    expected = torch.zeros(h, w, dtype=torch.float64)
    expected[12:16, 12:16] = patch.view(n, n) / 2.5
    torch.testing.assert_close(canvas[0, 0], expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(window.box()[0], torch.tensor([12.0, 12.0, 16.0, 16.0], dtype=torch.float64))


def test_gradients_reach_all_five_attention_parameters():
    torch.manual_seed(0)
    h, w, n = 20, 24, 3
    raw = torch.tensor([[0.1, -0.2, 0.3, -0.1, 0.2]], dtype=torch.float64, requires_grad=True)
    p = attention_params(raw, h, w, n)
    f_y, f_x = filterbank(p, h, w)
    x = torch.rand(1, 1, h, w, dtype=torch.float64)
    glimpse = p.gamma * read_glimpse(x, f_y, f_x)
    painted = write_patch(torch.rand(1, 1, n, n, dtype=torch.float64), f_y, f_x) / p.gamma
    (glimpse.square().sum() + (painted * x).sum()).backward()
    assert raw.grad is not None
    assert (raw.grad.abs() > 1e-8).all(), raw.grad


def test_without_attention_read_is_the_images_and_write_fills_the_canvas():
    read, write = Read(7, 2, 5, 6, None), Write(7, 2, 5, 6, None)
    x, x_hat = torch.rand(3, 2, 5, 6), torch.rand(3, 2, 5, 6)
    torch.testing.assert_close(read(x, x_hat, torch.zeros(3, 7)), torch.cat([x.flatten(1), x_hat.flatten(1)], 1))
    canvas, window = write(torch.randn(3, 7))
    assert canvas.shape == (3, 2, 5, 6) and window is None


def test_colour_channels_share_the_filters():
    h, w, n = 16, 12, 4
    p = attention_params(torch.randn(2, 5, dtype=torch.float64) * 0.3, h, w, n)
    f_y, f_x = filterbank(p, h, w)
    x = torch.rand(2, 3, h, w, dtype=torch.float64)
    per_channel = torch.cat([read_glimpse(x[:, c : c + 1], f_y, f_x) for c in range(3)], 1)
    torch.testing.assert_close(read_glimpse(x, f_y, f_x), per_channel)


@pytest.mark.parametrize(("h", "w", "read_n", "write_n"), [(28, 28, 2, 5), (60, 60, 8, 8), (32, 32, 9, 9)])
def test_a_fresh_window_tiles_the_image_evenly(h, w, read_n, write_n):
    """Before any training (h = 0 gives the biases) each filter sits at the centre of its own 1/N of the image."""
    for module, n in ((Read(16, 1, h, w, read_n), read_n), (Write(16, 1, h, w, write_n), write_n)):
        linear = module.params if isinstance(module, Read) else module.linear
        assert linear is not None
        p = attention_params(linear(torch.zeros(1, 16))[:, -5:], h, w, n)
        torch.testing.assert_close(p.box(), torch.tensor([[0.0, 0.0, float(w), float(h)]]), atol=1e-4, rtol=0)
        i = torch.arange(1, n + 1)
        centres = p.g_x + (i - n / 2 - 0.5) * p.delta  # eq. 19, 1-based pixels
        cell = w / n
        torch.testing.assert_close(centres, 0.5 + cell * (i - 0.5), atol=1e-4, rtol=0)
        assert p.sigma2.sqrt().item() == pytest.approx(cell / 2, rel=1e-5)


@pytest.mark.parametrize("channels, n", [(1, 3), (3, 4), (2, None)])
def test_add_to_adds_the_write_in_place(channels, n):
    """The sampler's in-place write (one matmul accumulating into the canvas) equals canvas + write(h)."""
    torch.manual_seed(0)
    write = Write(hidden_size=7, channels=channels, height=9, width=11, n=n)
    with torch.no_grad():
        write.linear.weight.normal_(0, 0.5)  # windows off the tiled start, so the filters and γ matter
        h = torch.randn(5, 7)
        canvas = torch.randn(5, channels, 9, 11)
        delta, params = write(h)
        expected = canvas + delta
        same = canvas.clone()
        got = write.add_to(same, h)
    torch.testing.assert_close(same, expected, rtol=1e-6, atol=1e-6)
    assert (got is None) == (params is None)
    if got is not None and params is not None:
        assert torch.equal(got.box(), params.box())
