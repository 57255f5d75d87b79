"""Tests for torch_utils.distributed and torch_utils.training_stats, in one
process and in a real two-process Gloo group on the CPU."""

import json
import os

import numpy as np
import pytest
import torch

from torch_utils import distributed as dist
from torch_utils import training_stats

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

# The ranks run tests/gloo_workers/two_ranks.py in the suite's shared launch (conftest.gloo_runs).
def test_two_process_gloo(gloo_runs):
    results = [json.load(open(f'{gloo_runs["two_ranks"]}.{rank}')) for rank in range(2)]
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
