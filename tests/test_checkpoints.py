"""Tests for edm_spectral.checkpoints: weights-only loading of snapshots (written by
training.snapshots) and training states, refusal of code, and loadability of our snapshots by a
stock EDM environment."""

import pickle
import textwrap

import numpy as np
import pytest
import torch

from edm_spectral import checkpoints
from training.snapshots import save_snapshot
from stock_env import run_in_stock_env

from conftest import PersistentMeta

#----------------------------------------------------------------------------
# Tiny real networks of our own classes.

def tiny_edm_net(label_dim=0):
    from training.networks import EDMPrecond
    torch.manual_seed(0)
    net = EDMPrecond(img_resolution=8, img_channels=3, label_dim=label_dim, model_type='SongUNet',
        model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0.1)
    # Non-zero weights everywhere (some layers start at zero), so the test can fail.
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return net

def test_edm_precond_snapshot_round_trip(tmp_path):
    from training.loss import EDMLoss
    from training.augment import AugmentPipe
    net = tiny_edm_net(label_dim=4)
    loss_fn = EDMLoss(P_mean=-1.0, P_std=1.5, spectral_kwargs=dict(kind='fourier-amp', weight=0.5))
    augment_pipe = AugmentPipe(p=0.5, xflip=1e8, scale=1, rotate_frac=1)
    path = tmp_path / 'network-snapshot-000000.pkl'
    save_snapshot(str(path), net, loss_fn, augment_pipe, dnnlib_like_kwargs())
    assert net.training # the caller's objects are untouched

    data = checkpoints.load_snapshot(str(path))
    ema = data['ema']
    assert type(ema).__module__ == 'training.networks' and type(ema).__name__ == 'EDMPrecond'
    assert not ema.training and not any(p.requires_grad for p in ema.parameters())
    torch.manual_seed(1)
    x = torch.randn(2, 3, 8, 8)
    sigma = torch.tensor([0.3, 5.0])
    labels = torch.eye(4)[[1, 3]]
    net.eval()
    with torch.no_grad():
        assert torch.equal(ema(x, sigma, labels), net(x, sigma, labels))
    for (n1, t1), (n2, t2) in zip(net.state_dict().items(), ema.state_dict().items()):
        assert n1 == n2 and torch.equal(t1, t2)
    assert ema.init_kwargs == net.init_kwargs

    assert type(data['loss_fn']).__name__ == 'EDMLoss' and type(data['loss_fn']).__module__ == 'training.loss'
    assert (data['loss_fn'].P_mean, data['loss_fn'].P_std) == (-1.0, 1.5)
    assert data['loss_fn'].spectral is not None and data['loss_fn'].spectral.kind == 'fourier-amp'
    assert type(data['augment_pipe']).__name__ == 'AugmentPipe' and data['augment_pipe'].p == 0.5
    assert data['dataset_kwargs'] == dnnlib_like_kwargs() and type(data['dataset_kwargs']) is dict

    # load_network and the trusted path agree.
    assert torch.equal(checkpoints.load_network(str(path))(x, sigma, labels), ema(x, sigma, labels))
    trusted = checkpoints.load_snapshot(str(path), trust_code=True)
    assert torch.equal(trusted['ema'](x, sigma, labels), ema(x, sigma, labels))

    # The same file loads in a stock EDM environment (embedded sources exec'd there).
    images = torch.rand(2, 3, 8, 8) * 2 - 1
    torch.manual_seed(2)
    aug_images, aug_labels = data['augment_pipe'](images)
    torch.save(dict(x=x, sigma=sigma, labels=labels, y=ema(x, sigma, labels), images=images, aug_images=aug_images,
        aug_labels=aug_labels), tmp_path / 'io.pt')
    res = run_in_stock_env(f'''
        import pickle, torch
        with open({str(path)!r}, 'rb') as f:
            data = pickle.load(f)
        ref = torch.load({str(tmp_path / 'io.pt')!r})
        ema = data['ema']
        assert type(ema).__module__.startswith('_imported_module_')
        assert (ema.img_resolution, ema.img_channels, ema.label_dim) == (8, 3, 4)
        assert torch.equal(ema(ref['x'], ref['sigma'], ref['labels']), ref['y'])
        assert data['loss_fn'].P_mean == -1.0
        torch.manual_seed(2)
        images, aug_labels = data['augment_pipe'](ref['images'])
        assert torch.equal(images, ref['aug_images']) and torch.equal(aug_labels, ref['aug_labels'])
        print('stock ok', sorted(data.keys()))
    ''', tmp_path)
    assert "stock ok ['augment_pipe', 'dataset_kwargs', 'ema', 'loss_fn']" in res.stdout

