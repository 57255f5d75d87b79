"""Tests for training/spectral_loss.py and the --spectral* options (edm_spectral/cli.py):
known answers against a direct numpy restatement of the paper's formulas,
wavelet coefficients (ptwt) against PyWavelets, gradients, invariances, optimisation."""

import pickle

import click
import numpy as np
import pytest
import pywt
import torch
from click.testing import CliRunner

from edm_spectral.cli import spectral_kwargs_from_options, spectral_options
from training.spectral_loss import CHOICES, SpectralLoss, effective_levels, safe_angle, wavedec

# pywt warns when asked for more levels than dwt_max_level (used on purpose for tiny inputs).
pytestmark = pytest.mark.filterwarnings('ignore:Level value of:UserWarning')

KINDS = ['fourier-amp', 'fourier-amp-phase', 'wavelet']
SHAPES = [(2, 3, 8, 8), (2, 2, 7, 9), (3, 2, 17), (2, 1, 16)]

#----------------------------------------------------------------------------
# Direct numpy restatement of paper.md's formulas on the full FFT / pywt.

def np_fourier(x_hat, x, kind, reduction='sum', fft_norm='ortho', ap_form='product', phase_wrap=True):
    axes = tuple(range(2, x.ndim))
    Z_hat = np.fft.fftn(x_hat, axes=axes, norm=fft_norm)
    Z = np.fft.fftn(x, axes=axes, norm=fft_norm)
    N = x.shape[0]
    red = (lambda t: t.reshape(N, -1).sum(1)) if reduction == 'sum' else (lambda t: t.reshape(N, -1).mean(1))
    dA = np.abs(np.abs(Z) - np.abs(Z_hat))
    if kind == 'fourier-amp':
        return red(dA)
    dphi = np.angle(Z) - np.angle(Z_hat)
    if phase_wrap:
        dphi = np.where(dphi > np.pi, dphi - 2 * np.pi, np.where(dphi <= -np.pi, dphi + 2 * np.pi, dphi))
    dphi = np.abs(dphi)
    if ap_form == 'elementwise':
        return red(dA * (1 + dphi))
    return red(dA) * (1 + dphi.reshape(N, -1).mean(1))

def np_wavelet(x_hat, x, wavelet='haar', levels=3, level_weights=None, mode='symmetric', reduction='sum'):
    J = effective_levels(levels, x.shape[2:], wavelet)
    dec = pywt.wavedec2 if x.ndim == 4 else pywt.wavedec
    c_hat, c = dec(x_hat, wavelet, mode=mode, level=J), dec(x, wavelet, mode=mode, level=J)
    gam = [1.0] * (J + 1) if level_weights is None else [level_weights[0]] + list(level_weights[-J:])
    N = x.shape[0]
    total = np.zeros(N)
    for j in range(J + 1):
        bands_hat = [c_hat[j]] if (j == 0 or x.ndim == 3) else list(c_hat[j])
        bands = [c[j]] if (j == 0 or x.ndim == 3) else list(c[j])
        g = gam[j] if isinstance(gam[j], list) else [gam[j]] * len(bands)
        for b_hat, b, gb in zip(bands_hat, bands, g):
            d = np.abs(b_hat - b).reshape(N, -1)
            total += gb * (d.sum(1) if reduction == 'sum' else d.mean(1))
    return total

def rand_pair(shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=dtype), torch.randn(shape, generator=g, dtype=dtype)

#----------------------------------------------------------------------------
# Zero for identical inputs, positive otherwise.

@pytest.mark.parametrize('kind', KINDS)
@pytest.mark.parametrize('shape', SHAPES)
def test_zero_iff_identical(kind, shape):
    a, b = rand_pair(shape)
    loss = SpectralLoss(kind)
    assert loss(a, a.clone()).shape == (shape[0],)
    assert torch.all(loss(a, a.clone()) == 0)
    assert torch.all(loss(a, b) > 0)

#----------------------------------------------------------------------------
# Fourier terms equal the full-FFT numpy formula (rfft + Hermitian weights inside).

