"""Process-group set-up for single-process runs and torchrun launches, on
CUDA (NCCL) or CPU (Gloo)."""

import atexit
import gc
import os
import sys

import torch

from . import training_stats

#----------------------------------------------------------------------------
# Turn a --device value into a torch.device: None means cuda when available,
# else cpu; a bare 'cuda' becomes this process' GPU, cuda:LOCAL_RANK.

def resolve_device(device=None):
    if device is None:
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f'Invalid device {device!r}: {e}') from None
    if device.type == 'cuda':
        if not torch.cuda.is_available():
            raise ValueError(f'Device {str(device)!r} requested, but CUDA is not available; use --device=cpu')
        if device.index is None:
            device = torch.device('cuda', int(os.environ.get('LOCAL_RANK', '0')))
        if device.index >= torch.cuda.device_count():
            raise ValueError(f'Device {str(device)!r} requested, but only {torch.cuda.device_count()} GPU(s) are visible')
    return device

#----------------------------------------------------------------------------
# Set up this process and return its device. Without torchrun (WORLD_SIZE
# unset or 1) no process group is created; with it, the group uses NCCL for
# CUDA devices and Gloo for CPU.

def init(device=None):
    os.environ.setdefault('MASTER_ADDR', 'localhost')
    os.environ.setdefault('MASTER_PORT', '29500')
    os.environ.setdefault('RANK', '0')
    os.environ.setdefault('LOCAL_RANK', '0')
    os.environ.setdefault('WORLD_SIZE', '1')
    world_size = int(os.environ['WORLD_SIZE'])

    device = resolve_device(device)
    if device.type == 'cuda':
        torch.cuda.set_device(device)
    if world_size > 1 and not torch.distributed.is_initialized():
        backend = 'nccl' if device.type == 'cuda' and sys.platform != 'win32' else 'gloo'
        torch.distributed.init_process_group(backend=backend, init_method='env://')
        atexit.register(shutdown)

    training_stats.init_multiprocessing(rank=get_rank(), sync_device=(device if get_world_size() > 1 else None))
    return device

#----------------------------------------------------------------------------
# Tear the process group down; called at the end of the CLIs and at exit.
# Left to process teardown, Gloo's worker threads can abort the process
# ("terminate called without an active exception"), failing a run that has
# finished its work.
# DDP wrappers sit in reference cycles that outlive their function; freeing
# them during interpreter finalization aborts the same way, so collect them
# here first, while the interpreter is whole. Without a process group there
# is nothing to protect, and a full collection of a large heap costs time.

def shutdown():
    if _group_ready():
        gc.collect()
        torch.distributed.destroy_process_group()

#----------------------------------------------------------------------------
# Rank and world size; 0 and 1 when no process group exists.

def _group_ready():
    return torch.distributed.is_available() and torch.distributed.is_initialized()

def get_rank():
    return torch.distributed.get_rank() if _group_ready() else 0

def get_world_size():
    return torch.distributed.get_world_size() if _group_ready() else 1

#----------------------------------------------------------------------------
# Wait for all ranks; a no-op in a single process.

def barrier():
    if _group_ready() and get_world_size() > 1:
        torch.distributed.barrier()

#----------------------------------------------------------------------------
# Hooks for cluster schedulers (pre-emption, progress bars); no-ops here.

def should_stop():
    return False

def update_progress(cur, total): # pylint: disable=unused-argument
    pass

#----------------------------------------------------------------------------
# print() on rank 0 only.

def print0(*args, **kwargs):
    if get_rank() == 0:
        print(*args, **kwargs)

#----------------------------------------------------------------------------
