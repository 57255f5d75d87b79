"""Miscellaneous torch helpers: cached constants, the infinite data sampler,
parameter copying, DDP consistency checks and a module summary table."""

import contextlib
import re
import warnings

import numpy as np
import torch

#----------------------------------------------------------------------------
# Cached constant tensor. Building small tensors from Python values in every
# forward pass is slow (and forces a host->device copy), so reuse them.

_constant_cache = dict()

def constant(value, shape=None, dtype=None, device=None, memory_format=None):
    value = np.asarray(value)
    if shape is not None:
        shape = tuple(shape)
    if dtype is None:
        dtype = torch.get_default_dtype()
    if device is None:
        device = torch.device('cpu')
    if memory_format is None:
        memory_format = torch.contiguous_format

    key = (value.shape, value.dtype, value.tobytes(), shape, dtype, device, memory_format)
    tensor = _constant_cache.get(key, None)
    if tensor is None:
        tensor = torch.as_tensor(value.copy(), dtype=dtype, device=device)
        if shape is not None:
            tensor = tensor.expand(shape)
        tensor = tensor.contiguous(memory_format=memory_format)
        _constant_cache[key] = tensor
    return tensor

#----------------------------------------------------------------------------
# Symbolic shape check: None in ref_shape matches any size, a tensor matches
# its own value (useful under tracing).

def assert_shape(tensor, ref_shape):
    if tensor.ndim != len(ref_shape):
        raise AssertionError(f'Wrong number of dimensions: got {tensor.ndim}, expected {len(ref_shape)}')
    for idx, (size, ref_size) in enumerate(zip(tensor.shape, ref_shape)):
        if ref_size is None:
            continue
        if isinstance(ref_size, torch.Tensor):
            with suppress_tracer_warnings():
                torch._assert(torch.equal(torch.as_tensor(size), ref_size), f'Wrong size for dimension {idx}')
        elif isinstance(size, torch.Tensor):
            with suppress_tracer_warnings():
                torch._assert(torch.equal(size, torch.as_tensor(ref_size)), f'Wrong size for dimension {idx}: expected {ref_size}')
        elif size != ref_size:
            raise AssertionError(f'Wrong size for dimension {idx}: got {size}, expected {ref_size}')

#----------------------------------------------------------------------------
# Silence the TracerWarnings that shape checks produce under torch.jit.trace.

@contextlib.contextmanager
def suppress_tracer_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', category=torch.jit.TracerWarning)
        yield

#----------------------------------------------------------------------------
# Endless sampler over a dataset, split over ranks. The order is shuffled
# once, then every visited slot swaps with a random earlier slot within a
# sliding window, so successive epochs differ without a full reshuffle.
# start_idx skips that many draws (over all ranks) and replays the swaps, so
# a resumed run sees exactly the order it would have seen.

