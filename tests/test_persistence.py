"""Tests for torch_utils.persistence: round trips, the released meta format,
import hooks and error cases."""

import copy
import pickle
import sys
import textwrap

import numpy as np
import pytest
import torch

from torch_utils import persistence

from conftest import PersistentMeta, run_forked

#----------------------------------------------------------------------------
# A small module with persistent classes, written to disk so that its source
# can be embedded and re-executed.

TINY_SRC = textwrap.dedent('''
    import numpy as np
    import torch
    from torch_utils import persistence

    @persistence.persistent_class
    class TinyNet(torch.nn.Module):
        def __init__(self, channels, scale=np.float64(0.5), cfg=None):
            super().__init__()
            self.scale = scale
            self.cfg = cfg
            self.conv = torch.nn.Conv2d(channels, channels, 3, padding=1)
            self.blocks = torch.nn.ModuleDict({'inner': TinyInner(channels)})
            self.register_buffer('offset', torch.linspace(-1, 1, channels).reshape(1, -1, 1, 1))

        def forward(self, x):
            return self.blocks['inner'](self.conv(x) * self.scale + self.offset)

    @persistence.persistent_class
    class TinyInner(torch.nn.Module):
        def __init__(self, channels):
            super().__init__()
            self.gain = torch.nn.Parameter(torch.randn(1, channels, 1, 1))

        def forward(self, x):
            return x * self.gain

    @persistence.persistent_class
    class PlainThing:
        def __init__(self, a, b=2):
            self.total = a + b
''')

@pytest.fixture
def tiny(source_module):
    return source_module(TINY_SRC, 'tiny_persist')

#----------------------------------------------------------------------------

def test_round_trip_same_process(tiny):
    torch.manual_seed(0)
    net = tiny.TinyNet(3, cfg=dict(depth=[1, 2]))
    x = torch.randn(2, 3, 5, 5)
    net2 = pickle.loads(pickle.dumps(net))
    assert type(net2) is type(net)
    assert persistence.is_persistent(net2) and persistence.is_persistent(tiny.TinyNet)
    assert not persistence.is_persistent(torch.nn.Linear(1, 1))
    assert torch.equal(net(x), net2(x))
    assert net2.init_args == (3,)
    assert net2.init_kwargs == dict(cfg=dict(depth=[1, 2]))
    assert net2.init_kwargs.cfg == dict(depth=[1, 2]) # EasyDict access
    assert type(net2.scale) is np.float64 and net2.scale == 0.5

    # Deep copies go through the same mechanism.
    net3 = copy.deepcopy(net)
    assert type(net3) is type(net) and torch.equal(net3(x), net(x))

def test_init_args_are_deep_copies(tiny):
    cfg = dict(depth=[1, 2])
    net = tiny.TinyNet(3, cfg=cfg)
    cfg['depth'].append(3)
    assert net.init_kwargs.cfg['depth'] == [1, 2]
    net.init_kwargs.cfg['depth'].append(4) # the property returns a copy
    assert net.init_kwargs.cfg['depth'] == [1, 2]

def test_meta_format(tiny):
    net = tiny.TinyNet(2)
    func, args, state = net.__reduce__()
    assert func is persistence._reconstruct_persistent_obj and state is None
    meta = args[0]
    assert meta['type'] == 'class' and meta['version'] == 6
    assert meta['class_name'] == 'TinyNet'
    assert meta['module_src'] == TINY_SRC
    assert set(['_parameters', '_buffers', '_modules', '_init_args', '_init_kwargs', 'scale']) <= set(meta['state'])
    # The stream names exactly the released entry point.
    assert b'torch_utils.persistence' in pickle.dumps(net) and b'_reconstruct_persistent_obj' in pickle.dumps(net)

def test_plain_class(tiny):
    obj = pickle.loads(pickle.dumps(tiny.PlainThing(1, b=5)))
    assert obj.total == 6 and obj.init_args == (1,) and obj.init_kwargs == dict(b=5)

