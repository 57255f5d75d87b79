"""training/networks.py: checkpoint layout of the released EDM configs, preconditioner formulas,
attention and embedding layouts restated from their definitions, resampling known answers,
dtype handling, and forward/backward of small networks on the CPU."""

import ast
import copy
import hashlib
import io
import os
import pickle
import re

import numpy as np
import pytest
import torch

from training import networks

#----------------------------------------------------------------------------
# The released configurations (edm-state-dict-keys.txt, sections A-G), as
# train.py builds them, with the counts of edm-reference.md section 4.5 and a
# digest of the ordered key/shape list, so the test also runs without the spec.

_DDPMPP = dict(model_type='SongUNet', embedding_type='positional', encoder_type='standard', decoder_type='standard',
    channel_mult_noise=1, resample_filter=[1,1], model_channels=128)
_NCSNPP = dict(model_type='SongUNet', embedding_type='fourier', encoder_type='residual', decoder_type='standard',
    channel_mult_noise=2, resample_filter=[1,3,3,1], model_channels=128)

_CONFIGS = {
    'A': ('EDMPrecond',   dict(img_resolution=32, img_channels=3, label_dim=10, augment_dim=9, channel_mult=[2,2,2], **_DDPMPP), 55735299, 427, '8d25ec9007b52904'),
    'B': ('EDMPrecond',   dict(img_resolution=32, img_channels=3, label_dim=10, augment_dim=9, channel_mult=[2,2,2], **_NCSNPP), 56400643, 434, '736fb5c3d10fcc1d'),
    'C': ('EDMPrecond',   dict(img_resolution=64, img_channels=3, label_dim=0, augment_dim=9, channel_mult=[1,2,2,2], **_DDPMPP), 61805571, 553, 'f001b1ec0fa9adbc'),
    'D': ('EDMPrecond',   dict(img_resolution=64, img_channels=3, label_dim=0, augment_dim=9, channel_mult=[1,2,2,2], **_NCSNPP), 62761091, 563, '2817f9cc36c2aaff'),
    'E': ('EDMPrecond',   dict(img_resolution=64, img_channels=3, label_dim=1000, model_type='DhariwalUNet', model_channels=192, channel_mult=[1,2,3,4]), 295899267, 553, 'a5860f05352c1c8c'),
    'F': ('iDDPMPrecond', dict(img_resolution=64, img_channels=3, label_dim=1000), 295904454, 554, 'eaef5843e2d3872b'),
    'G': ('VPPrecond',    dict(img_resolution=32, img_channels=3), 61804419, 552, '9edd722eccf85f5b'),
}

_SPEC_FILE = os.path.join(os.environ.get('EDM_SPEC_DIR', os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'spec')), 'edm-state-dict-keys.txt')

def _digest(keys):
    return hashlib.sha256('\n'.join(f'{name} {list(shape)}' for name, shape in keys).encode()).hexdigest()[:16]

def _parse_spec(path):
    """Sections of the spec file: tag -> (num_params, num_keys, [(key, shape), ...])."""
    sections = {}
    for chunk in re.split(r'^=== ', open(path, encoding='utf-8').read(), flags=re.M)[1:]:
        lines = chunk.splitlines()
        counts = re.search(r'num_params=(\d+)\s+num_buffer_elems=(\d+)\s+num_state_dict_keys=(\d+)', chunk)
        keys = []
        for line in lines[1:]:
            line = line.strip()
            if not line or line.startswith(('num_params', 'enc order', 'dec order')):
                continue
            name, shape = line.split(' ', 1)
            keys.append((name, tuple(int(v) for v in re.findall(r'\d+', shape))))
        sections[lines[0][0]] = (int(counts[1]), int(counts[3]), keys)
    return sections

@pytest.fixture(scope='module')
def spec_sections():
    return _parse_spec(_SPEC_FILE) if os.path.isfile(_SPEC_FILE) else None

# Full-size nets are built on the meta device (no storage, never run) with parameters of the
# drawn shapes that are not drawn: on meta, each of weight_init's few arithmetic ops runs
# through torch's Python reference kernels (~0.3 ms each, 0.2-0.4 s a network). The mode is
# still checked; test_undrawn_parameters_keep_the_layout checks that the shortcut keeps the
# state_dict's keys and shapes.
def _undrawn_parameter(shape, gain, mode, fan_in, fan_out):
    if mode not in networks._INIT_SCHEMES:
        raise ValueError(f'unknown init mode {mode!r}')
    return torch.nn.Parameter(torch.empty(shape))

@pytest.fixture
def undrawn(monkeypatch):
    monkeypatch.setattr(networks, '_drawn_parameter', _undrawn_parameter)