class InfiniteSampler(torch.utils.data.Sampler):
    def __init__(self, dataset, rank=0, num_replicas=1, shuffle=True, seed=0, window_size=0.5, start_idx=0):
        if len(dataset) <= 0:
            raise ValueError('InfiniteSampler: the dataset is empty')
        if num_replicas <= 0:
            raise ValueError('InfiniteSampler: num_replicas must be positive')
        if not 0 <= rank < num_replicas:
            raise ValueError(f'InfiniteSampler: rank {rank} out of range for {num_replicas} replicas')
        if not 0 <= window_size <= 1:
            raise ValueError('InfiniteSampler: window_size must be in [0, 1]')
        if start_idx < 0:
            raise ValueError('InfiniteSampler: start_idx must be non-negative')
        try:
            super().__init__(dataset)
        except TypeError: # newer torch takes no arguments
            super().__init__()
        self.dataset = dataset
        self.rank = rank
        self.num_replicas = num_replicas
        self.shuffle = shuffle
        self.seed = seed
        self.window_size = window_size
        self.start_idx = int(start_idx)

    def __iter__(self):
        order = np.arange(len(self.dataset))
        rnd = None
        window = 0
        if self.shuffle:
            rnd = np.random.RandomState(self.seed)
            rnd.shuffle(order)
            window = int(np.rint(order.size * self.window_size))

        if window >= 2 and self.start_idx > 0:
            order = self._replay(order, rnd, window)
        idx = self.start_idx

        while True:
            i = idx % order.size
            if idx % self.num_replicas == self.rank:
                yield order[i]
            if window >= 2:
                j = (i - rnd.randint(window)) % order.size
                order[i], order[j] = order[j], order[i]
            idx += 1

    # Apply the swaps of the first start_idx steps. Drawing the offsets in
    # blocks gives the same numbers as one draw per step.
    def _replay(self, order, rnd, window):
        n = order.size
        order = order.tolist()
        idx = 0
        while idx < self.start_idx:
            count = min(self.start_idx - idx, 1 << 20)
            offsets = rnd.randint(window, size=count).tolist()
            for offset in offsets:
                i = idx % n
                j = (i - offset) % n
                order[i], order[j] = order[j], order[i]
                idx += 1
        return np.asarray(order, dtype=np.int64)

#----------------------------------------------------------------------------
# Parameters and buffers of a module, as lists or as (name, tensor) pairs.

def params_and_buffers(module):
    if not isinstance(module, torch.nn.Module):
        raise TypeError('params_and_buffers() expects a torch.nn.Module')
    return list(module.parameters()) + list(module.buffers())

def named_params_and_buffers(module):
    if not isinstance(module, torch.nn.Module):
        raise TypeError('named_params_and_buffers() expects a torch.nn.Module')
    return list(module.named_parameters()) + list(module.named_buffers())

#----------------------------------------------------------------------------
# Copy parameters and buffers by name from src to dst (e.g. transfer learning,
# resume). With require_all, every tensor of dst must exist in src.

@torch.no_grad()
def copy_params_and_buffers(src_module, dst_module, require_all=False):
    src_tensors = dict(named_params_and_buffers(src_module))
    missing = []
    for name, tensor in named_params_and_buffers(dst_module):
        if name not in src_tensors:
            missing.append(name)
            continue
        src = src_tensors[name]
        if src.shape != tensor.shape:
            raise ValueError(f'copy_params_and_buffers: shape mismatch for {name}: source {tuple(src.shape)}, destination {tuple(tensor.shape)}')
        tensor.copy_(src.detach())
    if require_all and missing:
        raise ValueError(f'copy_params_and_buffers: source module lacks {len(missing)} tensor(s), e.g. {missing[:5]}')

#----------------------------------------------------------------------------
# Skip DDP's gradient all-reduce when sync is False (gradient accumulation).

@contextlib.contextmanager
def ddp_sync(module, sync):
    if not isinstance(module, torch.nn.Module):
        raise TypeError('ddp_sync() expects a torch.nn.Module')
    if sync or not isinstance(module, torch.nn.parallel.DistributedDataParallel):
        yield
    else:
        with module.no_sync():
            yield

#----------------------------------------------------------------------------
# Assert that every parameter and buffer equals rank 0's copy. A no-op in a
# single process.

def check_ddp_consistency(module, ignore_regex=None):
    if not isinstance(module, torch.nn.Module):
        raise TypeError('check_ddp_consistency() expects a torch.nn.Module')
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    if torch.distributed.get_world_size() <= 1:
        return
    # Compare everything before raising, so that all ranks issue the same
    # broadcasts and a mismatch cannot deadlock the others.
    mismatches = []
    for name, tensor in named_params_and_buffers(module):
        fullname = type(module).__name__ + '.' + name
        if ignore_regex is not None and re.fullmatch(ignore_regex, fullname):
            continue
        tensor = tensor.detach()
        if tensor.is_floating_point():
            tensor = torch.nan_to_num(tensor)
        other = tensor.clone()
        torch.distributed.broadcast(tensor=other, src=0)
        if not (tensor == other).all():
            mismatches.append(fullname)
    if mismatches:
        raise AssertionError(f'DDP consistency check failed on rank {torch.distributed.get_rank()}: {", ".join(mismatches)} differ from rank 0')

