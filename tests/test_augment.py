"""training/augment.py: AugmentPipe known answers, label layout, RNG order, gradients."""

import math
import os
import pickle
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from training import augment
from training.augment import AugmentPipe

EDM_KWARGS = dict(xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1) # As train.py builds it.

#----------------------------------------------------------------------------
# Helpers.

def _rand(n=4, c=3, res=16, seed=0, dtype=torch.float32):
    return torch.randn([n, c, res, res], generator=torch.Generator().manual_seed(seed), dtype=dtype)

def _smooth(n=2, c=3, res=32, period=None):
    # Low-frequency test images: sums of sinusoids, different per channel/image.
    period = period or res
    y, x = torch.meshgrid(torch.arange(res, dtype=torch.float64), torch.arange(res, dtype=torch.float64), indexing='ij')
    imgs = [torch.stack([torch.sin(2 * math.pi * (x * (1 + k % 2) + 3 * k) / period) + torch.cos(2 * math.pi * (y + 5 * k + i) / period) for k in range(c)]) for i in range(n)]
    return torch.stack(imgs).to(torch.float32), x, y

def _np_mat(rows):
    return np.asarray(rows, dtype=np.float64)

#----------------------------------------------------------------------------
# Identity and flips.

def test_p0_is_identity_with_zero_labels():
    x = _rand()
    pipe = AugmentPipe(p=0, **EDM_KWARGS, rotate_int=1, translate_int=1, brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1)
    y, labels = pipe(x)
    assert labels.shape == (4, 9 + 2 + 2 + 1 + 1 + 1 + 2 + 1) and labels.dtype == torch.float32
    assert torch.all(labels == 0)
    torch.testing.assert_close(y, x, atol=1e-4, rtol=0) # The wavelet round trip is orthogonal: near-exact.

def test_disabled_pipe_returns_input_and_empty_labels():
    x = _rand()
    y, labels = AugmentPipe()(x)
    assert y is x and labels.shape == (4, 0)

def test_xflip_only_flips_and_labels_w():
    x = _rand(n=64, res=8)
    torch.manual_seed(0)
    y, labels = AugmentPipe(xflip=1)(x)
    assert labels.shape == (64, 1)
    w = labels[:, 0]
    assert set(w.tolist()) == {0.0, 1.0}
    assert torch.equal(y[w == 1], x[w == 1].flip(3)) and torch.equal(y[w == 0], x[w == 0])

def test_yflip_and_rotate_int_known_answers():
    x = _rand(n=32, res=8)
    torch.manual_seed(1)
    y, labels = AugmentPipe(yflip=1)(x)
    w = labels[:, 0]
    assert torch.equal(y[w == 1], x[w == 1].flip(2)) and torch.equal(y[w == 0], x[w == 0])

    torch.manual_seed(2)
    y, labels = AugmentPipe(rotate_int=1)(x)
    quarter_turns = {(0, 0): 0, (1, 0): 1, (1, 1): 2, (0, 1): 3}
    seen = set()
    for i in range(32):
        k = quarter_turns[tuple(int(v) for v in labels[i])]
        seen.add(k)
        assert torch.equal(y[i], torch.rot90(x[i], k, dims=[1, 2]))
    assert seen == {0, 1, 2, 3}

def test_translate_int_known_answer():
    x = _rand(n=16, res=16)
    torch.manual_seed(3)
    pipe = AugmentPipe(translate_int=1, translate_int_max=0.25)
    y, labels = pipe(x)
    for i in range(16):
        tx, ty = [int(round(v * 16 * 0.25)) for v in labels[i].tolist()]
        padded = np.pad(x[i].numpy(), [(0, 0), (16, 16), (16, 16)], mode='reflect') # Mirror without repeating the edge.
        expected = padded[:, 16 + ty : 32 + ty, 16 - tx : 32 - tx]                  # Content moves right by tx, up by ty.
        np.testing.assert_array_equal(y[i].numpy(), expected)
    assert (labels != 0).any()