@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('reduction', ['sum', 'mean'])
@pytest.mark.parametrize('fft_norm', ['ortho', 'backward'])
def test_fourier_matches_numpy(shape, reduction, fft_norm):
    a, b = rand_pair(shape, seed=1)
    cases = [('fourier-amp', 'product', True)] + [('fourier-amp-phase', f, w) for f in ['product', 'elementwise'] for w in [True, False]]
    for kind, ap_form, wrap in cases:
        got = SpectralLoss(kind, reduction=reduction, fft_norm=fft_norm, ap_form=ap_form, phase_wrap=wrap)(a, b)
        ref = np_fourier(a.double().numpy(), b.double().numpy(), kind, reduction, fft_norm, ap_form, wrap)
        assert got.dtype == torch.float32
        np.testing.assert_allclose(got.numpy(), ref, rtol=2e-5, err_msg=f'{kind} {ap_form} wrap={wrap}')

def test_known_answers_by_hand():
    # Orthonormal FFT of a unit impulse of length 4: four bins of amplitude 1/2.
    delta = torch.tensor([[[1.0, 0.0, 0.0, 0.0]]])
    zero = torch.zeros_like(delta)
    assert float(SpectralLoss('fourier-amp')(delta, zero)) == pytest.approx(2.0)
    assert float(SpectralLoss('fourier-amp', reduction='mean')(delta, zero)) == pytest.approx(0.5)
    assert float(SpectralLoss('fourier-amp', fft_norm='backward')(delta, zero)) == pytest.approx(4.0)
    # A sign flip keeps amplitudes and moves every phase by pi.
    assert float(SpectralLoss('fourier-amp-phase')(-delta, delta)) == pytest.approx(0.0)
    assert float(SpectralLoss('fourier-amp-phase', ap_form='elementwise')(-delta, delta)) == pytest.approx(0.0)
    # Against zero the phase is undefined and counts as agreeing: amp+phase = amp.
    assert float(SpectralLoss('fourier-amp-phase')(zero, delta)) == pytest.approx(2.0)
    # Haar of a constant [1, 1, 1, 1] over two levels: approximation 2, all details 0.
    ones = torch.ones(1, 1, 4)
    assert float(SpectralLoss('wavelet', levels=2)(ones, torch.zeros_like(ones))) == pytest.approx(2.0)
    assert float(SpectralLoss('wavelet', levels=2, level_weights=[0.5, 7, 7])(ones, torch.zeros_like(ones))) == pytest.approx(1.0)
    # 2-D Haar of a 2x2 checkerboard: only the diagonal band, coefficient 4/2 = 2.
    checker = torch.tensor([[[[1.0, -1.0], [-1.0, 1.0]]]])
    loss = SpectralLoss('wavelet', levels=1, level_weights=[1, [0, 0, 3]])
    assert float(loss(checker, torch.zeros_like(checker))) == pytest.approx(6.0)

def test_phase_wrap_changes_result():
    a, b = rand_pair((2, 1, 8, 8), seed=2)
    on = SpectralLoss('fourier-amp-phase', phase_wrap=True)(a, b)
    off = SpectralLoss('fourier-amp-phase', phase_wrap=False)(a, b)
    assert torch.all(off > on) # Unwrapped differences reach up to 2 pi.

def test_product_gate_is_mean_phase():
    # A sign flip of every pixel leaves the amplitudes and shifts every phase by exactly pi.
    a = torch.randn(1, 1, 6, 6, dtype=torch.float64) + 3
    b = torch.randn(1, 1, 6, 6, dtype=torch.float64)
    amp = SpectralLoss('fourier-amp')(a, b)
    ap = SpectralLoss('fourier-amp-phase')(a, b)
    assert 1 <= float(ap / amp) <= 1 + np.pi
    assert float(SpectralLoss('fourier-amp')(a, -a)) == pytest.approx(0, abs=1e-12)

#----------------------------------------------------------------------------
# Wavelet terms: coefficients and losses against PyWavelets.