# In a process forked from this one (conftest.run_forked) that forgets the tiny module (not
# imported, not on its path) and every source that persistence has seen, as a fresh process would.
def _unpickle_forgetting(module_name, folder, net_path, io_path):
    del sys.modules[module_name]
    sys.path[:] = [p for p in sys.path if p != folder]
    persistence._source_by_module.clear()
    persistence._module_by_source.clear()
    net = pickle.load(open(net_path, 'rb'))
    ref = torch.load(io_path)
    assert type(net).__module__.startswith('_imported_module_'), type(net).__module__
    assert torch.equal(net(ref['x']), ref['y'])
    assert net.init_args == (3,)
    print('ok')

def test_unpickle_without_the_module_execs_source(tiny, tmp_path):
    torch.manual_seed(1)
    net = tiny.TinyNet(3).eval()
    x = torch.randn(1, 3, 4, 4)
    with open(tmp_path / 'net.pkl', 'wb') as f:
        pickle.dump(net, f)
    torch.save(dict(x=x, y=net(x).detach()), tmp_path / 'io.pt')
    res = run_forked(_unpickle_forgetting, (tiny.__name__, str(tmp_path), str(tmp_path / 'net.pkl'), str(tmp_path / 'io.pt')),
        tmp_path / 'output.txt', timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == 'ok', res.stdout

#----------------------------------------------------------------------------
# A pickle written by hand in the released format loads with our package.

HANDMADE_SRC = textwrap.dedent('''
    import torch
    from torch_utils import persistence

    @persistence.persistent_class
    class Affine(torch.nn.Module):
        def __init__(self, n):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(n))
        def forward(self, x):
            return x * self.w + 1
''')

def make_handmade_meta(src=HANDMADE_SRC, version=6):
    state = torch.nn.Module().__getstate__()
    state['_parameters'] = {'w': torch.nn.Parameter(torch.tensor([2.0, 3.0]))}
    state['_init_args'] = (2,)
    state['_init_kwargs'] = {}
    return dict(type='class', version=version, module_src=src, class_name='Affine', state=state)

def test_handmade_released_format():
    obj = pickle.loads(pickle.dumps(PersistentMeta(make_handmade_meta())))
    assert type(obj).__name__ == 'Affine'
    assert type(obj).__module__.startswith('_imported_module_')
    assert torch.equal(obj(torch.tensor([1.0, 1.0])), torch.tensor([3.0, 4.0]))
    assert obj.init_args == (2,)
    # The same source maps to the same module (executed once).
    obj2 = pickle.loads(pickle.dumps(PersistentMeta(make_handmade_meta())))
    assert type(obj2) is type(obj)

def test_wrong_version_rejected():
    with pytest.raises(ValueError, match='version'):
        pickle.loads(pickle.dumps(PersistentMeta(make_handmade_meta(version=5))))

def test_import_hook_can_patch_source():
    marker = '# hook-test-unique-1'
    def hook(meta):
        if marker in meta.module_src:
            meta.module_src = meta.module_src.replace('x * self.w + 1', 'x * self.w + 100')
        return meta
    persistence.import_hook(hook)
    try:
        obj = pickle.loads(pickle.dumps(PersistentMeta(make_handmade_meta(HANDMADE_SRC + marker + '\n'))))
    finally:
        persistence._import_hooks.remove(hook)
    assert torch.equal(obj(torch.tensor([0.0, 0.0])), torch.tensor([100.0, 100.0]))
    with pytest.raises(TypeError):
        persistence.import_hook('not callable')

def test_unpickleable_init_args_fail_early(tiny):
    with pytest.raises(TypeError, match='not pickleable'):
        tiny.PlainThing(1, b=lambda: 0)
    with pytest.raises(TypeError):
        persistence.persistent_class(42)

#----------------------------------------------------------------------------