def _layout(net):
    return [(name, tuple(t.shape)) for name, t in net.state_dict().items()]

def test_undrawn_parameters_keep_the_layout(monkeypatch):
    drawn = {arch: _layout(_tiny('EDMPrecond', arch, label_dim=3, augment_dim=9)) for arch in _ARCHS}
    drawn['iddpm'] = _layout(_tiny('iDDPMPrecond', 'adm', label_dim=3))
    monkeypatch.setattr(networks, '_drawn_parameter', _undrawn_parameter)
    with torch.device('meta'):
        undrawn = {arch: _layout(_tiny('EDMPrecond', arch, label_dim=3, augment_dim=9)) for arch in _ARCHS}
        undrawn['iddpm'] = _layout(_tiny('iDDPMPrecond', 'adm', label_dim=3))
    assert undrawn == drawn

@pytest.mark.parametrize('tag', sorted(_CONFIGS))
def test_released_config_state_dict_layout(tag, spec_sections, undrawn):
    class_name, kwargs, num_params, num_keys, digest = _CONFIGS[tag]
    with torch.device('meta'):
        net = getattr(networks, class_name)(**kwargs)
    ours = _layout(net)
    assert sum(p.numel() for p in net.parameters()) == num_params
    assert len(ours) == num_keys
    if spec_sections is not None:
        ref_params, ref_keys, ref = spec_sections[tag]
        assert (ref_params, ref_keys, _digest(ref)) == (num_params, num_keys, digest) # The spec file is the one the digests came from.
        for i, (a, b) in enumerate(zip(ours, ref)):
            assert a == b, f'config {tag}: state_dict entry {i} is {a}, reference has {b}'
    assert _digest(ours) == digest

def test_released_ncsnpp_buffers_and_heads(undrawn):
    with torch.device('meta'):
        ncsn = networks.EDMPrecond(**_CONFIGS['B'][1])
        adm = networks.EDMPrecond(**_CONFIGS['E'][1])
    sd = ncsn.state_dict()
    assert sd['model.enc.16x16_aux_residual.resample_filter'].shape == (1, 1, 4, 4)
    assert 'model.enc.16x16_down.skip.weight' in sd # resample_proj=True in SongUNet.
    assert 'model.enc.32x32_down.skip.weight' not in adm.state_dict() # Kernel-0 skip in ADM: buffer only.
    assert 'model.enc.32x32_down.skip.resample_filter' in adm.state_dict()
    assert adm.model.dec['8x8_in0'].num_heads == 12 and adm.model.enc['32x32_block0'].num_heads == 6
    assert ncsn.model.enc['16x16_block0'].num_heads == 1 and ncsn.model.dec['16x16_block3'].num_heads == 0

#----------------------------------------------------------------------------
# Small networks for numerical tests.

_ARCHS = {
    'ddpmpp': dict(model_type='SongUNet'),
    'ncsnpp': dict(model_type='SongUNet', embedding_type='fourier', encoder_type='residual', channel_mult_noise=2, resample_filter=[1,3,3,1]),
    'skip':   dict(model_type='SongUNet', encoder_type='skip', decoder_type='skip', resample_filter=[1,3,3,1]),
    'adm':    dict(model_type='DhariwalUNet', model_channels=32), # 64 channels at 4x4: one attention head.
}
_PRECONDS = ['VPPrecond', 'VEPrecond', 'iDDPMPrecond', 'EDMPrecond']

def _tiny(precond='EDMPrecond', arch='ddpmpp', label_dim=0, augment_dim=0, seed=0, **kwargs):
    torch.manual_seed(seed)
    kw = dict(img_resolution=8, img_channels=3, label_dim=label_dim, augment_dim=augment_dim,
        model_channels=16, channel_mult=[1,2], num_blocks=1, attn_resolutions=[4], dropout=0)
    kw.update(_ARCHS[arch])
    kw.update(kwargs)
    return getattr(networks, precond)(**kw)

def _randomize(net, scale=0.1):
    # Zero-initialized output layers would hide most of the network from the tests.
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * scale)
    return net

def _sigma_for(precond):
    return torch.tensor([0.05, 1.3]) if precond != 'VPPrecond' else torch.tensor([0.05, 5.0])

@pytest.mark.parametrize('arch', sorted(_ARCHS))
@pytest.mark.parametrize('precond', _PRECONDS)
def test_small_forward_backward(precond, arch):
    net = _randomize(_tiny(precond, arch, label_dim=4, augment_dim=9)).train()
    x = torch.randn(2, 3, 8, 8)
    D = net(x, _sigma_for(precond), torch.eye(4)[[1, 3]], augment_labels=torch.randn(2, 9))
    assert D.shape == x.shape and D.dtype == torch.float32 and torch.isfinite(D).all()
    D.square().sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f'{name} gets no gradient'