# Odd sizes, and tiny ones (3x3, length 5: shorter than the bior1.3 and db2 filters).
@pytest.mark.parametrize('name', ['haar', 'bior1.3', 'db2'])
@pytest.mark.parametrize('mode', CHOICES['wavelet_mode'])
def test_wavedec_matches_pywt(name, mode):
    rng = np.random.default_rng(3)
    filter_len = pywt.Wavelet(name).dec_len
    for shape in [(2, 3, 8, 8), (1, 2, 9, 7), (1, 1, 16, 13), (1, 1, 3, 3), (2, 2, 16), (2, 2, 33), (2, 2, 5)]:
        x = rng.standard_normal(shape)
        J = effective_levels(3, shape[2:], name)
        if mode in ('reflect', 'periodic') and min(shape[2:]) < filter_len:
            with pytest.raises(ValueError, match='at least as long as the'):
                wavedec(torch.from_numpy(x), name, mode, J)
            continue
        ref = (pywt.wavedec2 if len(shape) == 4 else pywt.wavedec)(x, name, mode=mode, level=J)
        got = wavedec(torch.from_numpy(x), name, mode, J)
        assert len(got) == len(ref) == J + 1
        np.testing.assert_allclose(got[0].numpy(), ref[0], atol=1e-12)
        for r, g in zip(ref[1:], got[1:]):
            for rb, gb in zip(r, g) if len(shape) == 4 else [(r, g)]: # cH, cV, cD in pywt's order and meaning.
                assert gb.shape == rb.shape
                np.testing.assert_allclose(gb.numpy(), rb, atol=1e-12)

def test_wavelet_long_signal():
    # 1-D audio-length input, against pywt.
    x = torch.randn(2, 1, 1001, dtype=torch.float64)
    for name in ['haar', 'bior1.3']:
        ref = pywt.wavedec(x.numpy(), name, mode='symmetric', level=3)
        got = wavedec(x, name, 'symmetric', 3)
        for r, g in zip(ref, got):
            np.testing.assert_allclose(g.numpy(), r, atol=1e-10)

def test_effective_levels_caps_by_size():
    assert effective_levels(3, (32, 32), 'haar') == 3
    assert effective_levels(3, (32, 32), 'bior1.3') == pywt.dwt_max_level(32, 6) == 2
    assert effective_levels(3, (4, 64), 'haar') == 2
    assert effective_levels(3, (2, 2), 'bior1.3') == 1

@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('wavelet', ['haar', 'bior1.3'])
@pytest.mark.parametrize('reduction', ['sum', 'mean'])
def test_wavelet_matches_numpy(shape, wavelet, reduction):
    a, b = rand_pair(shape, seed=4)
    for mode in ['symmetric', 'reflect']:
        got = SpectralLoss('wavelet', wavelet=wavelet, reduction=reduction, wavelet_mode=mode)(a, b)
        ref = np_wavelet(a.double().numpy(), b.double().numpy(), wavelet, 3, None, mode, reduction)
        np.testing.assert_allclose(got.numpy(), ref, rtol=2e-5)

def test_wavelet_level_weights():
    a, b = rand_pair((2, 3, 16, 16), seed=5)
    weights = [0.5, 2.0, [1.0, 0.0, 3.0], 0.25]
    got = SpectralLoss('wavelet', level_weights=weights)(a, b)
    ref = np_wavelet(a.double().numpy(), b.double().numpy(), 'haar', 3, weights)
    np.testing.assert_allclose(got.numpy(), ref, rtol=2e-5)
    # Levels capped by size keep the approximation weight and the finest levels' weights.
    a, b = rand_pair((2, 1, 4, 4), seed=6)
    got = SpectralLoss('wavelet', levels=3, level_weights=[3.0, 100.0, 2.0, 0.5])(a, b)
    ref = np_wavelet(a.double().numpy(), b.double().numpy(), 'haar', 3, [3.0, 100.0, 2.0, 0.5])
    np.testing.assert_allclose(got.numpy(), ref, rtol=2e-5)
    zero = SpectralLoss('wavelet', level_weights=[0.0, 0.0, 0.0, 0.0])(a, b)
    assert torch.all(zero == 0)

#----------------------------------------------------------------------------
# Gradients: finite everywhere, correct where smooth.

@pytest.mark.parametrize('kind', KINDS)
@pytest.mark.parametrize('ap_form', ['product', 'elementwise'])
def test_gradients_finite_degenerate_inputs(kind, ap_form):
    loss = SpectralLoss(kind, ap_form=ap_form)
    shape = (2, 3, 8, 8)
    cases = [
        (torch.zeros(shape), torch.zeros(shape)),
        (torch.zeros(shape), torch.randn(shape)),
        (torch.full(shape, 0.3), torch.full(shape, -0.7)),
        (torch.randn(shape), torch.zeros(shape)),
        (torch.zeros(2, 1, 9), torch.ones(2, 1, 9)),
    ]
    for pred, target in cases:
        pred = pred.clone().requires_grad_(True)
        out = loss(pred, target)
        assert torch.isfinite(out).all()
        out.sum().backward()
        assert pred.grad is not None and torch.isfinite(pred.grad).all()