# The other preconditioners and both architectures, including the buffers
# that must survive (NCSN++ Fourier freqs, iDDPM's u table).
@pytest.mark.parametrize('class_name, kwargs', [
    ('VPPrecond', dict(model_type='SongUNet')),
    ('VEPrecond', dict(model_type='SongUNet', embedding_type='fourier', channel_mult_noise=2, encoder_type='residual', resample_filter=[1, 3, 3, 1])),
    ('iDDPMPrecond', dict(model_type='DhariwalUNet', M=50)),
    ('EDMPrecond', dict(model_type='DhariwalUNet', label_dim=3)),
])
def test_other_preconds_round_trip(tmp_path, class_name, kwargs):
    import training.networks
    torch.manual_seed(0)
    net = getattr(training.networks, class_name)(img_resolution=8, img_channels=2, model_channels=16, channel_mult=[1, 2],
        num_blocks=1, attn_resolutions=[4], **kwargs)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    path = tmp_path / 'snap.pkl'
    save_snapshot(str(path), net)
    ema = checkpoints.load_network(str(path))
    assert type(ema) is type(net)
    assert list(ema.state_dict().keys()) == list(net.state_dict().keys())
    for t1, t2 in zip(net.state_dict().values(), ema.state_dict().values()):
        assert torch.equal(t1, t2)
    x = torch.randn(2, 2, 8, 8)
    sigma = torch.tensor([0.1, 3.0])
    labels = torch.eye(3)[[0, 2]] if net.label_dim else None
    with torch.no_grad():
        assert torch.equal(ema(x, sigma, labels), net.eval()(x, sigma, labels))

def dnnlib_like_kwargs():
    return dict(class_name='training.dataset.ImageFolderDataset', path='/data/x.zip', use_labels=True,
        xflip=False, cache=True, resolution=8, max_size=10)

#----------------------------------------------------------------------------
# Training states written by torch.save.

def test_training_state_round_trip(tmp_path):
    net = tiny_edm_net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net.train()
    net(torch.randn(2, 3, 8, 8), torch.ones(2)).square().mean().backward()
    opt.step()
    path = tmp_path / 'training-state-000001.pt'
    rng = torch.get_rng_state()
    torch.save(dict(net=net, optimizer_state=opt.state_dict(), cur_nimg=1234, rng=rng,
        np_rng=np.random.RandomState(5).get_state()), path)

    # mmap=True (the CLIs' check before a run starts) reads the same values; a legacy
    # (non-zip) torch.save file cannot be mapped and is read whole.
    legacy = tmp_path / 'training-state-000002.pt'
    torch.save(torch.load(path, weights_only=False), legacy, _use_new_zipfile_serialization=False)
    for trust_code, file, mmap in [(False, path, False), (True, path, False), (False, path, True), (True, legacy, True), (False, legacy, True)]:
        state = checkpoints.load_training_state(str(file), trust_code=trust_code, mmap=mmap)
        if not trust_code:
            assert type(state['net']).__module__ == 'training.networks'
        assert state['cur_nimg'] == 1234 and torch.equal(state['rng'], rng)
        for t1, t2 in zip(net.state_dict().values(), state['net'].state_dict().values()):
            assert torch.equal(t1, t2)
        opt2 = torch.optim.Adam(state['net'].parameters(), lr=1e-3)
        opt2.load_state_dict(state['optimizer_state'])
        s1, s2 = opt.state_dict()['state'], opt2.state_dict()['state']
        assert s1.keys() == s2.keys() and all(torch.equal(s1[k]['exp_avg'], s2[k]['exp_avg']) for k in s1)
        assert state['np_rng'][0] == 'MT19937'

    with pytest.raises(FileNotFoundError, match='missing.pt'):
        checkpoints.load_training_state(str(tmp_path / 'missing.pt'))

#----------------------------------------------------------------------------
# Pickles that try to run code.

def test_rejects_code(hostile):
    path = hostile.pickle(wrap=lambda payload: dict(ema=payload, loss_fn=None, augment_pipe=None, dataset_kwargs={}))
    with pytest.raises(checkpoints.UnsafePickleError) as info:
        checkpoints.load_snapshot(path)
    msg = str(info.value)
    assert 'exec' in msg and 'trust_code=True' in msg and '--trust-code' in msg and path in msg
    assert not hostile.ran()

    for mmap in [False, True]:
        with pytest.raises(checkpoints.UnsafePickleError, match='exec'):
            checkpoints.load_training_state(hostile.torch_save(), mmap=mmap)
    assert not hostile.ran()

    # The test can fail: plain pickle does run the payload.
    with open(path, 'rb') as f:
        pickle.load(f)
    assert hostile.ran()

# A hand-made pickle in the released format whose embedded source has a side
# effect: the weights-only loader must rebuild the object from our class
# without executing that source.