def test_construction_is_seeded_and_state_dict_round_trips():
    a = _tiny('EDMPrecond', 'ncsnpp', label_dim=3, seed=5)
    b = _tiny('EDMPrecond', 'ncsnpp', label_dim=3, seed=5)
    c = _tiny('EDMPrecond', 'ncsnpp', label_dim=3, seed=6)
    assert all(torch.equal(u, v) for u, v in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.model.map_noise.freqs, c.model.map_noise.freqs)
    _randomize(a)
    c.load_state_dict(a.state_dict(), strict=True)
    x, s, y = torch.randn(2, 3, 8, 8), torch.tensor([0.3, 2.0]), torch.eye(3)[[0, 2]]
    assert torch.equal(a(x, s, y), c(x, s, y))

#----------------------------------------------------------------------------
# Preconditioners against the formulas of EDM Table 1, with the network
# replaced by a stub that records its inputs and returns a known F.

class _StubModel(torch.nn.Module):
    def __init__(self, out_channels):
        super().__init__()
        self.out_channels = out_channels

    def forward(self, x, noise_labels, class_labels=None, augment_labels=None):
        self.seen = (x, noise_labels, class_labels)
        F = torch.arange(1, self.out_channels + 1, dtype=x.dtype).reshape(1, -1, 1, 1).expand(x.shape[0], -1, *x.shape[2:])
        return F.clone()

def _expected_coefficients(precond, net, sigma):
    s = sigma.double()
    if precond == 'VPPrecond':
        sigma_inv = ((net.beta_min ** 2 + 2 * net.beta_d * torch.log1p(s ** 2)).sqrt() - net.beta_min) / net.beta_d
        return 1, -s, 1 / (s ** 2 + 1).sqrt(), (net.M - 1) * sigma_inv
    if precond == 'VEPrecond':
        return 1, s, torch.ones_like(s), torch.log(s / 2)
    if precond == 'iDDPMPrecond':
        j = (s.reshape(-1, 1) - net.u.double().reshape(1, -1)).abs().argmin(1)
        return 1, -s, 1 / (s ** 2 + 1).sqrt(), (net.M - 1 - j).double()
    sd = net.sigma_data
    return sd ** 2 / (s ** 2 + sd ** 2), s * sd / (s ** 2 + sd ** 2).sqrt(), 1 / (s ** 2 + sd ** 2).sqrt(), s.log() / 4

@pytest.mark.parametrize('precond', _PRECONDS)
def test_preconditioning_formulas(precond):
    net = _tiny(precond, 'ddpmpp', channel_mult=[1], attn_resolutions=[])
    out_ch = 6 if precond == 'iDDPMPrecond' else 3
    net.model = _StubModel(out_ch)
    x = torch.randn(3, 3, 4, 4)
    sigma = torch.tensor([0.02, 0.9, 60.0])
    D = net(x, sigma)
    c_skip, c_out, c_in, c_noise = _expected_coefficients(precond, net, sigma)
    col = lambda c: torch.as_tensor(c, dtype=torch.float64).reshape(-1, 1, 1, 1)
    F = torch.arange(1, 4, dtype=torch.float64).reshape(1, 3, 1, 1) # iDDPM: only the first img_channels are used.
    expected = col(c_skip) * x.double() + col(c_out) * F
    torch.testing.assert_close(D.double(), expected, rtol=1e-5, atol=1e-5)
    seen_x, seen_noise, _ = net.model.seen
    torch.testing.assert_close(seen_x.double(), col(c_in) * x.double(), rtol=1e-5, atol=1e-6)
    # VP's sigma_inv cancels in float32 at small sigma (as in EDM), hence the looser tolerance.
    torch.testing.assert_close(seen_noise.double(), c_noise.double().flatten(), rtol=1e-3, atol=1e-4)
    assert seen_noise.shape == (3,) and D.dtype == torch.float32

def test_vp_schedule_and_inverse():
    net = _tiny('VPPrecond', channel_mult=[1], attn_resolutions=[])
    # float32 exp(t) - 1 at t = 1e-6 keeps only a few bits: EDM's sigma_min is 2**-10, not 0.0010005.
    assert net.sigma_min == pytest.approx(np.sqrt(np.expm1(0.5 * 19.9 * 1e-10 + 0.1 * 1e-5)), rel=0.03)
    assert net.sigma_max == pytest.approx(np.sqrt(np.expm1(0.5 * 19.9 + 0.1)), rel=1e-5) # about 152.17
    t = torch.tensor([1e-3, 0.1, 0.5, 1.0])
    torch.testing.assert_close(net.sigma_inv(net.sigma(t)), t, rtol=1e-3, atol=1e-6)
    assert torch.equal(net.round_sigma(torch.tensor([0.123])), torch.tensor([0.123]))

