"""Writing network snapshots in EDM's pickle format (a dict of frozen CPU copies: ema, loss_fn,
augment_pipe, dataset_kwargs), atomically. The training loop writes its snapshots with it;
edm_spectral.checkpoints reads them (and EDM's) back."""

import copy
import os
import pickle
import re

import torch

from torch_utils import misc

#----------------------------------------------------------------------------
# Atomic writes: a stop or crash while saving never leaves a truncated file behind.

def atomic_write(path, write_fn):
    tmp = path + '.tmp'
    with open(tmp, 'wb') as f:
        write_fn(f)
    os.replace(tmp, path)

#----------------------------------------------------------------------------
# A module becomes a frozen CPU copy (eval, no grad), checked equal on all ranks when
# check_ddp; other values are stored as they are.

def frozen_copy(value, check_ddp=False):
    if not isinstance(value, torch.nn.Module):
        return value
    value = copy.deepcopy(value).eval().requires_grad_(False)
    if check_ddp:
        misc.check_ddp_consistency(value)
    return value.cpu()

# What a snapshot holds, in EDM's key order. With check_ddp every rank must call it.
def snapshot_contents(ema, loss_fn=None, augment_pipe=None, dataset_kwargs=None, check_ddp=False):
    if not isinstance(ema, torch.nn.Module):
        raise TypeError(f'the snapshot network (ema) must be a torch.nn.Module, got {type(ema).__name__}')
    contents = dict(ema=ema, loss_fn=loss_fn, augment_pipe=augment_pipe, dataset_kwargs=dict(dataset_kwargs or {}))
    return {key: frozen_copy(value, check_ddp) for key, value in contents.items()}

def write_snapshot(path, contents):
    atomic_write(path, lambda f: pickle.dump(contents, f, protocol=4))

# One call for a single process (tests, tools): network-snapshot-*.pkl from the objects.
def save_snapshot(path, ema, loss_fn=None, augment_pipe=None, dataset_kwargs=None):
    write_snapshot(path, snapshot_contents(ema, loss_fn, augment_pipe, dataset_kwargs))

#----------------------------------------------------------------------------

# The newest of a run's files named by the training loop (network-snapshot-*.pkl,
# training-state-*.pt): EDM's whole-kimg name comes first within its kimg, then the exact
# image counts, then their -N repeats, so names are ordered by what they encode, not as text.
def latest_file(run_dir, prefix, suffix):
    pattern = re.compile(re.escape(prefix) + r'-(\d+)(?:\.(\d{3}))?(?:-(\d+))?' + re.escape(suffix) + '$')
    found = []
    for name in os.listdir(run_dir):
        m = pattern.match(name)
        if m:
            found.append(((int(m.group(1)), -1 if m.group(2) is None else int(m.group(2)), int(m.group(3) or 0)), name))
    return os.path.join(run_dir, max(found)[1]) if found else None
