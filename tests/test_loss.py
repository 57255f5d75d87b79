"""Tests for training/loss.py: bit-exact EDM losses with the spectral term off,
exact bookkeeping of the spectral term when on, DDPM as epsilon MSE, DDIM
roll-out, statistics, pickling into a stock EDM environment."""

import pickle

import numpy as np
import pytest
import torch

from stock_env import run_in_stock_env
from torch_utils import training_stats
from training.loss import DDPMLoss, EDMLoss, VELoss, VPLoss
from training.spectral_loss import SpectralLoss

pytestmark = pytest.mark.filterwarnings('ignore:Level value of:UserWarning')

LOSSES = [VPLoss, VELoss, EDMLoss, DDPMLoss]
KINDS = ['fourier-amp', 'fourier-amp-phase', 'wavelet']

#----------------------------------------------------------------------------
# A tiny stand-in denoiser with the preconditioner call interface; it records
# what it was called with. Works on [N, C, H, W] and [N, C, T].

class StubNet(torch.nn.Module):
    def __init__(self, channels=3):
        super().__init__()
        self.a = torch.nn.Parameter(torch.linspace(0.5, 1.5, channels))
        self.b = torch.nn.Parameter(torch.tensor(0.3))
        self.calls = []

    def forward(self, x, sigma, class_labels=None, augment_labels=None):
        self.calls.append(dict(x=x.detach().clone(), sigma=torch.as_tensor(sigma).detach().clone(), augment_labels=augment_labels))
        scale = self.a.reshape([1, -1] + [1] * (x.ndim - 2))
        c_skip = 1 / (1 + sigma ** 2)
        return c_skip * x + self.b * torch.tanh(scale * x) * sigma / (1 + sigma)

# An epsilon-prediction model inside VP preconditioning, as DDPMLoss expects:
# D = x - sigma * eps_hat(x / sqrt(1 + sigma^2)).

class EpsNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.7))

    def eps(self, x_t, sigma):
        return self.w * torch.tanh(x_t) + torch.sin(3 * torch.log1p(sigma))

    def forward(self, x, sigma, class_labels=None, augment_labels=None):
        sigma = torch.as_tensor(sigma)
        return x - sigma * self.eps(x / (1 + sigma ** 2).sqrt(), sigma)

# A mock augment pipe that consumes RNG like the real one (flip decisions).
def mock_augment(images):
    flip = torch.rand([images.shape[0]] + [1] * (images.ndim - 1), device=images.device) < 0.5
    labels = torch.randn([images.shape[0], 9], device=images.device)
    return torch.where(flip, images.flip(-1), images), labels

def images_for(shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).clamp(-1, 1)

#----------------------------------------------------------------------------
# Straightforward restatement of the reference losses (same draw order).

def reference_loss(cls, net, images, labels, augment_pipe, **kw):
    shape = [images.shape[0]] + [1] * (images.ndim - 1)
    if cls is VPLoss:
        beta_d, beta_min, eps_t = kw.get('beta_d', 19.9), kw.get('beta_min', 0.1), kw.get('epsilon_t', 1e-5)
        t = 1 + torch.rand(shape) * (eps_t - 1)
        sigma = ((0.5 * beta_d * (t ** 2) + beta_min * t).exp() - 1).sqrt()
        weight = 1 / sigma ** 2
    elif cls is VELoss:
        sigma = 0.02 * ((100 / 0.02) ** torch.rand(shape))
        weight = 1 / sigma ** 2
    elif cls is EDMLoss:
        sigma = (torch.randn(shape) * 1.2 + -1.2).exp()
        weight = (sigma ** 2 + 0.5 ** 2) / (sigma * 0.5) ** 2
    else:
        betas = np.linspace(1e-4, 0.02, 1000)
        sigmas = torch.tensor(np.sqrt(1 / np.cumprod(1 - betas) - 1), dtype=torch.float32)
        sigma = sigmas[torch.randint(1000, shape)]
        weight = 1 / sigma ** 2
    y, aug = augment_pipe(images) if augment_pipe is not None else (images, None)
    n = torch.randn_like(y) * sigma
    D = net(y + n, sigma, labels, augment_labels=aug)
    return weight * ((D - y) ** 2)

@pytest.mark.parametrize('cls', LOSSES)
@pytest.mark.parametrize('shape', [(4, 3, 8, 8), (3, 3, 21)])
@pytest.mark.parametrize('augment', [None, mock_augment])
def test_spectral_off_is_bit_identical(cls, shape, augment):
    images = images_for(shape)
    net = StubNet()
    for kwargs in [dict(), dict(spectral_kwargs=None), dict(spectral_kwargs=dict(kind='none'))]:
        loss_fn = cls(**kwargs)
        assert loss_fn.spectral is None
        torch.manual_seed(123)
        out = loss_fn(net=net, images=images, labels=None, augment_pipe=augment)
        torch.manual_seed(123)
        ref = reference_loss(cls, net, images, None, augment)
        assert out.shape == images.shape
        assert torch.equal(out, ref)