@pytest.mark.parametrize('kind', KINDS)
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_precision_inputs(kind, dtype):
    a, b = rand_pair((2, 3, 8, 8), seed=7)
    pred = a.to(dtype).requires_grad_(True)
    out = SpectralLoss(kind)(pred, b.to(dtype))
    assert out.dtype == torch.float32
    ref = SpectralLoss(kind)(a.to(dtype).float(), b.to(dtype).float())
    torch.testing.assert_close(out, ref)
    out.sum().backward()
    assert pred.grad.dtype == dtype and torch.isfinite(pred.grad.float()).all() and pred.grad.float().abs().sum() > 0
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert SpectralLoss(kind)(a, b).dtype == torch.float32

@pytest.mark.parametrize('kind,ap_form,wrap', [('fourier-amp', 'product', True), ('fourier-amp-phase', 'product', True),
    ('fourier-amp-phase', 'elementwise', True), ('fourier-amp-phase', 'product', False), ('wavelet', 'product', True)])
@pytest.mark.parametrize('shape', [(1, 2, 5, 6), (2, 1, 7)])
def test_gradcheck(kind, ap_form, wrap, shape):
    a, b = rand_pair(shape, seed=8, dtype=torch.float64)
    loss = SpectralLoss(kind, ap_form=ap_form, phase_wrap=wrap, wavelet='bior1.3')
    a.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: loss(x, b), (a,), eps=1e-6, atol=1e-6, rtol=1e-4)

def test_grad_equals_full_fft_formula():
    # The rfft-with-weights implementation and the full-FFT formula are the same function.
    a, b = rand_pair((2, 2, 6, 7), seed=9, dtype=torch.float64)
    a1, a2 = a.clone().requires_grad_(True), a.clone().requires_grad_(True)
    SpectralLoss('fourier-amp-phase', ap_form='elementwise')(a1, b).sum().backward()
    Z1, Z = torch.fft.fftn(a2, dim=(2, 3), norm='ortho'), torch.fft.fftn(b, dim=(2, 3), norm='ortho')
    dphi = torch.angle(Z) - torch.angle(Z1)
    dphi = (dphi - 2 * np.pi * torch.round(dphi / (2 * np.pi))).abs() # Wrapped; the rounding has no gradient.
    ((Z.abs() - Z1.abs()).abs() * (1 + dphi)).sum().backward()
    torch.testing.assert_close(a1.grad, a2.grad)

def test_safe_angle():
    z = torch.tensor([0j, 1 + 1j, -1 + 0j, 1e-30 + 0j], dtype=torch.complex128)
    torch.testing.assert_close(safe_angle(z), torch.angle(z))
    zr = torch.view_as_real(z).clone().requires_grad_(True)
    safe_angle(torch.view_as_complex(zr)).sum().backward()
    assert torch.isfinite(zr.grad).all()
    assert zr.grad[0].abs().sum() == 0
    torch.testing.assert_close(zr.grad[1], torch.tensor([-0.5, 0.5], dtype=torch.float64))

#----------------------------------------------------------------------------
# Invariances and optimisation.

@pytest.mark.parametrize('kind', ['fourier-amp', 'fourier-amp-phase'])
def test_circular_shift_invariance(kind):
    a, b = rand_pair((2, 3, 8, 9), seed=10)
    loss = SpectralLoss(kind)
    base = loss(a, b)
    for shift in [(1, 0), (3, 5), (-2, 4)]:
        torch.testing.assert_close(loss(torch.roll(a, shift, (2, 3)), torch.roll(b, shift, (2, 3))), base, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss(torch.roll(a[..., 0], 3, 2), torch.roll(b[..., 0], 3, 2)), loss(a[..., 0], b[..., 0]), rtol=1e-5, atol=1e-5)
    if kind == 'fourier-amp': # Amplitudes ignore a shift of one input only.
        torch.testing.assert_close(loss(torch.roll(a, (2, 1), (2, 3)), b), base, rtol=1e-5, atol=1e-5)

