"""Torch helpers for the training loop: cached constant tensors, the endless
data sampler, copying weights between modules, DDP helpers and a table of a
module's layers."""

import contextlib
import re

import numpy as np
import torch

#----------------------------------------------------------------------------
# A constant tensor, built once per distinct (value, shape, dtype, device,
# memory format) and then reused. Forward passes call this with the same small
# values over and over; rebuilding them each time costs a host-to-device copy.
# The released AugmentPipe source calls it by this name and signature.

_constants = dict()

def constant(value, shape=None, dtype=None, device=None, memory_format=None):
    array = np.asarray(value)
    settings = (
        None if shape is None else tuple(shape),
        torch.get_default_dtype() if dtype is None else dtype,
        torch.device('cpu') if device is None else device,
        torch.contiguous_format if memory_format is None else memory_format,
    )
    key = (array.shape, array.dtype, array.tobytes(), *settings)
    if key not in _constants:
        _constants[key] = _make_constant(array, *settings)
    return _constants[key]

def _make_constant(array, shape, dtype, device, memory_format):
    result = torch.as_tensor(array.copy(), dtype=dtype, device=device)
    if shape is not None:
        result = result.expand(shape)
    return result.contiguous(memory_format=memory_format)

#----------------------------------------------------------------------------
# Endless stream of dataset indices, dealt round-robin to the ranks: global
# draw k goes to rank k % num_replicas. With shuffle, the order starts as a
# seeded permutation and, after each draw, the slot just read trades places
# with one up to window_size * len(dataset) slots before it, so every pass
# differs a little from the previous one. start_idx resumes the stream after
# that many global draws, exactly where an uninterrupted run would be.

class InfiniteSampler(torch.utils.data.Sampler):
    def __init__(self, dataset, rank=0, num_replicas=1, shuffle=True, seed=0, window_size=0.5, start_idx=0):
        if len(dataset) == 0:
            raise ValueError('InfiniteSampler: the dataset is empty')
        if num_replicas < 1:
            raise ValueError(f'InfiniteSampler: num_replicas must be positive, got {num_replicas}')
        if rank < 0 or rank >= num_replicas:
            raise ValueError(f'InfiniteSampler: rank {rank} out of range for {num_replicas} replicas')
        if window_size < 0 or window_size > 1:
            raise ValueError(f'InfiniteSampler: window_size must lie in [0, 1], got {window_size}')
        if start_idx < 0:
            raise ValueError(f'InfiniteSampler: start_idx must be non-negative, got {start_idx}')
        super().__init__()
        self.dataset = dataset
        self.rank = rank
        self.num_replicas = num_replicas
        self.start_idx = int(start_idx)
        self.shuffle = shuffle
        self.seed = seed
        self.window = int(np.rint(len(dataset) * window_size)) if shuffle else 0 # in slots; below 2 nothing moves

    def __iter__(self):
        slots = np.arange(len(self.dataset))
        offsets = None # how far back each draw's slot trades places; None: never
        if self.shuffle:
            rnd = np.random.RandomState(self.seed)
            rnd.shuffle(slots)
            if self.window >= 2:
                offsets = _draws_below(self.window, rnd)
        slots = slots.tolist() # a list swaps elements several times faster than an array
        size = len(slots)

        # A resumed stream replays the trades of the skipped draws; without
        # trades there is nothing to replay.
        draw = 0 if offsets is not None else self.start_idx
        while True:
            slot = draw % size
            if draw >= self.start_idx and draw % self.num_replicas == self.rank:
                yield slots[slot]
            if offsets is not None:
                other = (slot - next(offsets)) % size
                slots[slot], slots[other] = slots[other], slots[slot]
            draw += 1

# rnd.randint(high), one value at a time, forever. Drawing a block at once
# yields the very same values, much faster, which matters when a resume
# replays millions of draws.
def _draws_below(high, rnd, block=1 << 16):
    while True:
        yield from rnd.randint(high, size=block).tolist()

#----------------------------------------------------------------------------
# (name, tensor) for every parameter, then every buffer, of a module.

def named_params_and_buffers(module):
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f'named_params_and_buffers() expects a torch.nn.Module, got {type(module).__name__}')
    return [*module.named_parameters(), *module.named_buffers()]

#----------------------------------------------------------------------------
# Copy the parameters and buffers of src_module into the same-named ones of
# dst_module (resume, transfer learning). Tensors of dst_module that
# src_module lacks keep their values, or, with require_all, are an error.
# Everything is checked before anything is copied.

@torch.no_grad()
def copy_params_and_buffers(src_module, dst_module, require_all=False):
    sources = dict(named_params_and_buffers(src_module))
    targets = named_params_and_buffers(dst_module)
    missing = [name for name, _ in targets if name not in sources]
    if require_all and missing:
        raise ValueError(f'copy_params_and_buffers: the source module lacks {len(missing)} tensor(s) of the destination, e.g. {missing[:5]}')
    pairs = [(name, sources[name], target) for name, target in targets if name in sources]
    for name, source, target in pairs:
        if source.shape != target.shape:
            raise ValueError(f'copy_params_and_buffers: shape mismatch for {name}: source {tuple(source.shape)}, destination {tuple(target.shape)}')
    for _, source, target in pairs:
        target.copy_(source.detach())