@pytest.mark.parametrize('cls', LOSSES)
def test_spectral_off_bit_identical_with_real_augment_pipe(cls):
    from training.augment import AugmentPipe
    pipe = AugmentPipe(p=0.5, xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1)
    images = images_for((3, 3, 16, 16), seed=9)
    net = StubNet()
    torch.manual_seed(77)
    out = cls()(net=net, images=images, labels=None, augment_pipe=pipe)
    torch.manual_seed(77)
    ref = reference_loss(cls, net, images, None, pipe)
    assert torch.equal(out, ref)
    assert net.calls[0]['augment_labels'].shape == (3, 9)

#----------------------------------------------------------------------------
# Spectral term on: sum(loss) gains exactly lambda_i * L_S,i per sample.

@pytest.mark.parametrize('cls', LOSSES)
@pytest.mark.parametrize('kind', KINDS)
@pytest.mark.parametrize('weight', ['weighted', 0.25])
def test_spectral_adds_lambda_times_LS(cls, kind, weight):
    images = images_for((4, 3, 8, 8), seed=1)
    net = StubNet()
    torch.manual_seed(7)
    base = cls()(net=net, images=images, labels=None, augment_pipe=mock_augment)
    sk = dict(kind=kind, weight=weight)
    seen = []
    def augment(x):
        seen.append(mock_augment(x))
        return seen[-1]
    torch.manual_seed(7)
    net.calls.clear()
    out = cls(spectral_kwargs=sk)(net=net, images=images, labels=None, augment_pipe=augment)
    y = seen[0][0]
    call = net.calls[0]
    with torch.no_grad():
        D = net(call['x'], call['sigma'])
    sigma = call['sigma'].flatten()
    L_S = SpectralLoss(**sk)(D, y)
    if weight == 'weighted':
        lam = {VPLoss: 1 / sigma ** 2, VELoss: 1 / sigma ** 2, DDPMLoss: 1 / sigma ** 2,
            EDMLoss: (sigma ** 2 + 0.25) / (sigma * 0.5) ** 2}[cls]
    else:
        lam = torch.full_like(sigma, weight)
    diff = (out - base).reshape(4, -1)
    torch.testing.assert_close(diff.sum(1), lam * L_S, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(diff, diff[:, :1].expand_as(diff), rtol=1e-3, atol=1e-3) # Spread evenly.

def test_spectral_1d_and_gradients_to_net():
    images = images_for((3, 2, 33), seed=2)
    for cls in LOSSES:
        for kind in KINDS:
            net = StubNet(channels=2)
            out = cls(spectral_kwargs=dict(kind=kind, weight=1.0))(net=net, images=images, labels=None)
            assert out.shape == images.shape and torch.isfinite(out).all()
            out.sum().backward()
            assert torch.isfinite(net.a.grad).all() and net.a.grad.abs().sum() > 0

def test_warmup_and_sigma_max():
    images = images_for((6, 3, 8, 8), seed=3)
    net = StubNet()
    def run(loss_fn):
        torch.manual_seed(5)
        return loss_fn(net=net, images=images, labels=None).reshape(6, -1).sum(1)
    base = run(EDMLoss())
    full = run(EDMLoss(spectral_kwargs=dict(kind='fourier-amp', weight=1.0)))
    warm = EDMLoss(spectral_kwargs=dict(kind='fourier-amp', weight=1.0, warmup_kimg=4))
    assert warm.cur_kimg == 0
    torch.testing.assert_close(run(warm), base) # No spectral term at kimg 0.
    warm.cur_kimg = 1.0
    torch.testing.assert_close(run(warm) - base, 0.25 * (full - base), rtol=1e-4, atol=1e-4)
    warm.cur_kimg = 10.0
    torch.testing.assert_close(run(warm), full)
    torch.manual_seed(5)
    sigma = (torch.randn(6) * 1.2 - 1.2).exp()
    cut = float(sigma.median())
    capped = run(EDMLoss(spectral_kwargs=dict(kind='fourier-amp', weight=1.0, sigma_max=cut)))
    keep = sigma < cut
    torch.testing.assert_close(capped[keep], full[keep])
    torch.testing.assert_close(capped[~keep], base[~keep])

def test_reports_base_and_spectral():
    images = images_for((4, 3, 8, 8), seed=4)
    collector = training_stats.Collector(regex='Loss/.*')
    loss_fn = EDMLoss(spectral_kwargs=dict(kind='wavelet'))
    torch.manual_seed(0)
    out = loss_fn(net=StubNet(), images=images, labels=None)
    collector.update()
    assert collector.num('Loss/base') == out.numel()
    assert collector.num('Loss/spectral') == 4
    assert collector.mean('Loss/spectral') > 0

def test_bad_spectral_options():
    with pytest.raises(ValueError, match='DDPMLoss only'):
        EDMLoss(spectral_kwargs=dict(kind='fourier-amp', ddim_steps=4))
    with pytest.raises(ValueError, match='kind'):
        VPLoss(spectral_kwargs=dict(kind='fft'))
    with pytest.raises(ValueError):
        DDPMLoss(beta_start=0.1, beta_end=0.01)

#----------------------------------------------------------------------------
# DDPM: epsilon MSE, one-step x0 estimate, DDIM roll-out.

def test_ddpm_sigmas_and_eps_mse():
    loss_fn = DDPMLoss()
    abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    np.testing.assert_allclose(loss_fn.sigmas().numpy(), np.sqrt(1 / abar - 1), rtol=1e-6)
    images = images_for((8, 3, 8, 8), seed=5)
    net = EpsNet()
    torch.manual_seed(9)
    out = loss_fn(net=net, images=images, labels=None)
    torch.manual_seed(9)
    step = torch.randint(1000, [8, 1, 1, 1])
    eps = torch.randn_like(images)
    a = torch.tensor(abar, dtype=torch.float32)[step]
    x_t = a.sqrt() * images + (1 - a).sqrt() * eps
    sigma = loss_fn.sigmas()[step]
    ref = (net.eps(x_t, sigma) - eps) ** 2
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=2e-3)