#----------------------------------------------------------------------------
# The geometric warp.

def test_upsample_matches_zero_stuffing_and_round_trip_is_exact():
    f = AugmentPipe().filter_sym6
    assert len(f) == 12 and abs(sum(f) - math.sqrt(2)) < 1e-12
    x = _rand(n=1, c=1, res=16, dtype=torch.float64)
    up = augment._upsample2x(x, f)
    assert up.shape == (1, 1, 32, 32)
    # Reference formula: insert zeros (length 2L-1), convolve with f, keep samples 5 .. 5+2L-1.
    def up1d(v):
        z = np.zeros(2 * len(v) - 1)
        z[::2] = v
        return np.convolve(z, np.asarray(f, dtype=np.float32).astype(np.float64))[5 : 5 + 2 * len(v)] # Taps stored as float32.
    expected = np.apply_along_axis(up1d, 0, np.apply_along_axis(up1d, 1, x[0, 0].numpy()))
    np.testing.assert_allclose(up[0, 0].numpy(), expected, atol=1e-12)
    # Orthogonal lowpass: downsampling undoes upsampling away from the borders.
    down = augment._downsample2x(up, f)
    assert down.shape == x.shape
    np.testing.assert_allclose(down[0, 0, 3:-3, 3:-3].numpy(), x[0, 0, 3:-3, 3:-3].numpy(), atol=1e-6) # float32 taps: orthogonal to ~1e-7.

def test_upsample_float32_sums_in_edms_order():
    # EDM upsamples by interleaving zeros and correlating with the reversed taps;
    # a transposed convolution is the same map but rounds differently in float32,
    # which made augmented images (and so the loss) differ from EDM's by ~1e-7.
    f = AugmentPipe().filter_sym6
    x = _rand(n=2, c=3, res=16, dtype=torch.float32)
    taps = torch.tensor(f[::-1], dtype=torch.float32)
    z = torch.zeros(2, 3, 16, 32)
    z[:, :, :, 0::2] = x
    z = torch.nn.functional.conv2d(z[:, :, :, :-1], taps.reshape(1, 1, 1, 12).repeat(3, 1, 1, 1), padding=[0, 6], groups=3)
    zz = torch.zeros(2, 3, 32, z.shape[3])
    zz[:, :, 0::2, :] = z
    expected = torch.nn.functional.conv2d(zz[:, :, :-1, :], taps.reshape(1, 1, 12, 1).repeat(3, 1, 1, 1), padding=[6, 0], groups=3)
    assert torch.equal(augment._upsample2x(x, f), expected)

def test_warp_integer_translation_is_exact():
    x = _rand(n=2, res=16)
    G_inv = augment._translate2d(torch.full([2], -3.0), torch.full([2], 2.0), 'cpu') # Output (x, y) reads input (x - 3, y + 2).
    y = augment._warp(x, G_inv, AugmentPipe().filter_sym6)
    torch.testing.assert_close(y[:, :, :-2, 3:], x[:, :, 2:, :-3], atol=1e-4, rtol=0)

def test_warp_quarter_turn_matches_rot90_on_smooth_images():
    x, _, _ = _smooth(res=32, period=32)
    G_inv = augment._rotate2d(torch.full([2], math.pi / 2), 'cpu')
    y = augment._warp(x, G_inv, AugmentPipe().filter_sym6)
    err = (y - torch.rot90(x, 1, dims=[2, 3])).abs()[..., 4:-4, 4:-4].max().item()
    wrong = (y - torch.rot90(x, -1, dims=[2, 3])).abs()[..., 4:-4, 4:-4].max().item()
    assert err < 0.05 and wrong > 1.0

