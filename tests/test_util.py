"""Tests for dnnlib.util and torch_utils.misc."""

import functools
import hashlib
import http.server
import io
import itertools
import os
import sys
import threading

import numpy as np
import pytest
import torch

import dnnlib
from dnnlib import util
from torch_utils import misc

#----------------------------------------------------------------------------
# dnnlib.util

def test_easydict():
    d = dnnlib.EasyDict(a=1)
    d.b = 2
    assert d == dict(a=1, b=2) and d.a == 1 and d['b'] == 2
    del d.a
    assert 'a' not in d
    with pytest.raises(AttributeError):
        _ = d.missing

@pytest.mark.parametrize('seconds, text', [
    (0, '0s'), (5, '5s'), (59.4, '59s'), (60, '1m 00s'), (184, '3m 04s'), (3599, '59m 59s'),
    (3600, '1h 00m 00s'), (7384, '2h 03m 04s'), (86399, '23h 59m 59s'), (93784, '1d 02h 03m'), (90061, '1d 01h 01m'),
])
def test_format_time(seconds, text):
    assert util.format_time(seconds) == text

def test_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path))
    assert dnnlib.make_cache_dir_path('downloads') == os.path.join(str(tmp_path), 'downloads')
    monkeypatch.delenv('DNNLIB_CACHE_DIR')
    assert util.make_cache_dir_path('x') == os.path.join(os.path.expanduser('~'), '.cache', 'dnnlib', 'x')

def test_obj_by_name():
    assert util.get_obj_by_name('torch.optim.Adam') is torch.optim.Adam
    assert util.get_obj_by_name('os.path.join') is os.path.join
    # Positional and keyword arguments reach the class (not an optimizer: the first one built imports torch._dynamo, ~1 s).
    layer = util.construct_class_by_name(3, class_name='torch.nn.Linear', out_features=2, bias=False)
    assert isinstance(layer, torch.nn.Linear) and layer.weight.shape == (2, 3) and layer.bias is None
    assert util.call_func_by_name(3, func_name='math.sqrt') == pytest.approx(np.sqrt(3))
    with pytest.raises(ValueError, match='no_such_module_xyz'):
        util.get_obj_by_name('no_such_module_xyz.Thing')
    with pytest.raises(ValueError, match='NoSuchClass'):
        util.get_obj_by_name('torch.optim.NoSuchClass')
    with pytest.raises(ValueError):
        util.construct_class_by_name()

def test_is_url():
    assert util.is_url('https://example.com/a/b.pkl')
    assert util.is_url('http://localhost:8000/x')
    assert not util.is_url('/tmp/a.pkl')
    assert not util.is_url('file:///tmp/a.pkl')
    assert util.is_url('file:///tmp/a.pkl', allow_file_urls=True)
    assert not util.is_url(None)

def test_open_url_local(tmp_path):
    path = tmp_path / 'data.bin'
    path.write_bytes(b'hello')
    with util.open_url(str(path)) as f:
        assert f.read() == b'hello'
    with util.open_url(path.as_uri()) as f: # file:// URL
        assert f.read() == b'hello'
    assert util.open_url(str(path), return_filename=True) == str(path)
    with pytest.raises(FileNotFoundError, match='missing.pkl'):
        util.open_url(str(tmp_path / 'missing.pkl'))
    with pytest.raises(FileNotFoundError, match='missing.pkl'):
        util.open_url((tmp_path / 'missing.pkl').as_uri())
    with pytest.raises(ValueError, match='scheme'):
        util.open_url('ftp://example.com/x.pkl', num_attempts=1)

def test_open_url_offline_error(tmp_path, capsys):
    url = 'http://127.0.0.1:1/edm-cifar10-32x32-uncond-vp.pkl' # port 1: connection refused
    with pytest.raises(IOError) as info:
        util.open_url(url, cache_dir=str(tmp_path), num_attempts=1, timeout=5)
    msg = str(info.value)
    assert url in msg and 'by hand' in msg and 'local path' in msg
    assert str(tmp_path) in msg # says where to put it in the cache
    assert os.listdir(tmp_path) == [] # no partial file left behind