def test_ddpm_one_step_and_ddim_rollout_x0():
    images = images_for((4, 3, 8, 8), seed=6)
    net = EpsNet()
    abar = torch.tensor(np.cumprod(1 - np.linspace(1e-4, 0.02, 1000)))
    for K in [1, 3]:
        sk = dict(kind='fourier-amp', weight=1.0, ddim_steps=K)
        torch.manual_seed(11)
        base = DDPMLoss()(net=net, images=images, labels=None).reshape(4, -1).sum(1)
        torch.manual_seed(11)
        out = DDPMLoss(spectral_kwargs=sk)(net=net, images=images, labels=None).reshape(4, -1).sum(1)
        # The paper's DDIM in the DDPM parameterisation, in float64.
        torch.manual_seed(11)
        step = torch.randint(1000, [4, 1, 1, 1])
        eps = torch.randn_like(images).double()
        y = images.double()
        a = abar[step]
        x_t = a.sqrt() * y + (1 - a).sqrt() * eps
        steps = [step] + [torch.from_numpy(np.round(step.numpy() * k / K)).long() for k in range(K - 1, 0, -1)]
        for j, s in enumerate(steps):
            a = abar[s]
            eps_hat = net.eps(x_t, (1 / a - 1).sqrt()).detach()
            x0_hat = (x_t - (1 - a).sqrt() * eps_hat) / a.sqrt()
            if j + 1 < len(steps):
                a_next = abar[steps[j + 1]]
                x_t = a_next.sqrt() * x0_hat + (1 - a_next).sqrt() * eps_hat
        ref = SpectralLoss('fourier-amp')(x0_hat, y)
        torch.testing.assert_close((out - base).double(), ref, rtol=2e-3, atol=2e-3)
        # The roll-out itself, coefficient by coefficient.
        loss_fn = DDPMLoss()
        sigma = loss_fn.sigmas()[step]
        x = images + sigma * eps.float()
        got = loss_fn.ddim_rollout(net, x, net(x, sigma), step, loss_fn.sigmas(), None, None, K) if K > 1 else net(x, sigma)
        torch.testing.assert_close(got.double(), x0_hat, rtol=1e-4, atol=1e-4)

def test_ddim_rollout_backprops_through_all_steps():
    images = images_for((2, 3, 8, 8), seed=7)
    net = EpsNet()
    calls = []
    net.register_forward_hook(lambda m, i, o: calls.append(1))
    out = DDPMLoss(spectral_kwargs=dict(kind='wavelet', ddim_steps=4))(net=net, images=images, labels=None)
    assert len(calls) == 4
    out.sum().backward()
    assert torch.isfinite(net.w.grad)

#----------------------------------------------------------------------------
# A real tiny EDM network: every kind trains end to end.