def test_fractional_translation_and_scale_known_answers():
    # Sinusoids are shifted/stretched analytically; compare away from the borders.
    res, period = 32, 64
    x_img, xs, ys = _smooth(n=1, c=1, res=res, period=period)
    f = lambda X, Y: (torch.sin(2 * math.pi * X / period) + torch.cos(2 * math.pi * Y / period)).to(torch.float32)
    x_img = f(xs, ys)[None, None].repeat(8, 1, 1, 1)

    torch.manual_seed(4)
    y, labels = AugmentPipe(translate_frac=1, translate_frac_std=0.05)(x_img)
    assert labels.abs().max() * res * 0.05 < 6 # Shifts stay clear of the compared region's reflected border.
    for i in range(8):
        tx, ty = labels[i, 0].item() * res * 0.05, labels[i, 1].item() * res * 0.05
        expected = f(xs - tx, ys - ty) # Content moves by (+tx, +ty) pixels.
        torch.testing.assert_close(y[i, 0, 8:-8, 8:-8], expected[8:-8, 8:-8], atol=0.02, rtol=0)

    torch.manual_seed(5)
    y, labels = AugmentPipe(scale=1, scale_std=0.3)(x_img)
    c = (res - 1) / 2
    for i in range(8):
        s = 2 ** (labels[i, 0].item() * 0.3)
        expected = f((xs - c) / s + c, (ys - c) / s + c) # Magnified by s about the centre.
        torch.testing.assert_close(y[i, 0, 8:-8, 8:-8], expected[8:-8, 8:-8], atol=0.02, rtol=0)

#----------------------------------------------------------------------------
# Label layout and RNG draw order of the EDM configuration.

def test_edm_labels_and_draw_order():
    N, p = 32, 0.6
    x = _rand(n=N, res=16)
    pipe = AugmentPipe(p=p, **EDM_KWARGS)
    torch.manual_seed(123)
    y, labels = pipe(x)
    assert y.shape == x.shape and y.dtype == torch.float32 and labels.shape == (N, 9) and labels.dtype == torch.float32

    # Replay the expected draws: per transform, its parameters first, then the gate(s).
    torch.manual_seed(123)
    gate = lambda w, prob, shape: torch.where(torch.rand(shape) < prob, w, torch.zeros_like(w))
    xf = gate(torch.randint(2, [N, 1, 1, 1]), 1e8 * p, [N, 1, 1, 1]).reshape(N)
    yf = gate(torch.randint(2, [N, 1, 1, 1]), p, [N, 1, 1, 1]).reshape(N)
    sc = gate(torch.randn([N]), p, [N])
    rot = gate((torch.rand([N]) * 2 - 1) * math.pi, p, [N])
    an = torch.randn([N])
    an_r = (torch.rand([N]) * 2 - 1) * math.pi
    an = gate(an, p, [N])
    an_r = gate(an_r, 0.5, [N])
    tr = gate(torch.randn([2, N]), p, [1, N])
    expected = torch.stack([xf, yf, sc, rot.cos() - 1, rot.sin(), an * an_r.cos(), an * an_r.sin(), tr[0], tr[1]], dim=1).float()
    torch.testing.assert_close(labels, expected, atol=1e-6, rtol=0)
    assert torch.all(labels[:, 0] == xf) and set(xf.tolist()) == {0, 1} # 1e8 * p: the flip is a fair coin.
    assert 0 < (sc != 0).float().mean() < 1 # Gated with probability p.

    # The output is the flips followed by one warp through the composed inverse matrix.
    G = []
    for i in range(N):
        S = lambda sx, sy: _np_mat([[sx, 0, 0], [0, sy, 0], [0, 0, 1]])
        R = lambda t: _np_mat([[math.cos(t), -math.sin(t), 0], [math.sin(t), math.cos(t), 0], [0, 0, 1]])
        T = lambda tx, ty: _np_mat([[1, 0, tx], [0, 1, ty], [0, 0, 1]])
        s, a = 2 ** (0.2 * sc[i].item()), 2 ** (0.2 * an[i].item())
        r = an_r[i].item()
        G.append(S(1 / s, 1 / s) @ R(rot[i].item()) @ R(-r) @ S(1 / a, a) @ R(r) @ T(-tr[0, i].item() * 16 * 0.125, -tr[1, i].item() * 16 * 0.125))
    flipped = torch.where(xf.reshape(N, 1, 1, 1) == 1, x.flip(3), x)
    flipped = torch.where(yf.reshape(N, 1, 1, 1) == 1, flipped.flip(2), flipped)
    manual = augment._warp(flipped, torch.as_tensor(np.stack(G), dtype=torch.float32), pipe.filter_sym6)
    torch.testing.assert_close(y, manual, atol=1e-4, rtol=0)