@pytest.mark.parametrize('kind,wavelet', [('fourier-amp', 'haar'), ('fourier-amp-phase', 'haar'), ('wavelet', 'haar'), ('wavelet', 'bior1.3')])
def test_adam_lowers_term(kind, wavelet):
    torch.manual_seed(11)
    target = torch.randn(2, 3, 8, 8)
    pred = torch.randn(2, 3, 8, 8).requires_grad_(True)
    loss = SpectralLoss(kind, wavelet=wavelet)
    opt = torch.optim.Adam([pred], lr=0.05)
    start = float(loss(pred, target).sum().detach())
    for _ in range(30):
        opt.zero_grad()
        loss(pred, target).sum().backward()
        opt.step()
    assert float(loss(pred, target).sum().detach()) < 0.5 * start

#----------------------------------------------------------------------------
# Multiplier: weighted vs constant, warm-up, sigma cut-off.

def test_multiplier():
    sigma = torch.tensor([0.1, 1.0, 10.0]).reshape(3, 1, 1, 1)
    lam = 1 / sigma ** 2
    torch.testing.assert_close(SpectralLoss('fourier-amp').multiplier(lam, sigma), lam.flatten())
    torch.testing.assert_close(SpectralLoss('fourier-amp', weight=0.5).multiplier(lam, sigma), torch.full([3], 0.5))
    warm = SpectralLoss('fourier-amp', warmup_kimg=10)
    torch.testing.assert_close(warm.multiplier(lam, sigma, cur_kimg=0), torch.zeros(3))
    torch.testing.assert_close(warm.multiplier(lam, sigma, cur_kimg=2.5), 0.25 * lam.flatten())
    torch.testing.assert_close(warm.multiplier(lam, sigma, cur_kimg=50), lam.flatten())
    cut = SpectralLoss('fourier-amp', weight=2.0, sigma_max=1.0)
    torch.testing.assert_close(cut.multiplier(lam, sigma), torch.tensor([2.0, 0.0, 0.0]))

#----------------------------------------------------------------------------
# Errors, pickling, device handling.

def test_bad_arguments():
    for kwargs in [dict(kind='fourier'), dict(kind='wavelet', wavelet='nope'), dict(kind='fourier-amp', reduction='max'),
            dict(kind='fourier-amp', fft_norm='forward2'), dict(kind='fourier-amp', ap_form='x'), dict(kind='fourier-amp', weight='auto'),
            dict(kind='fourier-amp', weight=-1), dict(kind='wavelet', levels=0), dict(kind='wavelet', level_weights=[1, 1]),
            dict(kind='wavelet', wavelet_mode='smooth'), dict(kind='fourier-amp', sigma_max=0), dict(kind='fourier-amp', ddim_steps=0),
            dict(kind='wavelet', level_weights=[1, -1, 1, 1]), dict(kind='wavelet', level_weights=[1, [1, 2], 1, 1]),
            dict(kind='fourier-amp', level_weights=[1, 1, 1, 1]), dict(kind='fourier-amp', warmup_kimg=-1), dict(kind='wavelet', levels=2.5)]:
        arg = next((k for k in kwargs if k != 'kind'), 'kind') # The message names the argument at fault.
        with pytest.raises(ValueError, match=f'^{arg}='):
            SpectralLoss(**kwargs)
    with pytest.raises(ValueError, match="wavelet_mode='periodization': .*ptwt has no such mode"):
        SpectralLoss('wavelet', wavelet_mode='periodization')
    loss = SpectralLoss('fourier-amp')
    with pytest.raises(ValueError, match='shape'):
        loss(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 7))
    with pytest.raises(ValueError, match=r'\[N, C, T\]'):
        loss(torch.zeros(2, 8), torch.zeros(2, 8))
    with pytest.raises(ValueError, match='band weights'):
        SpectralLoss('wavelet', level_weights=[1, [1, 2, 3], 1, 1])(torch.zeros(1, 1, 16), torch.ones(1, 1, 16))

def test_pickle_roundtrip():
    a, b = rand_pair((2, 3, 8, 8), seed=12)
    for kind in KINDS:
        loss = SpectralLoss(kind, weight=0.1, wavelet='bior1.3', level_weights=[1, 2, 3, 4] if kind == 'wavelet' else None, warmup_kimg=5)
        loss2 = pickle.loads(pickle.dumps(loss))
        torch.testing.assert_close(loss2(a, b), loss(a, b))
        assert loss2.init_args[0] == kind and loss2.init_kwargs['weight'] == 0.1 and loss2.weight == 0.1