@pytest.mark.parametrize('kind', KINDS)
def test_real_network_step(kind):
    from training.networks import EDMPrecond, VPPrecond
    torch.manual_seed(0)
    small = dict(model_type='SongUNet', model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[], dropout=0)
    for net, loss_fn in [(EDMPrecond(8, 3, **small), EDMLoss(spectral_kwargs=dict(kind=kind))),
            (VPPrecond(8, 3, **small), DDPMLoss(spectral_kwargs=dict(kind=kind, weight=1e-3)))]:
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        loss = loss_fn(net=net, images=images_for((2, 3, 8, 8)), labels=None)
        loss.sum().backward()
        grads = [p.grad for p in net.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        opt.step()

#----------------------------------------------------------------------------
# Pickling: our loss (with its spectral term) loads in a stock EDM stand-in,
# and a Fourier term even evaluates there (no pywt needed).

def test_pickle_loads_in_stock_edm(tmp_path):
    images = images_for((2, 3, 8, 8), seed=8)
    loss_fn = EDMLoss(P_mean=-1.0, spectral_kwargs=dict(kind='fourier-amp-phase', weight=0.5, ap_form='elementwise'))
    wave_fn = VPLoss(spectral_kwargs=dict(kind='wavelet', wavelet='bior1.3', level_weights=[1, 1, 2, 2]))
    path = tmp_path / 'snapshot.pkl'
    with open(path, 'wb') as f:
        pickle.dump(dict(ema=None, loss_fn=loss_fn, wave_fn=wave_fn, images=images, augment_pipe=None, dataset_kwargs=dict()), f)
    torch.manual_seed(3)
    expected = float(loss_fn(net=lambda x, s, l, augment_labels=None: x / (1 + s ** 2), images=images, labels=None).sum())
    res = run_in_stock_env(f'''
        import pickle, torch
        d = pickle.load(open({str(path)!r}, 'rb'))
        loss_fn, wave_fn = d['loss_fn'], d['wave_fn']
        print(type(loss_fn).__name__, loss_fn.P_mean, type(loss_fn.spectral).__name__, loss_fn.spectral.kind)
        print(type(wave_fn).__name__, wave_fn.spectral.wavelet, wave_fn.spectral.level_weights)
        torch.manual_seed(3)
        print(float(loss_fn(net=lambda x, s, l, augment_labels=None: x / (1 + s ** 2), images=d['images'], labels=None).sum()))
    ''', tmp_path)
    lines = res.stdout.strip().splitlines()
    assert lines[0] == 'EDMLoss -1.0 SpectralLoss fourier-amp-phase'
    assert lines[1] == 'VPLoss bior1.3 [1.0, 1.0, 2.0, 2.0]'
    assert float(lines[2]) == pytest.approx(expected, rel=1e-6)

#----------------------------------------------------------------------------
# The overhead benchmark runs end to end on a tiny configuration.

def test_bench_cli(tmp_path, monkeypatch):
    import importlib.metadata
    import json
    from click.testing import CliRunner
    from edm_spectral import bench
    # A clock on a machine that slows down twofold each repetition: every step and term of
    # repetition r takes 2^r s. Pairing each time with the plain step of its own repetition
    # cancels the drift, so every ratio is exactly 1; the medians of [1, 2] s are 1.5 s.
    calls_per_repetition = len(bench.VARIANTS) + sum(kw is not None for kw in bench.VARIANTS.values())
    calls = []
    def drifting_clock(fn, device):
        fn()
        calls.append(fn)
        return 2.0 ** ((len(calls) - 1) // calls_per_repetition)
    monkeypatch.setattr(bench, '_timed', drifting_clock)
    out = tmp_path / 'bench.json'
    res = CliRunner().invoke(bench.main, ['--device=cpu', '--resolutions=8', '--batch=2', '--iters=2', '--warmup=0', f'--out={out}'])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data['ptwt'] == importlib.metadata.version('ptwt') # The engine of the wavelet rows.
    rows = data['results'][0]['rows']
    assert [r['variant'] for r in rows] == list(bench.VARIANTS)
    assert len(calls) == 2 * calls_per_repetition
    assert [(r['ratio'], r['step_ms'], r['step_min_ms'], r['ratio_of_min']) for r in rows] == [(1.0, 1500.0, 1000.0, 1.0)] * len(rows)
    assert 'term_ms' not in rows[0] and all(r['term_ms'] == 1500.0 and r['term_fraction'] == 1.0 for r in rows[1:])
    res = CliRunner().invoke(bench.main, ['--resolutions=12'])
    assert res.exit_code != 0 and 'multiples of 8' in res.output

#----------------------------------------------------------------------------