def test_open_url_uses_cache_without_network(tmp_path):
    url = 'http://127.0.0.1:1/model.pkl'
    md5 = hashlib.md5(url.encode('utf-8')).hexdigest()
    (tmp_path / f'{md5}_model.pkl').write_bytes(b'cached')
    with util.open_url(url, cache_dir=str(tmp_path), num_attempts=1) as f:
        assert f.read() == b'cached'
    assert util.open_url(url, cache_dir=str(tmp_path), return_filename=True).endswith('_model.pkl')

def test_open_url_download_and_cache(tmp_path):
    # A local HTTP server stands in for the CDN.
    served = tmp_path / 'served'
    served.mkdir()
    (served / 'weights.bin').write_bytes(b'0123456789' * 1000)
    handler = functools.partial(_QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs=dict(poll_interval=0.01), daemon=True) # shutdown() waits for a poll: 0.5 s by default
    thread.start()
    url = f'http://127.0.0.1:{server.server_address[1]}/weights.bin'
    cache = tmp_path / 'cache'
    try:
        with util.open_url(url, cache_dir=str(cache), verbose=False) as f:
            assert f.read() == b'0123456789' * 1000
        with util.open_url(url, cache=False, verbose=False) as f:
            assert f.read() == b'0123456789' * 1000
        with pytest.raises(IOError, match='404'): # not found: no retries needed
            util.open_url(url.replace('weights', 'nothing'), cache_dir=str(cache), verbose=False, num_attempts=3)
    finally:
        server.shutdown()
        server.server_close()
    # The server is gone; the cache answers.
    name = util.open_url(url, cache_dir=str(cache), return_filename=True, num_attempts=1)
    assert os.path.basename(name) == hashlib.md5(url.encode('utf-8')).hexdigest() + '_weights.bin'
    assert name == util.url_cache_path(url, str(cache))
    with open(name, 'rb') as f:
        assert f.read() == b'0123456789' * 1000

class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args): # keep pytest output clean
        pass

def test_logger_tees_stdout_and_stderr(tmp_path, capsys):
    log = tmp_path / 'log.txt'
    with util.Logger(str(log), file_mode='w'):
        print('to stdout')
        print('to stderr', file=sys.stderr)
    print('after close')
    assert log.read_text() == 'to stdout\nto stderr\n'
    captured = capsys.readouterr()
    assert 'to stdout' in captured.out and 'after close' in captured.out and 'to stderr' in captured.err
    with util.Logger(str(log), file_mode='a'):
        print('appended')
    assert log.read_text().endswith('to stderr\nappended\n')

#----------------------------------------------------------------------------
# torch_utils.misc

def test_constant_is_cached_and_shaped():
    a = misc.constant(1.5, shape=[2, 3])
    assert a.shape == (2, 3) and torch.all(a == 1.5) and a.dtype == torch.get_default_dtype()
    assert misc.constant(1.5, shape=[2, 3]) is a
    assert misc.constant(1.5, shape=[2, 3], dtype=torch.float64) is not a
    b = misc.constant(np.eye(2), dtype=torch.int64)
    assert b.dtype == torch.int64 and torch.equal(b, torch.eye(2, dtype=torch.int64))

def _draw(sampler, n):
    return [int(i) for i in itertools.islice(iter(sampler), n)]

def test_infinite_sampler_determinism():
    data = list(range(10))
    a = _draw(misc.InfiniteSampler(data, seed=7), 100)
    assert a == _draw(misc.InfiniteSampler(data, seed=7), 100)
    assert a != _draw(misc.InfiniteSampler(data, seed=8), 100)
    assert set(a) == set(data)
    assert a[:10] != data # shuffled
    # Without shuffling: plain cyclic order.
    assert _draw(misc.InfiniteSampler(data, shuffle=False), 25) == [i % 10 for i in range(25)]

