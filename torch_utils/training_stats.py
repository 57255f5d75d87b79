"""Statistics collection across processes. Any code may call report() with a
name and a tensor; a Collector later reads the mean and standard deviation of
everything reported since its previous update(), summed over all ranks."""

import re
import zlib

import numpy as np
import torch

#----------------------------------------------------------------------------

_num_moments    = 3             # [count, sum, sum of squares]
_counter_dtype  = torch.float64 # Wide enough to keep long runs exact.
_rank           = 0             # Set by init_multiprocessing().
_sync_device    = None          # Device for all_reduce; None = single process.
_counters       = dict()        # name -> {device: moments since the last sync}
_cumulative     = dict()        # name -> moments accumulated over all syncs (CPU)

#----------------------------------------------------------------------------
# Call once per process before reporting. sync_device is the device on
# which counters are all-reduced (the process' CUDA device for NCCL, CPU for
# Gloo), or None in a single process.

def init_multiprocessing(rank, sync_device):
    global _rank, _sync_device
    _rank = int(rank)
    _sync_device = None if sync_device is None else torch.device(sync_device)

#----------------------------------------------------------------------------
# Record the elements of value (scalar, sequence, array or tensor) under name.
# Returns value unchanged, so it can wrap an expression.

def report(name, value):
    if name not in _counters:
        _counters[name] = dict()

    elems = torch.as_tensor(value)
    if elems.numel() == 0:
        return value

    elems = elems.detach().flatten().to(_counter_dtype)
    moments = torch.stack([
        torch.ones_like(elems).sum(),
        elems.sum(),
        elems.square().sum(),
    ])
    device = moments.device
    if device not in _counters[name]:
        _counters[name][device] = torch.zeros_like(moments)
    _counters[name][device].add_(moments)
    return value

#----------------------------------------------------------------------------
# Like report(), but only rank 0's value counts. The other ranks register the
# name with no data so that all ranks sync the same set of names.

def report0(name, value):
    report(name, value if _rank == 0 else [])
    return value

#----------------------------------------------------------------------------
# Reads back the statistics whose names fully match regex. update() is a
# collective call in multi-process runs: every rank must call it together.

class Collector:
    def __init__(self, regex='.*', keep_previous=True):
        self._regex = re.compile(regex)
        self._keep_previous = keep_previous
        self._cumulative = dict()
        self._moments = dict()
        self.update()
        self._moments.clear()

    # Names reported so far that match the regex, sorted.
    def names(self):
        return [name for name in sorted(_counters) if self._regex.fullmatch(name)]

    # Take the statistics reported (on all ranks) since the previous update.
    def update(self):
        if not self._keep_previous:
            self._moments.clear()
        for name, cumulative in _sync(self.names()):
            if name not in self._cumulative:
                self._cumulative[name] = torch.zeros([_num_moments], dtype=_counter_dtype)
            delta = cumulative - self._cumulative[name]
            self._cumulative[name].copy_(cumulative)
            if float(delta[0]) != 0:
                self._moments[name] = delta

    def _get_delta(self, name):
        if not self._regex.fullmatch(name):
            raise ValueError(f'Collector: {name!r} does not match the regex {self._regex.pattern!r}')
        if name not in self._moments:
            self._moments[name] = torch.zeros([_num_moments], dtype=_counter_dtype)
        return self._moments[name]

    # Number of scalars reported under name in the last update interval.
    def num(self, name):
        return int(self._get_delta(name)[0])

    # Mean of those scalars, nan if there were none.
    def mean(self, name):
        delta = self._get_delta(name)
        if int(delta[0]) == 0:
            return float('nan')
        return float(delta[1] / delta[0])

    # Population standard deviation of those scalars, nan if there were none.
    def std(self, name):
        delta = self._get_delta(name)
        if int(delta[0]) == 0 or not np.isfinite(float(delta[1])):
            return float('nan')
        if int(delta[0]) == 1:
            return float(0)
        mean = float(delta[1] / delta[0])
        raw_var = float(delta[2] / delta[0])
        return float(np.sqrt(max(raw_var - np.square(mean), 0)))

    # {name: {num, mean, std}} for every matching name (for stats.jsonl).
    def as_dict(self):
        import dnnlib # lazy: keeps this module importable without dnnlib
        stats = dnnlib.EasyDict()
        for name in self.names():
            stats[name] = dnnlib.EasyDict(num=self.num(name), mean=self.mean(name), std=self.std(name))
        return stats

    # Shorthand for mean().
    def __getitem__(self, name):
        return self.mean(name)

#----------------------------------------------------------------------------
# Fold the per-device counters into the cumulative totals, summing over ranks.
# Every rank must pass the same names in the same order.

def _sync(names):
    if len(names) == 0:
        return []

    # Gather and reset the local counters.
    deltas = []
    device = _sync_device if _sync_device is not None else torch.device('cpu')
    for name in names:
        delta = torch.zeros([_num_moments], dtype=_counter_dtype, device=device)
        for counter in _counters[name].values():
            delta.add_(counter.to(device))
            counter.zero_()
        deltas.append(delta)
    deltas = torch.stack(deltas)

    # Sum over ranks, after checking that all ranks agree on the names (a
    # mismatch would otherwise silently mix up statistics or hang).
    if _sync_device is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
        digest = zlib.crc32('\n'.join(names).encode('utf-8'))
        check = torch.tensor([digest, -digest], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(check, op=torch.distributed.ReduceOp.MAX)
        if check[0] != -check[1]:
            raise RuntimeError(f'training_stats: ranks reported different statistic names (rank {_rank} has {names}); use report0() for rank-0-only values')
        torch.distributed.all_reduce(deltas)

    # Update the cumulative totals.
    deltas = deltas.cpu()
    for idx, name in enumerate(names):
        if name not in _cumulative:
            _cumulative[name] = torch.zeros([_num_moments], dtype=_counter_dtype)
        _cumulative[name].add_(deltas[idx])
    return [(name, _cumulative[name]) for name in names]

#----------------------------------------------------------------------------
# Convenience collector that catches every name.

default_collector = Collector()

#----------------------------------------------------------------------------
