"""Statistics gathered from anywhere in the code and read out per interval.

Any code calls report(name, value). A Collector's update() then sums over
all ranks what was reported under its names since its previous update();
num(), mean() and std() describe those numbers. Every statistic is kept as
three float64 moments: count, sum and sum of squares."""

import math
import re
import zlib

import torch

import dnnlib

#----------------------------------------------------------------------------

_moments_dtype  = torch.float64 # exact counts and sums over long runs
_rank           = 0             # this process' rank, see init_multiprocessing()
_sync_device    = None          # device of the cross-rank all_reduce; None: single process
_unsynced       = dict()        # name -> {device: moments reported there since the last sync}
_totals         = dict()        # name -> moments of all syncs so far, summed over ranks (CPU)

#----------------------------------------------------------------------------
# Call once per process before any report(). sync_device is where moments are
# summed over ranks: the process' CUDA device with NCCL, the CPU with Gloo;
# None in a single process.

def init_multiprocessing(rank, sync_device):
    global _rank, _sync_device
    _rank = int(rank)
    _sync_device = torch.device(sync_device) if sync_device is not None else None

#----------------------------------------------------------------------------
# Add the elements of value (a number, sequence, array or tensor of any shape)
# to the statistic name. Returns value, so a report can wrap an expression.
# An empty value still registers the name.

def report(name, value):
    by_device = _unsynced.setdefault(name, dict())
    elems = torch.as_tensor(value).detach()
    if elems.numel() == 0:
        return value
    elems = elems.reshape(-1).to(_moments_dtype)
    # The count is filled on the device: a tensor from a host number would be a copy that waits for it.
    moments = torch.stack([elems.new_full([], elems.numel()), elems.sum(), elems.square().sum()])
    if moments.device in by_device:
        by_device[moments.device].add_(moments)
    else:
        by_device[moments.device] = moments
    return value

#----------------------------------------------------------------------------
# report() for values that only rank 0 should count (timings, progress). The
# other ranks register the name with no data, so that all ranks keep agreeing
# on the set of names.

def report0(name, value):
    report(name, value if _rank == 0 else [])
    return value

#----------------------------------------------------------------------------
# Reads the statistics whose names fully match regex. update() is collective
# in a multi-process run: all ranks call it at the same point. Between two
# updates, a statistic without new reports shows its previous interval if
# keep_previous, and no data otherwise.

class Collector:
    def __init__(self, regex='.*', keep_previous=True):
        self._regex = re.compile(regex)
        self._keep_previous = keep_previous
        self._totals_seen = {name: totals.clone() for name, totals in _sync(self.names())}
        self._latest = dict() # name -> moments of its last interval with data

    # Names reported so far (on this rank) that match, in sorted order.
    def names(self):
        return sorted(name for name in _unsynced if self._regex.fullmatch(name))

    # Start a new interval: take in everything reported on all ranks since the
    # previous update. Moments are totals over the whole run minus the totals
    # at that update, shared by all collectors.
    def update(self):
        if not self._keep_previous:
            self._latest = dict()
        for name, totals in _sync(self.names()):
            seen = self._totals_seen.get(name)
            interval = totals - seen if seen is not None else totals.clone()
            self._totals_seen[name] = totals.clone()
            if float(interval[0]) != 0:
                self._latest[name] = interval

    # Moments of name in the current interval; None when there are none.
    def _interval(self, name):
        if not self._regex.fullmatch(name):
            raise ValueError(f'Collector: {name!r} does not match its regex {self._regex.pattern!r}')
        return self._latest.get(name)

    # How many numbers were reported under name.
    def num(self, name):
        interval = self._interval(name)
        return 0 if interval is None else int(interval[0])

    # Their mean; nan if there were none.
    def mean(self, name):
        interval = self._interval(name)
        return float('nan') if interval is None else float(interval[1] / interval[0])

    # Their population standard deviation; nan if there were none or the sum
    # overflowed, 0 for a single number.
    def std(self, name):
        interval = self._interval(name)
        if interval is None or not math.isfinite(float(interval[1])):
            return float('nan')
        if int(interval[0]) == 1:
            return 0.0
        mean = float(interval[1] / interval[0])
        mean_of_squares = float(interval[2] / interval[0])
        return math.sqrt(max(mean_of_squares - mean * mean, 0.0))

    # {name: {num, mean, std}} over names(), as written to stats.jsonl.
    def as_dict(self):
        return dnnlib.EasyDict({name: dnnlib.EasyDict(num=self.num(name), mean=self.mean(name), std=self.std(name))
            for name in self.names()})

    def __getitem__(self, name):
        return self.mean(name)

#----------------------------------------------------------------------------
# Move what was reported under names since the last sync into the run totals,
# summed over ranks, and return [(name, totals)]. All ranks must pass the same
# names; a mismatch raises RuntimeError on every rank instead of mixing up
# statistics or hanging.

def _sync(names):
    if not names:
        return []
    device = _sync_device if _sync_device is not None else torch.device('cpu')
    fresh = torch.zeros([len(names), 3], dtype=_moments_dtype, device=device)
    for row, name in enumerate(names):
        for moments in _unsynced[name].values():
            fresh[row].add_(moments.to(device))
        _unsynced[name].clear()

    dist = torch.distributed
    if _sync_device is not None and dist.is_available() and dist.is_initialized():
        # max(h) == -max(-h) exactly when every rank has the same h.
        digest = float(zlib.crc32('\n'.join(names).encode('utf-8')))
        extremes = torch.tensor([digest, -digest], dtype=torch.float64, device=device)
        dist.all_reduce(extremes, op=dist.ReduceOp.MAX)
        if float(extremes[0]) != -float(extremes[1]):
            raise RuntimeError(f'training_stats: the ranks reported different statistic names (rank {_rank}: {names}); '
                'report values that only rank 0 has with report0()')
        dist.all_reduce(fresh)

    fresh = fresh.cpu()
    for row, name in enumerate(names):
        totals = _totals.setdefault(name, torch.zeros([3], dtype=_moments_dtype))
        totals.add_(fresh[row])
    return [(name, _totals[name]) for name in names]

#----------------------------------------------------------------------------
# A collector of every statistic (the training loop's stats.jsonl).

default_collector = Collector()

#----------------------------------------------------------------------------