def test_infinite_sampler_ranks_partition_the_stream():
    data = list(range(13))
    full = _draw(misc.InfiniteSampler(data, seed=3), 60)
    parts = [_draw(misc.InfiniteSampler(data, rank=r, num_replicas=3, seed=3), 20) for r in range(3)]
    assert [parts[i % 3][i // 3] for i in range(60)] == full

def test_infinite_sampler_start_idx_resumes_the_stream():
    data = list(range(11))
    full = _draw(misc.InfiniteSampler(data, seed=5), 200)
    for start in [0, 1, 10, 37, 150]:
        assert _draw(misc.InfiniteSampler(data, seed=5, start_idx=start), 50) == full[start:start + 50]
    # With ranks: rank r continues with the items whose global index is r mod W.
    part = _draw(misc.InfiniteSampler(data, rank=1, num_replicas=2, seed=5, start_idx=40), 20)
    assert part == full[41:81:2]
    # A window too small to move anything: a fixed shuffled cycle.
    fixed = _draw(misc.InfiniteSampler(data, seed=5, window_size=0.1), 40)
    assert fixed[11:22] == fixed[:11] != data
    assert _draw(misc.InfiniteSampler(data, seed=5, window_size=0.1, start_idx=13), 20) == fixed[13:33]
    with pytest.raises(ValueError):
        misc.InfiniteSampler([], seed=0)
    with pytest.raises(ValueError):
        misc.InfiniteSampler(data, rank=2, num_replicas=2)

def test_copy_params_and_buffers():
    torch.manual_seed(0)
    src = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    src[1].running_mean.fill_(0.25)
    dst = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    misc.copy_params_and_buffers(src, dst, require_all=True)
    for (n1, t1), (n2, t2) in zip(misc.named_params_and_buffers(src), misc.named_params_and_buffers(dst)):
        assert n1 == n2 and torch.equal(t1, t2)
    assert len(misc.named_params_and_buffers(dst)) == 2 + 2 + 3
    bigger = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 1))
    misc.copy_params_and_buffers(src, bigger) # missing names allowed by default
    with pytest.raises(ValueError, match='lacks'):
        misc.copy_params_and_buffers(src, bigger, require_all=True)
    with pytest.raises(ValueError, match='shape mismatch'):
        misc.copy_params_and_buffers(src, torch.nn.Sequential(torch.nn.Linear(3, 5)))
    # A failed copy changes nothing, not even the tensors that would fit.
    narrow = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(5))
    before = [t.clone() for _, t in misc.named_params_and_buffers(narrow)]
    with pytest.raises(ValueError, match='shape mismatch'):
        misc.copy_params_and_buffers(src, narrow)
    assert all(torch.equal(a, b) for a, b in zip(before, (t for _, t in misc.named_params_and_buffers(narrow))))

def test_ddp_sync_and_consistency_single_process():
    # Without DDP, ddp_sync(sync=False) is a plain context: the ordinary gradient, d(sum(Wx + b)).
    net = torch.nn.Linear(2, 2)
    with misc.ddp_sync(net, sync=False):
        net(torch.tensor([[1.0, 2.0]])).sum().backward()
    assert torch.equal(net.weight.grad, torch.tensor([[1.0, 2.0], [1.0, 2.0]])) and torch.equal(net.bias.grad, torch.ones(2))
    # No process group: no rank to differ from, so not even NaN weights are reported.
    with torch.no_grad():
        net.bias.fill_(float('nan'))
    misc.check_ddp_consistency(net)
    # Anything but a module is refused by both.
    with pytest.raises(TypeError, match='ddp_sync'):
        with misc.ddp_sync(net.weight, sync=True):
            pass
    with pytest.raises(TypeError, match='check_ddp_consistency'):
        misc.check_ddp_consistency(net.weight)

def test_print_module_summary(capsys):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.GroupNorm(2, 4), torch.nn.SiLU())
    out = misc.print_module_summary(net, [torch.zeros(2, 3, 8, 8)])
    assert out.shape == (2, 4, 8, 8)
    text = capsys.readouterr().out
    assert 'Parameters' in text and '[2, 4, 8, 8]' in text
    total = [line for line in text.splitlines() if line.startswith('Total')][0].split()
    assert int(total[1]) == sum(p.numel() for p in net.parameters()) # 112 + 8

#----------------------------------------------------------------------------