def test_iddpm_noise_levels_and_rounding():
    net = _tiny('iDDPMPrecond', channel_mult=[1], attn_resolutions=[])
    M, C_1, C_2 = 1000, 0.001, 0.008
    # Independent float64 restatement of the recursion.
    alpha_bar = lambda j: np.sin(0.5 * np.pi * j / M / (C_2 + 1)) ** 2
    u = np.zeros(M + 1)
    for j in range(M, 0, -1):
        u[j - 1] = np.sqrt((u[j] ** 2 + 1) / max(alpha_bar(j - 1) / alpha_bar(j), C_1) - 1)
    assert net.u.shape == (M + 1,) and net.u.dtype == torch.float32 and net.u[M] == 0
    np.testing.assert_allclose(net.u.numpy(), u, rtol=1e-3) # float32 recursion, as in EDM.
    assert np.all(np.diff(net.u.numpy()) < 0)
    assert net.sigma_max == float(net.u[0]) and net.sigma_min == float(net.u[M - 1])

    # round_sigma snaps to the nearest u_j and keeps shape, dtype and device.
    s = torch.tensor([[float(net.u[10]), float(net.u[500]) * 1.001], [1e6, 0.0]], dtype=torch.float64)
    idx = net.round_sigma(s, return_index=True)
    assert idx.shape == s.shape and idx.tolist() == [[10, 500], [0, M]]
    snapped = net.round_sigma(s)
    assert snapped.dtype == torch.float64 and snapped.shape == s.shape
    assert snapped[0, 0].item() == pytest.approx(float(net.u[10])) and snapped[1, 1].item() == 0
    assert net.round_sigma(torch.tensor(3.0)).shape == ()

#----------------------------------------------------------------------------
# Inputs: scalar sigma, labels, dtypes, errors.

@pytest.mark.parametrize('precond', _PRECONDS)
def test_scalar_sigma_broadcasts(precond):
    net = _randomize(_tiny(precond, 'adm', channel_mult=[1], attn_resolutions=[])).eval()
    x = torch.randn(3, 3, 8, 8)
    D_vec = net(x, torch.full([3], 0.7))
    # Batch-1 and batch-3 embeddings may take different matmul kernels: round-off only.
    for sigma in [torch.tensor(0.7), 0.7, torch.full([3, 1, 1, 1], 0.7, dtype=torch.float64)]:
        torch.testing.assert_close(net(x, sigma), D_vec, rtol=1e-5, atol=1e-5)

@pytest.mark.parametrize('arch', ['ddpmpp', 'adm'])
def test_label_handling(arch):
    net = _randomize(_tiny('EDMPrecond', arch, label_dim=5, channel_mult=[1], attn_resolutions=[])).eval()
    x, s = torch.randn(2, 3, 8, 8), torch.tensor([0.5, 2.0])
    zeros = net(x, s, torch.zeros(2, 5))
    assert torch.equal(net(x, s, None), zeros) # None means the all-zero label.
    assert not torch.allclose(net(x, s, torch.eye(5)[[0, 1]]), zeros)
    # Full label dropout in training zeroes every label.
    net.train()
    net.model.label_dropout = 1.0
    assert torch.equal(net(x, s, torch.eye(5)[[0, 1]]), zeros)
    # An unconditional net ignores labels.
    uncond = _tiny('EDMPrecond', arch, channel_mult=[1], attn_resolutions=[]).eval()
    assert torch.equal(uncond(x, s, torch.eye(5)[[0, 1]]), uncond(x, s))

def test_fp16_flag_is_fp32_on_cpu_and_layers_follow_input_dtype():
    torch.manual_seed(0)
    ref = _randomize(_tiny('EDMPrecond', 'ncsnpp', label_dim=2)).eval()
    half = copy.deepcopy(ref)
    half.use_fp16 = True
    x, s, y = torch.randn(2, 3, 8, 8), torch.tensor([0.2, 3.0]), torch.eye(2)
    assert torch.equal(half(x, s, y), ref(x, s, y)) # fp16 is used on CUDA only, as in EDM.
    # The fp16 path itself: every layer casts its fp32 weights to the activation dtype.
    noise = torch.tensor([0.1, -0.4])
    with torch.no_grad():
        F32 = ref.model(x, noise, y)
        F16 = ref.model(x.half(), noise.half(), y.half())
        Fbf = ref.model(x.bfloat16(), noise.bfloat16(), y.bfloat16())
    assert F16.dtype == torch.float16 and Fbf.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in ref.parameters())
    rel_err = lambda F: ((F.float() - F32).norm() / F32.norm()).item()
    assert rel_err(F16) < 0.03 and rel_err(Fbf) < 0.1