def test_short_signal_in_wrapping_modes():
    a, b = rand_pair((1, 1, 5, 5), seed=13)
    assert torch.isfinite(SpectralLoss('wavelet', wavelet='db2', wavelet_mode='reflect')(a, b)).all()
    with pytest.raises(ValueError, match="'reflect' needs signals at least as long as the bior1.3 filter"):
        SpectralLoss('wavelet', wavelet='bior1.3', wavelet_mode='reflect')(a, b)

#----------------------------------------------------------------------------
# The shared click options.

@click.command()
@spectral_options
def _cmd(**opts):
    click.echo(repr(spectral_kwargs_from_options(opts)))

def test_cli_options():
    runner = CliRunner()
    res = runner.invoke(_cmd, [])
    assert res.exit_code == 0 and res.output.strip() == 'None'
    res = runner.invoke(_cmd, ['--spectral=wavelet', '--spectral-weight=1e-4', '--spectral-wavelet=bior1.3', '--spectral-levels=2',
        '--spectral-level-weights=1,0.5:1:2,3', '--spectral-reduction=mean', '--spectral-phase-wrap=false', '--spectral-warmup=5',
        '--spectral-sigma-max=80', '--spectral-wavelet-mode=periodic'])
    assert res.exit_code == 0, res.output
    kwargs = eval(res.output)
    assert kwargs == dict(kind='wavelet', weight=1e-4, reduction='mean', fft_norm='ortho', ap_form='product', phase_wrap=False,
        wavelet='bior1.3', levels=2, level_weights=[1.0, [0.5, 1.0, 2.0], 3.0], wavelet_mode='periodic', warmup_kimg=5.0,
        sigma_max=80.0, ddim_steps=1)
    SpectralLoss(**kwargs)
    res = runner.invoke(_cmd, ['--spectral=fourier-amp-phase', '--spectral-ap-form=elementwise', '--spectral-fft-norm=backward'])
    kwargs = eval(res.output)
    assert kwargs['weight'] == 'weighted' and kwargs['ap_form'] == 'elementwise' and kwargs['fft_norm'] == 'backward'
    for bad, msg in [(['--spectral=fourier'], 'fourier'), (['--spectral=wavelet', '--spectral-weight=big'], 'weighted'),
            (['--spectral=wavelet', '--spectral-wavelet=nope'], "--spectral-wavelet='nope': not a discrete PyWavelets wavelet"),
            (['--spectral=wavelet', '--spectral-level-weights=1,2'], '--spectral-level-weights=[1.0, 2.0]: needs 4 values'),
            (['--spectral=wavelet', '--spectral-level-weights=1,2:3,2,2'], '1 weight or 3 band weights'),
            (['--spectral=fourier-amp', '--spectral-level-weights=1,2,2,2'], 'wavelet term only'),
            (['--spectral=wavelet', '--spectral-wavelet-mode=periodization'], 'periodization'),
            (['--spectral=fourier-amp', '--spectral-weight=-1'], '--spectral-weight=-1.0: must be a finite number >= 0'),
            (['--spectral=fourier-amp', '--spectral-warmup=-1'], '--spectral-warmup=-1.0'),
            (['--spectral=wavelet', '--spectral-level-weights=1,x,2,2'], 'comma-separated'),
            (['--spectral=fourier-amp', '--spectral-sigma-max=-1'], '--spectral-sigma-max=-1.0: must be a finite number > 0'),
            (['--spectral=fourier-amp', '--spectral-levels=0'], '--spectral-levels=0: must be an integer >= 1'),
            (['--spectral=fourier-amp', '--spectral-phase-wrap=maybe'], 'phase-wrap')]:
        res = runner.invoke(_cmd, bad)
        assert res.exit_code != 0 and msg in res.output, (bad, res.output)

def test_cli_options_follow_spectral_loss():
    # Choices and defaults come from SpectralLoss: the help lists exactly its modes, and no options give its defaults.
    help_text = ' '.join(CliRunner().invoke(_cmd, ['--help']).output.split())
    assert 'periodization' not in help_text and all(mode in help_text for mode in CHOICES['wavelet_mode'])
    for kind in CHOICES['kind']:
        kwargs = eval(CliRunner().invoke(_cmd, [f'--spectral={kind}']).output)
        settings = lambda loss: {k: v for k, v in loss.__dict__.items() if not k.startswith('_')}
        assert settings(SpectralLoss(**kwargs)) == settings(SpectralLoss(kind))

#----------------------------------------------------------------------------