OURS_SRC = textwrap.dedent('''
    import numpy as np
    import torch
    from torch_utils import persistence

    @persistence.persistent_class
    class TinyPrecond(torch.nn.Module):
        def __init__(self, channels, gain=np.float64(2.0)):
            super().__init__()
            self.channels = channels
            self.gain = gain
            self.layers = torch.nn.ModuleDict({'conv': TinyConv(channels)})
            self.register_buffer('shift', torch.arange(channels, dtype=torch.float32).reshape(1, -1, 1, 1))
        def forward(self, x):
            return self.layers['conv'](x) * self.gain + self.shift

    @persistence.persistent_class
    class TinyConv(torch.nn.Module):
        def __init__(self, channels):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(channels, channels, 1, 1))
        def forward(self, x):
            return torch.nn.functional.conv2d(x, self.weight)
''')

@pytest.fixture
def tiny_registry(source_module, monkeypatch):
    module = source_module(OURS_SRC, 'tiny_ckpt')
    monkeypatch.setitem(checkpoints._class_registry, 'TinyPrecond', module.__name__)
    return module

def write_handmade_snapshot(path, net, module_src):
    meta = dict(net.__reduce__()[1][0])
    meta['module_src'] = module_src
    with open(path, 'wb') as f:
        pickle.dump(dict(ema=PersistentMeta(meta), loss_fn=None, augment_pipe=None, dataset_kwargs=dict(path='x')), f, protocol=4)

def test_handmade_released_format_never_execs_source(tmp_path, tiny_registry):
    marker = tmp_path / 'source-was-executed'
    evil_src = f'open({str(marker)!r}, "w").write("x")\n' + OURS_SRC
    torch.manual_seed(3)
    net = tiny_registry.TinyPrecond(3, gain=np.float64(1.5)).eval()
    path = tmp_path / 'released.pkl'
    write_handmade_snapshot(path, net, evil_src)

    x = torch.randn(2, 3, 4, 4)
    data = checkpoints.load_snapshot(str(path))
    ema = data['ema']
    assert not marker.exists()
    assert type(ema) is tiny_registry.TinyPrecond
    assert ema.gain == 1.5 and ema.init_kwargs == dict(gain=1.5)
    assert torch.equal(ema(x), net(x))

    # Loading the same file with trust_code executes the embedded source.
    trusted = checkpoints.load_snapshot(str(path), trust_code=True)['ema']
    assert marker.exists()
    assert type(trusted).__module__.startswith('_imported_module_')
    assert torch.equal(trusted(x), net(x))

def test_mismatched_weights_are_reported(tmp_path, tiny_registry):
    net = tiny_registry.TinyPrecond(3)
    net.register_buffer('unexpected', torch.zeros(1))
    write_handmade_snapshot(tmp_path / 'bad.pkl', net, OURS_SRC)
    with pytest.raises(ValueError, match='(?s)do not match our implementation.*unexpected'):
        checkpoints.load_snapshot(str(tmp_path / 'bad.pkl'))

def test_unknown_class_rejected(tmp_path, tiny_registry, monkeypatch):
    net = tiny_registry.TinyPrecond(3)
    write_handmade_snapshot(tmp_path / 'unknown.pkl', net, OURS_SRC)
    monkeypatch.delitem(checkpoints._class_registry, 'TinyPrecond')
    with pytest.raises(checkpoints.UnsafePickleError, match="TinyPrecond.*trust_code=True"):
        checkpoints.load_snapshot(str(tmp_path / 'unknown.pkl'))

#----------------------------------------------------------------------------
# Bad input.

def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match='nope.pkl'):
        checkpoints.load_snapshot(str(tmp_path / 'nope.pkl'))

    net = tiny_edm_net()
    good = tmp_path / 'good.pkl'
    save_snapshot(str(good), net)
    truncated = tmp_path / 'truncated.pkl'
    truncated.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(ValueError, match='corrupt or truncated'):
        checkpoints.load_snapshot(str(truncated))

    garbage = tmp_path / 'garbage.pkl'
    garbage.write_bytes(b'this is not a pickle at all')
    with pytest.raises(ValueError, match='corrupt or truncated'):
        checkpoints.load_snapshot(str(garbage))

    not_snapshot = tmp_path / 'list.pkl'
    not_snapshot.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(ValueError, match='not an EDM network snapshot'):
        checkpoints.load_snapshot(str(not_snapshot))

    garbage_state = tmp_path / 'garbage.pt'
    garbage_state.write_bytes(b'not a torch file')
    with pytest.raises(ValueError, match='not a readable training state'):
        checkpoints.load_training_state(str(garbage_state))

    with pytest.raises(TypeError):
        save_snapshot(str(tmp_path / 'x.pkl'), ema='not a module')

#----------------------------------------------------------------------------