#----------------------------------------------------------------------------
# Run one forward pass and print a table of the submodules with their
# parameter counts, buffer sizes, output shapes and dtypes. Returns the outputs.

def print_module_summary(module, inputs, max_nesting=3, skip_redundant=True):
    if not isinstance(module, torch.nn.Module):
        raise TypeError('print_module_summary() expects a torch.nn.Module')
    if isinstance(module, torch.jit.ScriptModule):
        raise TypeError('print_module_summary() does not support ScriptModules')
    if not isinstance(inputs, (tuple, list)):
        inputs = [inputs]

    # Record the outputs of every submodule up to max_nesting levels deep.
    entries = []
    nesting = [0]
    def pre_hook(_mod, _inputs):
        nesting[0] += 1
    def post_hook(mod, _inputs, outputs):
        nesting[0] -= 1
        if nesting[0] <= max_nesting:
            outputs = list(outputs) if isinstance(outputs, (tuple, list)) else [outputs]
            outputs = [t for t in outputs if isinstance(t, torch.Tensor)]
            entries.append(dict(mod=mod, outputs=outputs))
    hooks = [mod.register_forward_pre_hook(pre_hook) for mod in module.modules()]
    hooks += [mod.register_forward_hook(post_hook) for mod in module.modules()]
    try:
        with torch.no_grad():
            outputs = module(*inputs)
    finally:
        for hook in hooks:
            hook.remove()

    # Attribute each tensor to the innermost recorded module that owns it.
    seen = set()
    for e in entries:
        e['params'] = [t for t in e['mod'].parameters() if id(t) not in seen]
        e['buffers'] = [t for t in e['mod'].buffers() if id(t) not in seen]
        e['outputs'] = [t for t in e['outputs'] if id(t) not in seen]
        seen |= {id(t) for t in e['params'] + e['buffers'] + e['outputs']}
    if skip_redundant:
        entries = [e for e in entries if len(e['params']) or len(e['buffers']) or len(e['outputs'])]

    # Build the table.
    names = {mod: name for name, mod in module.named_modules()}
    rows = [[type(module).__name__, 'Parameters', 'Buffers', 'Output shape', 'Datatype']]
    rows += [['---'] * len(rows[0])]
    param_total = 0
    buffer_total = 0
    for e in entries:
        name = '<top-level>' if e['mod'] is module else names.get(e['mod'], '?')
        param_size = sum(t.numel() for t in e['params'])
        buffer_size = sum(t.numel() for t in e['buffers'])
        output_shapes = [str(list(t.shape)) for t in e['outputs']]
        output_dtypes = [str(t.dtype).split('.')[-1] for t in e['outputs']]
        rows += [[
            name + (':0' if len(e['outputs']) >= 2 else ''),
            str(param_size) if param_size else '-',
            str(buffer_size) if buffer_size else '-',
            (output_shapes + ['-'])[0],
            (output_dtypes + ['-'])[0],
        ]]
        for idx in range(1, len(e['outputs'])):
            rows += [[name + f':{idx}', '-', '-', output_shapes[idx], output_dtypes[idx]]]
        param_total += param_size
        buffer_total += buffer_size
    rows += [['---'] * len(rows[0])]
    rows += [['Total', str(param_total), str(buffer_total), '-', '-']]

    widths = [max(len(cell) for cell in column) for column in zip(*rows)]
    print()
    for row in rows:
        print('  '.join(cell + ' ' * (width - len(cell)) for cell, width in zip(row, widths)))
    print()
    return outputs

#----------------------------------------------------------------------------