def test_bad_input_errors():
    net = _tiny(channel_mult=[1], attn_resolutions=[])
    with pytest.raises(ValueError, match='expected x of shape'):
        net(torch.randn(2, 1, 8, 8), torch.ones(2))
    cond = _tiny(label_dim=10, channel_mult=[1], attn_resolutions=[])
    with pytest.raises(ValueError, match='one-hot'):
        cond(torch.randn(4, 3, 8, 8), torch.ones(4), torch.arange(4)) # Class indices instead of one-hot.
    with pytest.raises(ValueError, match='model_type'):
        networks.EDMPrecond(8, 3, model_type='UNet3D')
    with pytest.raises(ValueError, match='encoder_type'):
        networks.SongUNet(8, 3, 3, encoder_type='dense')
    with pytest.raises(ValueError, match='embedding_type'):
        networks.SongUNet(8, 3, 3, embedding_type='learned')
    with pytest.raises(ValueError, match='up=True and down=True'):
        networks.Conv2d(3, 3, 3, up=True, down=True)
    with pytest.raises(ValueError, match='unknown mode'):
        networks.weight_init([2, 2], 'orthogonal', 2, 2)

#----------------------------------------------------------------------------
# Attention and embeddings, restated from their definitions.

def test_attention_uses_interleaved_qkv_with_heads_outermost():
    torch.manual_seed(0)
    C, heads = 16, 2
    block = networks.UNetBlock(C, C, emb_channels=8, attention=True, num_heads=heads, init_zero=dict(init_weight=1)).eval()
    captured = {}
    block.qkv.register_forward_hook(lambda m, i, o: captured.__setitem__('qkv', o.detach()))
    block.proj.register_forward_hook(lambda m, i, o: captured.__setitem__('a', i[0].detach()))
    block(torch.randn(2, C, 4, 4), torch.randn(2, 8))

    y = captured['qkv'].double().reshape(2, 3 * C, 16) # [N, 3C, L]
    d = C // heads
    a = torch.zeros(2, C, 16, dtype=torch.float64)
    for n in range(2):
        for h in range(heads):
            for_ch = lambda c, which: (h * d + c) * 3 + which # Channel of (head h, channel c) in q/k/v.
            q = y[n, [for_ch(c, 0) for c in range(d)]]
            k = y[n, [for_ch(c, 1) for c in range(d)]]
            v = y[n, [for_ch(c, 2) for c in range(d)]]
            w = torch.softmax(q.T @ k / np.sqrt(d), dim=1) # [L_q, L_k]
            a[n, h * d:(h + 1) * d] = v @ w.T
    torch.testing.assert_close(captured['a'].double().reshape(2, C, 16), a, rtol=1e-4, atol=1e-5)

