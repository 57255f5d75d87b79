"""Tests for torch_utils.distributed and torch_utils.training_stats, in one
process and in a real two-process Gloo group on the CPU."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from torch_utils import distributed as dist
from torch_utils import training_stats

from conftest import child_env

#----------------------------------------------------------------------------
# Single process.

@pytest.fixture
def single_process_env(monkeypatch):
    for name in ['RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT']:
        monkeypatch.delenv(name, raising=False)
    yield
    # init() fills the defaults into os.environ; monkeypatch restores them.
    for name in ['RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT']:
        monkeypatch.delenv(name, raising=False)

def test_single_process_init(single_process_env, capsys):
    device = dist.init('cpu')
    assert device == torch.device('cpu')
    assert os.environ['WORLD_SIZE'] == '1' and os.environ['RANK'] == '0'
    assert not torch.distributed.is_initialized() # no process group for one process
    assert dist.get_rank() == 0 and dist.get_world_size() == 1
    dist.barrier() # no-op
    assert dist.should_stop() is False
    dist.update_progress(1, 10)
    dist.print0('hello', 42)
    assert capsys.readouterr().out == 'hello 42\n'

def test_resolve_device(monkeypatch):
    assert dist.resolve_device('cpu') == torch.device('cpu')
    assert dist.resolve_device(None) == torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')
    with pytest.raises(ValueError, match='Invalid device'):
        dist.resolve_device('gpu0')
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match='--device=cpu'):
            dist.resolve_device('cuda')
    else:
        monkeypatch.setenv('LOCAL_RANK', '0')
        assert dist.resolve_device('cuda') == torch.device('cuda', 0)

#----------------------------------------------------------------------------
# training_stats in one process.

def test_collector_means_and_std():
    c = training_stats.Collector(regex='TestStats/.*', keep_previous=False)
    values = [1.0, 2.0, 4.0, 8.0]
    assert training_stats.report('TestStats/a', torch.tensor(values[:2])) is not None
    training_stats.report('TestStats/a', np.array(values[2:]))
    training_stats.report('TestStats/b', 3)
    training_stats.report('Other/c', 100.0) # not matched by the regex
    training_stats.report('TestStats/empty', [])
    c.update()
    assert c.names() == ['TestStats/a', 'TestStats/b', 'TestStats/empty']
    assert c.num('TestStats/a') == 4
    assert c.mean('TestStats/a') == pytest.approx(np.mean(values))
    assert c.std('TestStats/a') == pytest.approx(np.std(values))
    assert c.mean('TestStats/b') == 3 and c.std('TestStats/b') == 0
    assert c.num('TestStats/empty') == 0 and np.isnan(c.mean('TestStats/empty'))
    d = c.as_dict()
    assert d['TestStats/a'].num == 4 and d['TestStats/a'].mean == pytest.approx(3.75)
    with pytest.raises(ValueError):
        c.mean('Other/c')

    # Each update covers only what was reported since the previous one.
    training_stats.report('TestStats/a', 10.0)
    c.update()
    assert c.num('TestStats/a') == 1 and c.mean('TestStats/a') == 10
    assert c.num('TestStats/b') == 0 # keep_previous=False

def test_collector_keep_previous():
    c = training_stats.Collector(regex='KeepTest/.*', keep_previous=True)
    training_stats.report('KeepTest/x', [1.0, 3.0])
    c.update()
    c.update() # nothing new: the previous values stay visible
    assert c.num('KeepTest/x') == 2 and c['KeepTest/x'] == 2.0

def test_report_returns_value_and_report0():
    t = torch.ones(3, requires_grad=True)
    assert training_stats.report('Ret/x', t) is t
    assert training_stats.report0('Ret/y', 7) == 7

#----------------------------------------------------------------------------
# Two real processes in a Gloo group: statistics are summed over ranks,
# report0 counts rank 0 only, consistency checks compare against rank 0.

_WORKER = textwrap.dedent('''
    import json, sys, torch
    from torch_utils import distributed as dist, training_stats, misc
    def main(): # locals, not module globals: freed before exit, while the process group is alive
        device = dist.init('cpu')
        rank = dist.get_rank()
        result = dict(rank=rank, world=dist.get_world_size(), device=str(device))
        c = training_stats.Collector(regex='Loss/.*')
        training_stats.report('Loss/x', torch.full([rank + 1], float(rank + 1))) # rank 0: [1], rank 1: [2, 2]
        training_stats.report0('Loss/only0', 5.0 + rank)
        c.update()
        result.update(num=c.num('Loss/x'), mean=c.mean('Loss/x'), std=c.std('Loss/x'),
            num0=c.num('Loss/only0'), mean0=c.mean('Loss/only0'))

        torch.manual_seed(0)
        net = torch.nn.Linear(3, 2)
        misc.check_ddp_consistency(net)
        ddp = torch.nn.parallel.DistributedDataParallel(net)
        with misc.ddp_sync(ddp, sync=False):
            ddp(torch.ones(1, 3) * (rank + 1)).sum().backward() # no all-reduce: grads differ
        result['grad_local'] = net.weight.grad[0, 0].item()
        net.weight.grad = None
        with misc.ddp_sync(ddp, sync=True):
            ddp(torch.ones(1, 3) * (rank + 1)).sum().backward() # averaged over ranks
        result['grad_synced'] = net.weight.grad[0, 0].item()
        with torch.no_grad():
            net.bias.add_(rank)
        try:
            misc.check_ddp_consistency(net)
            result['mismatch_detected'] = False
        except AssertionError:
            result['mismatch_detected'] = True

        # Ranks that report different names get a clear error instead of a hang.
        training_stats.report('Loss/extra_rank%d' % rank, 1.0)
        try:
            c.update()
            result['name_check'] = False
        except RuntimeError as e:
            result['name_check'] = 'different statistic names' in str(e)
        dist.barrier()
        print(json.dumps(result))

    main()
    dist.shutdown()
''')

# The two processes are started by hand, without torchrun: init() needs only the variables.
def test_two_process_gloo(tmp_path, free_port):
    script = tmp_path / 'worker.py'
    script.write_text(_WORKER)
    procs = []
    for rank in range(2):
        env = child_env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE='2', MASTER_ADDR='127.0.0.1', MASTER_PORT=str(free_port),
            CUDA_VISIBLE_DEVICES='')
        procs.append(subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=180)
            assert p.returncode == 0, err
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for rank, r in enumerate(sorted(results, key=lambda r: r['rank'])):
        assert r['rank'] == rank and r['world'] == 2 and r['device'] == 'cpu'
        assert r['num'] == 3
        assert r['mean'] == pytest.approx(5 / 3)
        assert r['std'] == pytest.approx(np.std([1.0, 2.0, 2.0]))
        assert r['num0'] == 1 and r['mean0'] == 5.0
        assert r['grad_local'] == pytest.approx(rank + 1)
        assert r['grad_synced'] == pytest.approx(1.5)
        assert r['mismatch_detected'] == (rank == 1)
        assert r['name_check'] is True

#----------------------------------------------------------------------------