#----------------------------------------------------------------------------
# Context in which a DistributedDataParallel module does not all-reduce its
# gradients (all but the last round of gradient accumulation). With sync=True,
# or for any other module, it changes nothing.

@contextlib.contextmanager
def ddp_sync(module, sync):
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f'ddp_sync() expects a torch.nn.Module, got {type(module).__name__}')
    skip = not sync and isinstance(module, torch.nn.parallel.DistributedDataParallel)
    with module.no_sync() if skip else contextlib.nullcontext():
        yield

#----------------------------------------------------------------------------
# Raise AssertionError unless every parameter and buffer of module equals the
# copy on rank 0 (NaNs count as equal). Names that fully match ignore_regex,
# written '<ClassName>.<tensor name>', are skipped. Does nothing in a single
# process.

def check_ddp_consistency(module, ignore_regex=None):
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f'check_ddp_consistency() expects a torch.nn.Module, got {type(module).__name__}')
    dist = torch.distributed
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return
    # Every rank broadcasts every tensor before anyone raises: a rank that
    # stopped early would leave the others waiting in broadcast forever.
    differing = []
    for name, local in named_params_and_buffers(module):
        label = f'{type(module).__name__}.{name}'
        if ignore_regex is not None and re.fullmatch(ignore_regex, label):
            continue
        local = local.detach()
        local = torch.nan_to_num(local) if local.is_floating_point() else local
        reference = local.clone()
        dist.broadcast(reference, src=0)
        if not torch.equal(local, reference):
            differing.append(label)
    if differing:
        raise AssertionError(f'DDP consistency check failed on rank {dist.get_rank()}: {", ".join(differing)} differ from rank 0')

#----------------------------------------------------------------------------
# Run module(*inputs) once without gradients and print one row per submodule
# (up to max_nesting calls deep): its parameter and buffer counts and the
# shape and dtype of each output tensor. A tensor is counted only in the
# innermost module it shows up in; with skip_redundant, modules left with
# nothing to show are omitted. Returns the outputs.

def print_module_summary(module, inputs, max_nesting=3, skip_redundant=True):
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f'print_module_summary() expects a torch.nn.Module, got {type(module).__name__}')
    if isinstance(module, torch.jit.ScriptModule):
        raise TypeError('print_module_summary() cannot hook into a ScriptModule')
    inputs = list(inputs) if isinstance(inputs, (tuple, list)) else [inputs]

    # Forward hooks fire in completion order: inner modules before outer ones.
    calls = []  # (module, output tensors), in completion order
    depth = [0] # modules currently running
    def enter(_module, _inputs):
        depth[0] += 1
    def leave(submodule, _inputs, outputs):
        depth[0] -= 1
        if depth[0] <= max_nesting:
            outputs = outputs if isinstance(outputs, (tuple, list)) else [outputs]
            calls.append((submodule, [t for t in outputs if isinstance(t, torch.Tensor)]))
    handles = []
    for submodule in module.modules():
        handles.append(submodule.register_forward_pre_hook(enter))
        handles.append(submodule.register_forward_hook(leave))
    try:
        with torch.no_grad():
            outputs = module(*inputs)
    finally:
        for handle in handles:
            handle.remove()

    names = {submodule: name for name, submodule in module.named_modules()}
    counted = set()
    def first_sightings(tensors):
        fresh = [t for t in tensors if id(t) not in counted]
        counted.update(id(t) for t in fresh)
        return fresh

    header = [type(module).__name__, 'Parameters', 'Buffers', 'Output shape', 'Datatype']
    rule = ['---'] * len(header)
    rows = [header, rule]
    total_params = total_buffers = 0
    for submodule, tensors in calls:
        num_params = sum(t.numel() for t in first_sightings(submodule.parameters()))
        num_buffers = sum(t.numel() for t in first_sightings(submodule.buffers()))
        tensors = first_sightings(tensors)
        if skip_redundant and not (num_params or num_buffers or tensors):
            continue
        total_params += num_params
        total_buffers += num_buffers
        name = '<top-level>' if submodule is module else names.get(submodule, '?')
        shapes = [str(list(t.shape)) for t in tensors] or ['-']
        dtypes = [str(t.dtype).rsplit('.', 1)[-1] for t in tensors] or ['-']
        for k, (shape, dtype) in enumerate(zip(shapes, dtypes)):
            label = name if len(tensors) < 2 else f'{name}:{k}'
            counts = [str(num_params or '-'), str(num_buffers or '-')] if k == 0 else ['-', '-']
            rows.append([label, *counts, shape, dtype])
    rows += [rule, ['Total', str(total_params), str(total_buffers), '-', '-']]

    widths = [max(map(len, column)) for column in zip(*rows)]
    lines = ['  '.join(cell.ljust(width) for cell, width in zip(row, widths)) for row in rows]
    print('\n' + '\n'.join(lines) + '\n')
    return outputs

#----------------------------------------------------------------------------