def _restated_block(block, x, emb):
    # UNetBlock forward written from edm-reference.md section 4.2 in float64, for [1,1] filters:
    # down = 2x2 average pooling, up = nearest neighbour.
    F = torch.nn.functional
    P = {name: t.detach().double() for name, t in block.named_parameters()}
    gn = lambda name, t: F.group_norm(t, getattr(block, name).num_groups, P[name + '.weight'], P[name + '.bias'], getattr(block, name).eps)
    conv = lambda name, t: F.conv2d(t, P[name + '.weight'], P[name + '.bias'], padding=P[name + '.weight'].shape[-1] // 2)
    resample = lambda t: F.avg_pool2d(t, 2) if block.conv0.down else t.repeat_interleave(2, 2).repeat_interleave(2, 3) if block.conv0.up else t
    h = conv('conv0', resample(F.silu(gn('norm0', x))))
    p = (emb @ P['affine.weight'].T + P['affine.bias'])[:, :, None, None]
    if block.adaptive_scale:
        scale, shift = p[:, :block.out_channels], p[:, block.out_channels:]
        h = F.silu(gn('norm1', h) * (1 + scale) + shift)
    else:
        h = F.silu(gn('norm1', h + p))
    h = conv('conv1', h)
    skip = resample(x)
    if block.skip is not None and block.skip.weight is not None:
        skip = conv('skip', skip)
    x = (h + skip) * block.skip_scale
    if block.num_heads:
        n, c, hh, ww = x.shape
        qkv = conv('qkv', gn('norm2', x)).reshape(n, block.num_heads, c // block.num_heads, 3, hh * ww)
        q, k, v = qkv[:, :, :, 0], qkv[:, :, :, 1], qkv[:, :, :, 2]
        w = torch.softmax(torch.einsum('nhcq,nhck->nhqk', q, k) / np.sqrt(c // block.num_heads), dim=3)
        a = torch.einsum('nhqk,nhck->nhcq', w, v).reshape(n, c, hh, ww)
        x = (conv('proj', a) + x) * block.skip_scale
    return x

@pytest.mark.parametrize('arch', ['song', 'adm'])
@pytest.mark.parametrize('kind', ['plain', 'down', 'up', 'attention', 'widen'])
def test_unet_block_matches_restatement(arch, kind):
    torch.manual_seed(0)
    settings = dict(song=dict(num_heads=2, skip_scale=np.sqrt(0.5), eps=1e-6, resample_proj=True, adaptive_scale=False),
        adm=dict(channels_per_head=8, init_zero=dict(init_weight=1)))[arch]
    cout = 24 if kind == 'widen' else 16
    block = networks.UNetBlock(16, cout, emb_channels=12, up=(kind == 'up'), down=(kind == 'down'), attention=(kind == 'attention'), **settings)
    _randomize(block).eval()
    x, emb = torch.randn(2, 16, 8, 8), torch.randn(2, 12)
    torch.testing.assert_close(block(x, emb).double(), _restated_block(block, x.double(), emb.double()), rtol=1e-4, atol=1e-5)

def test_attention_op_gradients_match_autograd():
    torch.manual_seed(0)
    q = torch.randn(3, 8, 10, requires_grad=True)
    k = torch.randn(3, 8, 12, requires_grad=True)
    g = torch.randn(3, 10, 12)
    dq, dk = torch.autograd.grad(networks.AttentionOp.apply(q, k), [q, k], g)
    q64, k64 = q.detach().double().requires_grad_(), k.detach().double().requires_grad_()
    w64 = torch.softmax(torch.einsum('ncq,nck->nqk', q64, k64) / np.sqrt(8), dim=2)
    dq64, dk64 = torch.autograd.grad(w64, [q64, k64], g.double())
    torch.testing.assert_close(dq.double(), dq64, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(dk.double(), dk64, rtol=1e-4, atol=1e-6)
    # The pure-formula fallback agrees with torch's softmax backward kernel.
    w = torch.rand(2, 5, 7).softmax(2)
    dw = torch.randn(2, 5, 7)
    torch.testing.assert_close(networks._softmax_backward(dw, w), w * (dw - (dw * w).sum(2, keepdim=True)), rtol=1e-5, atol=1e-7)
    # fp16 in, fp16 out, math in fp32.
    wh = networks.AttentionOp.apply(q.detach().half(), k.detach().half())
    assert wh.dtype == torch.float16 and torch.allclose(wh.float().sum(2), torch.ones(3, 10), atol=1e-2)

@pytest.mark.parametrize('endpoint', [False, True])
def test_positional_embedding_formula(endpoint):
    C, x = 12, torch.tensor([0.0, 1.5, -7.0, 300.0])
    out = networks.PositionalEmbedding(C, endpoint=endpoint)(x).double()
    i = np.arange(C // 2)
    freqs = (1 / 10000) ** (i / (C // 2 - (1 if endpoint else 0)))
    ang = x.double().numpy()[:, None] * freqs[None, :]
    np.testing.assert_allclose(out.numpy(), np.concatenate([np.cos(ang), np.sin(ang)], axis=1), atol=1e-4)

def test_fourier_embedding_formula():
    torch.manual_seed(0)
    emb = networks.FourierEmbedding(8, scale=16)
    assert emb.freqs.shape == (4,) and list(emb.state_dict()) == ['freqs']
    x = torch.tensor([0.1, -0.3])
    ang = 2 * np.pi * x.double().numpy()[:, None] * emb.freqs.double().numpy()[None, :]
    np.testing.assert_allclose(emb(x).double().numpy(), np.concatenate([np.cos(ang), np.sin(ang)], axis=1), atol=1e-4)

def _map_layer0_input(net, noise, labels):
    captured = {}
    handle = net.map_layer0.register_forward_hook(lambda m, i, o: captured.__setitem__('e', i[0].detach()))
    net(torch.randn(len(noise), 3, 8, 8), noise, labels)
    handle.remove()
    return captured['e']

def test_song_unet_swaps_sin_cos_and_scales_labels():
    torch.manual_seed(0)
    net = networks.SongUNet(8, 3, 3, label_dim=4, model_channels=16, channel_mult=[1], num_blocks=1, attn_resolutions=[]).eval()
    noise, labels = torch.tensor([0.3, 2.0]), torch.eye(4)[[0, 3]]
    e = _map_layer0_input(net, noise, labels)
    pos = networks.PositionalEmbedding(16, endpoint=True)(noise)
    cos, sin = pos[:, :8], pos[:, 8:]
    label_term = labels @ net.map_label.weight.T * 2 + net.map_label.bias # sqrt(label_dim) = 2.
    torch.testing.assert_close(e, torch.cat([sin, cos], dim=1) + label_term, rtol=1e-5, atol=1e-6)

def test_dhariwal_unet_keeps_cos_sin_order():
    torch.manual_seed(0)
    net = networks.DhariwalUNet(8, 3, 3, label_dim=4, model_channels=16, channel_mult=[1], num_blocks=1, attn_resolutions=[]).eval()
    noise = torch.tensor([0.3, 2.0])
    e = _map_layer0_input(net, noise, torch.eye(4)[[0, 3]])
    torch.testing.assert_close(e, networks.PositionalEmbedding(16)(noise)) # Labels enter after map_layer1.

#----------------------------------------------------------------------------
# Layers: init schemes, resampling, group counts.

def test_weight_init_distributions():
    torch.manual_seed(0)
    fan_in, fan_out, shape = 300, 200, [200, 300]
    for mode, bound_or_std, uniform in [
        ('xavier_uniform', np.sqrt(6 / 500), True), ('kaiming_uniform', np.sqrt(3 / 300), True),
        ('xavier_normal', np.sqrt(2 / 500), False), ('kaiming_normal', np.sqrt(1 / 300), False),
    ]:
        w = networks.weight_init(shape, mode, fan_in, fan_out)
        std = bound_or_std / np.sqrt(3) if uniform else bound_or_std
        assert w.std().item() == pytest.approx(std, rel=0.03), mode
        if uniform:
            assert w.abs().max().item() <= bound_or_std and w.abs().max().item() > 0.99 * bound_or_std

def test_architecture_init_schemes():
    song = _tiny('EDMPrecond', 'ddpmpp', label_dim=3, augment_dim=2).model
    adm = _tiny('EDMPrecond', 'adm', label_dim=3, augment_dim=2).model
    # SongUNet: "zero" layers are xavier * 1e-5, biases zero, attention qkv xavier * sqrt(0.2).
    conv = song.dec['8x8_aux_conv']
    bound = np.sqrt(6 / ((16 + 3) * 9))
    assert 0 < conv.weight.abs().max() <= 1e-5 * bound and torch.all(conv.bias == 0)
    qkv = song.enc['4x4_block0'].qkv
    assert qkv.weight.abs().max() <= np.sqrt(0.2) * np.sqrt(6 / (32 + 96)) + 1e-7
    assert song.map_augment.bias is None and song.map_label.bias is not None
    # ADM: zero output conv and augment map, PyTorch-default uniform elsewhere (biases too).
    assert torch.all(adm.out_conv.weight == 0) and torch.all(adm.map_augment.weight == 0)
    assert adm.map_label.bias is None
    l0 = adm.map_layer0
    assert l0.bias.abs().max() > 0 and l0.weight.abs().max() <= 1 / np.sqrt(32)
    # ADM output layer is zero, so at init EDMPrecond returns c_skip * x exactly.
    net = _tiny('EDMPrecond', 'adm')
    x, s = torch.randn(2, 3, 8, 8), torch.tensor([0.5, 2.0])
    torch.testing.assert_close(net(x, s), 0.25 / (s.reshape(-1, 1, 1, 1) ** 2 + 0.25) * x)

def test_block_settings_per_architecture():
    song = _tiny('EDMPrecond', 'ncsnpp').model
    adm = _tiny('EDMPrecond', 'adm').model
    for block in [song.enc['8x8_block0'], song.dec['4x4_in0']]:
        assert (block.norm0.eps, block.norm1.eps, block.skip_scale, block.adaptive_scale) == (1e-6, 1e-6, np.sqrt(0.5), False)
        assert block.affine.out_features == block.out_channels
    assert song.dec['8x8_aux_norm'].eps == 1e-6 and song.enc['4x4_down'].conv0.resample_filter.shape == (1, 1, 4, 4)
    assert song.dec['4x4_in0'].norm2.eps == 1e-6
    for block in [adm.enc['8x8_block0'], adm.dec['4x4_in0']]:
        assert (block.norm0.eps, block.norm1.eps, block.skip_scale, block.adaptive_scale) == (1e-5, 1e-5, 1, True)
        assert block.affine.out_features == 2 * block.out_channels
    assert adm.out_norm.eps == 1e-5
    assert adm.dec['4x4_in0'].num_heads == 1 and adm.dec['4x4_block0'].num_heads == 1 # 64 channels per head.
    assert adm.dec['8x8_block0'].num_heads == 0
    assert adm.enc['4x4_down'].skip.weight is None and adm.enc['4x4_down'].conv0.resample_filter.shape == (1, 1, 2, 2)

def test_resampling_known_answers():
    x = torch.randn(2, 3, 6, 6)
    down = networks.Conv2d(3, 3, kernel=0, down=True)
    up = networks.Conv2d(3, 3, kernel=0, up=True)
    assert list(down.state_dict()) == ['resample_filter'] and down.resample_filter.shape == (1, 1, 2, 2)
    torch.testing.assert_close(down(x), torch.nn.functional.avg_pool2d(x, 2)) # [1,1] = box filter.
    torch.testing.assert_close(up(x), x.repeat_interleave(2, 2).repeat_interleave(2, 3)) # Nearest neighbour.
    f = networks.Conv2d(3, 3, kernel=0, down=True, resample_filter=[1, 3, 3, 1]).resample_filter[0, 0]
    torch.testing.assert_close(f, torch.tensor([1., 3, 3, 1]).outer(torch.tensor([1., 3, 3, 1])) / 64)
    assert list(networks.Conv2d(3, 4, kernel=3).state_dict()) == ['weight', 'bias']
    # For 1x1 kernels the fused and unfused orders are the same linear map.
    for kw in [dict(down=True), dict(up=True)]:
        torch.manual_seed(1)
        a = networks.Conv2d(3, 5, kernel=1, init_bias=1, **kw)
        b = networks.Conv2d(3, 5, kernel=1, fused_resample=True, **kw)
        b.load_state_dict(a.state_dict())
        torch.testing.assert_close(a(x), b(x), rtol=1e-5, atol=1e-6)
    # Fused 3x3 down with [1,3,3,1]: output is half size (NCSN++ aux_residual).
    c = networks.Conv2d(3, 5, kernel=3, down=True, fused_resample=True, resample_filter=[1, 3, 3, 1])
    assert c(torch.randn(1, 3, 8, 8)).shape == (1, 5, 4, 4)
    c = networks.Conv2d(3, 5, kernel=3, up=True, fused_resample=True, resample_filter=[1, 3, 3, 1])
    assert c(torch.randn(1, 3, 4, 4)).shape == (1, 5, 8, 8)

def test_group_norm_groups_and_linear():
    assert networks.GroupNorm(16).num_groups == 4 and networks.GroupNorm(256).num_groups == 32
    gn = networks.GroupNorm(16, eps=1e-6)
    x = torch.randn(2, 16, 3, 3)
    torch.testing.assert_close(gn(x), torch.nn.functional.group_norm(x, 4, eps=1e-6))
    lin = networks.Linear(4, 3, init_bias=1)
    v = torch.randn(5, 4)
    torch.testing.assert_close(lin(v), v @ lin.weight.T + lin.bias)

#----------------------------------------------------------------------------
# Snapshot safety: the module imports only what stock EDM has, and a network
# survives a pickle round trip (which re-executes this module's source).

def test_module_level_imports_are_edm_safe():
    tree = ast.parse(open(networks.__file__, encoding='utf-8').read())
    imported = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported |= {f'{node.module}.{alias.name}' for alias in node.names}
    assert imported <= {'numpy', 'torch', 'torch_utils.persistence', 'torch.nn.functional.silu'}, imported

def test_snapshot_loads_in_stock_edm_stand_in(tmp_path):
    from stock_env import run_in_stock_env
    net = _randomize(_tiny('EDMPrecond', 'ddpmpp', label_dim=2)).eval()
    x, s, y = torch.randn(2, 3, 8, 8), torch.tensor([0.4, 4.0]), torch.eye(2)
    with open(tmp_path / 'snap.pkl', 'wb') as f:
        pickle.dump(dict(ema=net, loss_fn=None, augment_pipe=None, dataset_kwargs={}), f)
    torch.save(dict(x=x, s=s, y=y, D=net(x, s, y).detach()), tmp_path / 'io.pt')
    res = run_in_stock_env(f'''
        import pickle, torch
        net = pickle.load(open({str(tmp_path / 'snap.pkl')!r}, 'rb'))['ema']
        io = torch.load({str(tmp_path / 'io.pt')!r})
        print(type(net).__name__, torch.equal(net(io['x'], io['s'], io['y']), io['D']))
    ''', tmp_path)
    assert res.stdout.split() == ['EDMPrecond', 'True']

def test_pickle_round_trip():
    net = _randomize(_tiny('EDMPrecond', 'ncsnpp', label_dim=2)).eval()
    clone = pickle.loads(pickle.dumps(net))
    assert type(clone).__name__ == 'EDMPrecond' and clone.label_dim == 2
    x, s, y = torch.randn(2, 3, 8, 8), torch.tensor([0.4, 4.0]), torch.eye(2)
    assert torch.equal(clone(x, s, y), net(x, s, y))

#----------------------------------------------------------------------------