def test_label_widths_per_transform():
    x = _rand(n=2, res=8)
    widths = dict(xflip=1, yflip=1, rotate_int=2, translate_int=2, scale=1, rotate_frac=2, aniso=2, translate_frac=2,
        brightness=1, contrast=1, lumaflip=1, hue=2, saturation=1)
    for name, width in widths.items():
        _, labels = AugmentPipe(**{name: 1})(x)
        assert labels.shape == (2, width), name

#----------------------------------------------------------------------------
# Colour transforms.

def test_color_known_answers():
    N = 16
    x = _rand(n=N, res=8)
    torch.manual_seed(6)
    y, labels = AugmentPipe(brightness=1)(x)
    torch.testing.assert_close(y - x, (labels[:, 0] * 0.2).reshape(N, 1, 1, 1).expand_as(x), atol=1e-5, rtol=0)

    torch.manual_seed(7)
    y, labels = AugmentPipe(contrast=1)(x)
    torch.testing.assert_close(y, x * torch.exp2(labels[:, 0] * 0.5).reshape(N, 1, 1, 1), atol=1e-5, rtol=1e-5)

    torch.manual_seed(8)
    y, labels = AugmentPipe(lumaflip=1)(x[:, :1]) # Grayscale: the luma flip negates.
    sign = 1 - 2 * labels[:, 0].reshape(N, 1, 1, 1)
    torch.testing.assert_close(y, x[:, :1] * sign, atol=1e-5, rtol=0)

    torch.manual_seed(9)
    y, labels = AugmentPipe(hue=1)(x) # Rotation about the grey axis: keeps luma and norm.
    torch.testing.assert_close(y.mean(dim=1), x.mean(dim=1), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.norm(dim=1), x.norm(dim=1), atol=1e-5, rtol=1e-5)
    assert ((labels[:, 0] + 1) ** 2 + labels[:, 1] ** 2 - 1).abs().max() < 1e-5

    grey = x[:, :1].repeat(1, 3, 1, 1)
    torch.manual_seed(10)
    y, labels = AugmentPipe(saturation=1)(grey) # Grey pixels have nothing to saturate.
    torch.testing.assert_close(y, grey, atol=1e-5, rtol=0)
    assert (labels != 0).any()

    with pytest.raises(ValueError, match='1 or 3 channels'):
        AugmentPipe(brightness=1)(_rand(c=2))

def test_hue_matrix_rounds_like_edm():
    # EDM builds the hue rotation from the float32 entries of the luma axis, so
    # every product is rounded in float32; using float64 axis entries moved the
    # hue-augmented pixels by ~1e-7 away from EDM's.
    N = 7
    x = _rand(n=N, res=8)
    torch.manual_seed(3)
    y, _ = AugmentPipe(hue=1)(x)
    torch.manual_seed(3) # Same draws: angle, then the (always passing) gate.
    theta = (torch.rand([N]) * 2 - 1) * np.pi
    assert (torch.rand([N]) < 1).all()
    a = torch.tensor(np.asarray([1, 1, 1, 0]) / np.sqrt(3), dtype=torch.float32)
    c, s = theta.cos(), theta.sin()
    k = 1 - c
    v = a[0] # All three entries are equal.
    M = torch.zeros(N, 3, 4)
    diag, off_p, off_m = v * v * k + c, v * v * k + v * s, v * v * k - v * s
    for i in range(3):
        M[:, i, i] = diag
        M[:, i, (i + 1) % 3] = off_m
        M[:, i, (i + 2) % 3] = off_p
    expected = (M[:, :, :3] @ x.reshape(N, 3, -1) + M[:, :, 3:]).reshape(x.shape)
    assert torch.equal(y, expected)

#----------------------------------------------------------------------------
# Determinism, gradients, sizes, pickling.

def test_determinism_under_seed():
    x = _rand()
    pipe = AugmentPipe(p=0.5, **EDM_KWARGS, brightness=1, hue=1)
    outs = []
    for seed in [5, 5, 6]:
        torch.manual_seed(seed)
        outs.append(pipe(x))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    assert not torch.equal(outs[0][1], outs[2][1])

def test_gradients_flow():
    pipe = AugmentPipe(p=1, **EDM_KWARGS, brightness=1, contrast=1, hue=1, saturation=1)
    x = _rand(n=1, c=3, res=8, dtype=torch.float64).requires_grad_(True)
    def fn(v):
        torch.manual_seed(11) # Same transform on every evaluation.
        return pipe(v)[0]
    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-5, fast_mode=True) # J against random vectors: every input and output enters

@pytest.mark.parametrize('res', [8, 32])
def test_edm_config_shapes(res):
    x = _rand(n=3, res=res)
    torch.manual_seed(12)
    y, labels = AugmentPipe(p=0.12, **EDM_KWARGS)(x)
    assert y.shape == x.shape and y.dtype == x.dtype and torch.isfinite(y).all()
    assert labels.shape == (3, 9) and labels.dtype == torch.float32
    torch.manual_seed(13)
    y, labels = AugmentPipe(p=1, **EDM_KWARGS)(x[:, :1])
    assert y.shape == (3, 1, res, res) and torch.isfinite(y).all()

def test_pickle_round_trip():
    pipe = AugmentPipe(p=0.12, **EDM_KWARGS)
    clone = pickle.loads(pickle.dumps(pipe))
    assert clone.p == 0.12 and clone.xflip == 1e8 and clone.filter_sym6 == pipe.filter_sym6
    x = _rand()
    torch.manual_seed(14)
    a = pipe(x)
    torch.manual_seed(14)
    b = clone(x)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(ValueError, match='NCHW'):
        pipe(x[0])

#----------------------------------------------------------------------------
# A pickled pipe loads and runs where only numpy, torch and a stock
# torch_utils exist (as inside a stock EDM checkout), with identical output.

def test_pickle_runs_in_stock_edm_env(tmp_path):
    from stock_env import run_in_stock_env
    pipe = AugmentPipe(p=0.5, **EDM_KWARGS)
    x = _rand(n=4, res=8)
    torch.save(x, tmp_path / 'x.pt')
    with open(tmp_path / 'pipe.pkl', 'wb') as f:
        pickle.dump(pipe, f)
    torch.manual_seed(15)
    y, labels = pipe(x)
    run_in_stock_env(f'''
        import pickle, torch
        pipe = pickle.load(open({str(tmp_path / 'pipe.pkl')!r}, 'rb'))
        assert type(pipe).__name__ == 'AugmentPipe' and type(pipe).__module__.startswith('_imported_module_')
        torch.manual_seed(15)
        y, labels = pipe(torch.load({str(tmp_path / 'x.pt')!r}))
        torch.save((y, labels), {str(tmp_path / 'out.pt')!r})
    ''', tmp_path)
    y2, labels2 = torch.load(tmp_path / 'out.pt')
    assert torch.equal(labels, labels2) and torch.equal(y, y2)

#----------------------------------------------------------------------------
