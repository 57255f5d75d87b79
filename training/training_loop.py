"""Main training loop: the EDM mechanics, plus exact resume, CPU support, graceful stop and
sample grids."""

import contextlib
import copy
import inspect
import itertools
import json
import os
import signal
import time

import numpy as np
import torch

import dnnlib
from torch_utils import distributed as dist
from torch_utils import memory
from torch_utils import misc
from torch_utils import training_stats
from training import fast_paths as speedups
from training import multi_tensor
from training import snapshots

#----------------------------------------------------------------------------
# Stop requests from SIGINT/SIGTERM: the first one asks for a clean stop (a final snapshot and
# training state), a second SIGINT interrupts at once. Several processes stop after the same
# step, so they compare their requests only every _STOP_POLL_STEPS steps and at tick ends: a
# comparison is an all-reduce plus a host-device sync, too dear for every step.

_STOP_POLL_STEPS = 32
_stop_requested = False

def _request_stop(signum, frame):
    global _stop_requested
    if _stop_requested and signum == signal.SIGINT:
        raise KeyboardInterrupt
    _stop_requested = True
    print(f'\nReceived signal {signum}: stopping after this step (within {_STOP_POLL_STEPS} steps when several processes '
        'train), writing a final snapshot and training state...', flush=True)

def _install_stop_handlers():
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, _request_stop)
        except ValueError: # Not the main thread: rely on the default behaviour.
            pass
    return previous

def _restore_handlers(previous):
    for sig, handler in previous.items():
        signal.signal(sig, handler)

# DataLoader workers get the same signals (Ctrl-C reaches the whole process group, torchrun
# signals the group too): they must not die while the main process finishes its last step.
# They still exit with the main process (torch's parent watchdog).
def _ignore_stop_signals_in_worker(worker_id):
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

# Shut the workers of a DataLoader iterator down now (torch does it only when the iterator
# is collected, and waits up to 5 s per worker there once one of them failed).
def _stop_workers(batches):
    shutdown = getattr(batches, '_shutdown_workers', None) # absent without workers
    if shutdown is not None:
        shutdown()

# Whether any process asked to stop. polled=False skips the cross-process comparison (and
# answers no) on the steps between polls.
def _stop_agreed(device, polled, synchronize):
    wanted = _stop_requested or dist.should_stop()
    if not synchronize:
        return wanted
    if not polled:
        return False
    flag = torch.tensor([float(wanted)], device=device)
    torch.distributed.all_reduce(flag)
    return flag.item() > 0

#----------------------------------------------------------------------------
# RNG states in a form that torch.load(weights_only=True) accepts (no numpy arrays).

def _get_rng_state(device):
    np_state = np.random.get_state()
    state = dict(
        torch=torch.get_rng_state(),
        numpy=dict(kind=str(np_state[0]), keys=torch.from_numpy(np_state[1].astype(np.int64)),
            pos=int(np_state[2]), has_gauss=int(np_state[3]), cached_gaussian=float(np_state[4])),
    )
    if device.type == 'cuda':
        state['cuda'] = torch.cuda.get_rng_state(device)
    return state

def _set_rng_state(state, device):
    torch.set_rng_state(state['torch'])
    s = state['numpy']
    np.random.set_state((s['kind'], s['keys'].numpy().astype(np.uint32), s['pos'], s['has_gauss'], s['cached_gaussian']))
    if device.type == 'cuda' and 'cuda' in state:
        torch.cuda.set_rng_state(state['cuda'], device)

#----------------------------------------------------------------------------
# Learning rate factor: EDM's linear ramp-up; 0 kimg means the full rate from the first step.

def learning_rate_factor(cur_nimg, lr_rampup_kimg):
    if lr_rampup_kimg is None or lr_rampup_kimg <= 0:
        return 1.0
    return min(cur_nimg / max(lr_rampup_kimg * 1000, 1e-8), 1)

#----------------------------------------------------------------------------
# EMA decay per step: half-life in images, capped by the ramp-up ratio of the images seen.

def ema_beta(cur_nimg, batch_size, ema_halflife_kimg, ema_rampup_ratio):
    ema_halflife_nimg = ema_halflife_kimg * 1000
    if ema_rampup_ratio is not None:
        ema_halflife_nimg = min(ema_halflife_nimg, cur_nimg * ema_rampup_ratio)
    return 0.5 ** (batch_size / max(ema_halflife_nimg, 1e-8))

#----------------------------------------------------------------------------
# Sample a PNG grid with the EMA network; the global RNG is left untouched so that sampling
# does not change the training run.

def _save_grid(net, grid_seeds, device, path):
    from training.sampling import generate_images
    from training.images import save_image_grid
    devices = [device] if device.type == 'cuda' else []
    with torch.random.fork_rng(devices=devices):
        images = generate_images(net, grid_seeds, device)
    save_image_grid(images, path)

#----------------------------------------------------------------------------
# Checks of the options that fail only later (in a data worker, in the first forward pass),
# run before any worker starts. The CLIs call them too, before they make a run folder.

# The seed seeds numpy's RandomState (the data order), which takes 0 ... 2**32 - 1.
def check_seed(seed):
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
        raise ValueError(f'the seed must be an integer from 0 to {2**32 - 1}, got {seed!r}')

# The U-Nets halve the images at every level after the first and join the skips on the way
# back up: the side must be a power of two, with a pixel or more left at the coarsest level.
def check_network_resolution(network_kwargs, resolution):
    if resolution < 1 or resolution & (resolution - 1):
        raise ValueError(f'the images are {resolution}x{resolution}; the networks need a power of two (4, 8, 16, 32, ...)')
    levels = len(_network_argument(network_kwargs, 'channel_mult'))
    if resolution >> (levels - 1) < 1:
        raise ValueError(f'network_kwargs.channel_mult has {levels} levels, which halve the images {levels - 1} times; '
            f'{resolution}x{resolution} images allow at most {resolution.bit_length()}')

# An argument of the network: given, else the default of the class that takes it.
def _network_argument(network_kwargs, name):
    if name in network_kwargs:
        return network_kwargs[name]
    precond = dnnlib.util.get_obj_by_name(network_kwargs['class_name'])
    model_type = network_kwargs.get('model_type', _default_argument(precond, 'model_type'))
    return _default_argument(dnnlib.util.get_obj_by_name(f'training.networks.{model_type}'), name)

def _default_argument(cls, name):
    for klass in cls.__mro__: # persistent classes wrap __init__ in (*args, **kwargs)
        parameter = inspect.signature(klass.__init__).parameters.get(name) if '__init__' in vars(klass) else None
        if parameter is not None and parameter.default is not inspect.Parameter.empty:
            return parameter.default
    raise ValueError(f'{cls.__name__} has no default for {name}')

#----------------------------------------------------------------------------
# Process setup: per-rank random streams from the shared seed (ranks draw different noise; DDP
# makes the initial weights equal), and exact float32 arithmetic as in EDM.

def _seed_and_configure(seed, rank, world_size, cudnn_benchmark):
    np.random.seed((seed * world_size + rank) % (1 << 31))
    torch.manual_seed(np.random.randint(1 << 31))
    torch.backends.cudnn.benchmark = cudnn_benchmark
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False

# Micro-batch per process and the number of micro-batches accumulated per step.
def _accumulation_plan(batch_size, batch_gpu, world_size):
    share = batch_size // world_size
    micro = share if batch_gpu is None else min(batch_gpu, share)
    rounds = share // max(micro, 1)
    if micro < 1 or micro * rounds * world_size != batch_size:
        raise ValueError(f'batch size {batch_size} must be a multiple of {world_size} processes x per-GPU batch {micro}')
    return share, micro, rounds

# One forward pass of zeros through the network, printing its layer table (rank 0; the pass
# draws from the RNG when dropout is on, so it stays where EDM runs it).
def _print_network_summary(net, batch, device):
    side = net.img_resolution
    dummy = [torch.zeros([batch, net.img_channels, side, side], device=device), torch.ones([batch], device=device),
        torch.zeros([batch, net.label_dim], device=device)]
    with torch.no_grad():
        misc.print_module_summary(net, dummy, max_nesting=2)

#----------------------------------------------------------------------------
# Weights from a snapshot (transfer or resume): its EMA network into both net and EMA, by name.
# The caller's reader runs on every rank (the CLIs' reads on rank 0 first, for the download cache).

def _load_snapshot_weights(path, load_snapshot, targets):
    dist.print0(f'Loading network weights from "{path}"...')
    source = load_snapshot(path)['ema']
    for target in targets:
        misc.copy_params_and_buffers(src_module=source, dst_module=target, require_all=False)

# A training state on top: the trained net, Adam, and (ours) the EMA and every rank's RNG.
def _restore_training_state(state, net, optimizer, ema, rank, world_size, device):
    saved_net = state['net']
    if isinstance(saved_net, torch.nn.Module):
        misc.copy_params_and_buffers(src_module=saved_net, dst_module=net, require_all=True)
    else:
        net.load_state_dict(saved_net, strict=True)
    optimizer.load_state_dict(state['optimizer_state'])
    if 'ema_state' in state:
        ema.load_state_dict(state['ema_state'], strict=True)
    rng_states = state.get('rng_states')
    if rng_states is None:
        return
    if len(rng_states) != world_size:
        dist.print0(f'Warning: the training state was written by {len(rng_states)} processes, not {world_size}; '
            'the random streams and data order are not resumed exactly.')
        return
    _set_rng_state(rng_states[rank], device)

#----------------------------------------------------------------------------
# One optimizer step's gradients: the micro-batches in turn, DDP's all-reduce on the last only.
# The summed loss is weighted by loss_scaling / (images per process), as EDM does.

# The loss calls the denoiser: ddp itself, or its fast form (training/fast_paths.py).
def _accumulate_gradients(ddp, denoiser, loss_fn, batches, rounds, device, augment_pipe, loss_weight):
    for index in range(rounds):
        with misc.ddp_sync(ddp, index == rounds - 1):
            images, labels = next(batches)
            # non_blocking: from pinned memory the copy need not wait for the device.
            images = images.to(device, non_blocking=True).to(torch.float32) / 127.5 - 1  # uint8 -> [-1, 1]
            per_element = loss_fn(net=denoiser, images=images, labels=labels.to(device, non_blocking=True), augment_pipe=augment_pipe)
            training_stats.report('Loss/loss', per_element)
            per_element.sum().mul(loss_weight).backward()

# Adam at the given rate, after replacing non-finite gradient entries (EDM leaves them unscaled).
# Multi-tensor calls with EDM's per-parameter bits (training/multi_tensor.py), and no reads
# from the device: the step never waits for it.
def _apply_gradients(optimizer, clean_gradients, lr):
    for group in optimizer.param_groups:
        group['lr'] = lr
    clean_gradients()
    multi_tensor.adam_step(optimizer)

# EMA of the parameters only, as EDM; the buffers come from the initial copy.
def _update_ema(ema, net, beta):
    multi_tensor.update_ema(ema.parameters(), net.parameters(), beta)

#----------------------------------------------------------------------------
# The status line of a tick: label, statistic it is reported as, format of the value, and an
# optional conversion to text before formatting.

_STATUS_FIELDS = [
    ('tick',        'Progress/tick',                      '<5d',   None),
    ('kimg',        'Progress/kimg',                      '<9.1f', None),
    ('time',        'Timing/total_sec',                   '<12s',  dnnlib.util.format_time),
    ('sec/tick',    'Timing/sec_per_tick',                '<7.1f', None),
    ('sec/kimg',    'Timing/sec_per_kimg',                '<7.2f', None),
    ('maintenance', 'Timing/maintenance_sec',             '<6.1f', None),
    ('cpumem',      'Resources/cpu_mem_gb',               '<6.2f', None),
    ('stepmem',     'Resources/peak_step_mem_gb',         '<6.2f', None),
    ('gpumem',      'Resources/peak_gpu_mem_gb',          '<6.2f', None),
    ('reserved',    'Resources/peak_gpu_mem_reserved_gb', '<6.2f', None),
]

def _status_line(values):
    parts = []
    for label, stat, spec, to_text in _STATUS_FIELDS:
        value = training_stats.report0(stat, values[stat])
        parts.append(f'{label} {format(to_text(value) if to_text else value, spec)}')
    return ' '.join(parts)

#----------------------------------------------------------------------------
# Network snapshot in EDM's pickle format (training/snapshots.py): frozen CPU copies of the
# modules (checked equal on all ranks), written by rank 0, with a sample grid when asked.
# Returns the path on rank 0.

def _write_snapshot(run_dir, cur_nimg, network, loss_fn, augment_pipe, dataset_kwargs, rank, world_size, grid_seeds, device):
    loss_copy = copy.deepcopy(loss_fn)
    if hasattr(loss_copy, 'cur_kimg'):
        loss_copy.cur_kimg = 0.0 # progress lives in the training state; keep the pickle a clean constructor state
    contents = snapshots.snapshot_contents(network, loss_copy, augment_pipe, dataset_kwargs, check_ddp=(world_size > 1))
    if rank != 0:
        return None
    path = _unused_name(run_dir, 'network-snapshot', cur_nimg, '.pkl')
    snapshots.write_snapshot(path, contents)
    if grid_seeds is not None and len(grid_seeds) > 0:
        _save_grid(contents['ema'].to(device), grid_seeds, device, path[:-len('.pkl')] + '-grid.png')
    return path

# Training state: EDM's net + optimizer, plus what an exact resume needs (all ranks' RNG).
def _write_training_state(run_dir, cur_nimg, net, optimizer, ema, progress, batch_size, rank, world_size, device, snapshot_path=None):
    rng_states = [_get_rng_state(device)]
    if world_size > 1:
        gathered = [None] * world_size
        torch.distributed.all_gather_object(gathered, rng_states[0])
        rng_states = gathered
    if rank == 0:
        state = dict(net=net, optimizer_state=optimizer.state_dict(), ema_state=ema.state_dict(), cur_nimg=progress['cur_nimg'],
            data_nimg=progress['data_nimg'], rng_states=rng_states, world_size=world_size, batch_size=batch_size)
        # The state of a step that also wrote a snapshot takes the snapshot's tag (resume pairs them by name).
        path = _unused_name(run_dir, 'training-state', cur_nimg, '.pt') if snapshot_path is None else \
            os.path.join(run_dir, 'training-state-' + os.path.basename(snapshot_path)[len('network-snapshot-'):-len('.pkl')] + '.pt')
        snapshots.atomic_write(path, lambda f: torch.save(state, f))

# A file name of EDM's, by whole kimg; when that name is taken (a stop or a short tick in the
# same kimg, an earlier run in the same folder), the exact image count, so that no file ever
# replaces another: network-snapshot-000002.pkl, then network-snapshot-000002.600.pkl.
# A tag is free when neither a snapshot nor a state has it.
def _unused_name(run_dir, prefix, cur_nimg, suffix):
    kimg = f'{cur_nimg // 1000:06d}'
    exact = f'{kimg}.{cur_nimg % 1000:03d}'
    for tag in itertools.chain([kimg, exact], (f'{exact}-{n}' for n in itertools.count(1))):
        taken = [os.path.join(run_dir, f'{kind}-{tag}{ext}') for kind, ext in (('network-snapshot', '.pkl'), ('training-state', '.pt'))]
        if not any(os.path.exists(other) for other in taken):
            return os.path.join(run_dir, f'{prefix}-{tag}{suffix}')

# Whether a tick writes a file that is due every `every` ticks (None = never) and at the end.
def _due(tick, every, done):
    return every is not None and (done or tick % every == 0)

#----------------------------------------------------------------------------
# Main training loop. One optimizer step per iteration; a tick (status line, snapshots,
# statistics) after the first step, then every kimg_per_tick thousand images, and at the end.

def training_loop(
    # What to train on and what to train.
    run_dir             = '.',      # Run directory (written by rank 0 only).
    dataset_kwargs      = {},       # Dataset class_name and arguments.
    data_loader_kwargs  = {},       # Extra torch.utils.data.DataLoader arguments.
    network_kwargs      = {},       # Preconditioner class_name and network arguments.
    augment_kwargs      = None,     # AugmentPipe class_name and arguments; None = no augmentation.
    loss_kwargs         = {},       # Loss class_name and arguments (incl. spectral_kwargs).
    # How: batches, optimizer, schedules.
    batch_size          = 512,      # Images per optimizer step, summed over all processes.
    batch_gpu           = None,     # Micro-batch per process (gradient accumulation); None = whole share.
    optimizer_kwargs    = {},       # Optimizer class_name and arguments; 'lr' is the peak rate.
    lr_rampup_kimg      = 10000,    # Linear LR warm-up in kimg; 0 = full rate from the first step.
    loss_scaling        = 1,        # Static factor on the loss before backward (fp16 range).
    ema_halflife_kimg   = 500,      # EMA half-life in thousands of images.
    ema_rampup_ratio    = 0.05,     # Cap the half-life at this fraction of the images seen; None = no cap.
    total_kimg          = 200000,   # Stop after this many thousand images (float allowed).
    seed                = 0,        # Seed shared by all ranks (each rank derives its own streams).
    # Output cadence.
    kimg_per_tick       = 50,       # Status line and maintenance every this many kimg.
    snapshot_ticks      = 50,       # Network snapshot every this many ticks; None = never.
    state_dump_ticks    = 500,      # Training state every this many ticks; None = never.
    grid_seeds          = None,     # Seeds of a sample grid written with every snapshot, None = no grid.
    export_net          = 'ema',    # What the snapshots store under 'ema': 'ema' or 'raw' (the trained net).
    snapshot_callback_kwargs = None, # class_name and arguments of a callable run on every rank after each snapshot,
                                    # f(snapshot_pkl=path on rank 0 else None, net=frozen copy, cur_nimg=..., device=...).
    # Starting point.
    resume_pkl          = None,     # Snapshot whose 'ema' initializes net and EMA; None = random init.
    resume_state_dump   = None,     # training-state-*.pt to continue from; None = fresh optimizer.
    resume_kimg         = 0,        # Progress to start from when the state does not record cur_nimg.
    load_snapshot       = None,     # Reader of resume_pkl: f(path) -> snapshot dict (the CLIs pass the safe loader,
                                    # edm_spectral.checkpoints.load_snapshot, reading on rank 0 first).
    load_training_state = None,     # Reader of resume_state_dump: f(path) -> training-state dict.
    # Execution.
    device              = None,     # Device, None = cuda if available, else cpu.
    cudnn_benchmark     = True,     # torch.backends.cudnn.benchmark.
    stop_on_signal      = True,     # Stop cleanly on SIGINT/SIGTERM, writing a final snapshot and state.
    fast_paths          = None,     # Opt-in fast paths, which change the numerics (training/fast_paths.py); None = exact.
):
    global _stop_requested
    if export_net not in ('ema', 'raw'):
        raise ValueError(f'export_net must be "ema" or "raw", got {export_net!r}')
    if resume_pkl is not None and load_snapshot is None:
        raise ValueError('resume_pkl needs load_snapshot, a function reading a snapshot file into a dict')
    if resume_state_dump and load_training_state is None:
        raise ValueError('resume_state_dump needs load_training_state, a function reading a training state file into a dict')
    check_seed(seed)
    total_nimg = round(total_kimg * 1000) # whole images: 0.029 kimg is 29 images, not 29.000000000000004

    start_time = time.time()
    device = dist.init(device) # idempotent; resolves None/'cuda' to this process' device
    fast = speedups.check_fast_paths(fast_paths, device)
    rank, world_size = dist.get_rank(), dist.get_world_size()
    _seed_and_configure(seed, rank, world_size, cudnn_benchmark)
    if rank == 0 and run_dir is not None:
        os.makedirs(run_dir, exist_ok=True)
    batch_per_process, batch_gpu, rounds = _accumulation_plan(batch_size, batch_gpu, world_size)

    # The training state is read first: its data position decides where the sampler starts.
    state = None
    if resume_state_dump:
        dist.print0(f'Loading training state from "{resume_state_dump}"...')
        state = load_training_state(resume_state_dump)
    saved = state if state is not None else {}
    progress = dict(cur_nimg=int(saved['cur_nimg']) if 'cur_nimg' in saved else int(resume_kimg * 1000),
        data_nimg=int(saved.get('data_nimg', 0))) # images trained on, images drawn from the data stream
    if state is not None and progress['cur_nimg'] >= total_nimg:
        raise ValueError(f'the training state has trained {progress["cur_nimg"]} images, the run asks for {total_nimg} '
            f'in all (total_kimg={total_kimg:g}): nothing is left to train')

    # Endless shuffled data, from where the saved run left it. The order of everything from
    # here to the EMA copy fixes the random draws (loader seed, initial weights, summary pass).
    dist.print0('Loading dataset...')
    dataset = dnnlib.util.construct_class_by_name(**dataset_kwargs)
    check_network_resolution(network_kwargs, dataset.resolution)
    sampler = misc.InfiniteSampler(dataset=dataset, rank=rank, num_replicas=world_size, seed=seed, start_idx=progress['data_nimg'])
    loader_options = dict(data_loader_kwargs)
    if stop_on_signal and loader_options.get('num_workers', 0) > 0:
        loader_options.setdefault('worker_init_fn', _ignore_stop_signals_in_worker)
    batches = iter(torch.utils.data.DataLoader(dataset=dataset, sampler=sampler, batch_size=batch_gpu, **loader_options))
    with contextlib.ExitStack() as cleanup:
        # Whatever fails from here on, the data workers stop at once: left to the garbage
        # collector, or to the exit (which waits for them, and they ignore SIGTERM), they
        # hang the process.
        cleanup.callback(_stop_workers, batches)

        dist.print0('Constructing network...')
        net = dnnlib.util.construct_class_by_name(**network_kwargs, img_resolution=dataset.resolution,
            img_channels=dataset.num_channels, label_dim=dataset.label_dim)
        net.train().requires_grad_(True).to(device)
        if rank == 0:
            _print_network_summary(net, batch_gpu, device)
        speedups.prepare_network(net, fast)

        dist.print0('Setting up optimizer...')
        loss_fn = dnnlib.util.construct_class_by_name(**loss_kwargs)
        optimizer = dnnlib.util.construct_class_by_name(params=net.parameters(), **speedups.optimizer_kwargs(optimizer_kwargs, fast))
        clean_gradients = multi_tensor.GradientCleaner(net.parameters())
        augment_pipe = None if augment_kwargs is None else dnnlib.util.construct_class_by_name(**augment_kwargs)
        ddp = net
        if world_size > 1:
            ddp = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device] if device.type == 'cuda' else None)
        denoiser = speedups.denoiser(ddp, fast, device)
        ema = speedups.exact_copy(net).eval().requires_grad_(False)

        if resume_pkl is not None:
            _load_snapshot_weights(resume_pkl, load_snapshot, [net, ema])
        if state is not None:
            _restore_training_state(state, net, optimizer, ema, rank, world_size, device)
            speedups.settle_adam(optimizer, fast)
            del state, saved

        snapshot_callback = None if snapshot_callback_kwargs is None else dnnlib.util.construct_class_by_name(**snapshot_callback_kwargs)
        dist.print0(f'Training for {total_kimg} kimg...')
        dist.print0()
        tick = dnnlib.EasyDict(index=0, start_nimg=progress['cur_nimg'], start_time=time.time())
        tick.maintenance = tick.start_time - start_time
        peaks = memory.TickPeaks(device)
        dist.update_progress(progress['cur_nimg'] // 1000, total_kimg)
        last_snapshot = None
        stopped = False
        synchronize_stops = world_size > 1 and stop_on_signal # every rank must stop after the same step
        _stop_requested = False

        cleanup.callback(_restore_handlers, _install_stop_handlers() if stop_on_signal else {})
        stats_file = None
        steps = 0
        done = False
        while not done:
            optimizer.zero_grad(set_to_none=True)
            loss_fn.cur_kimg = progress['cur_nimg'] / 1000 # read by the spectral warm-up
            _accumulate_gradients(ddp, denoiser, loss_fn, batches, rounds, device, augment_pipe, loss_scaling / batch_per_process)
            _apply_gradients(optimizer, clean_gradients, optimizer_kwargs['lr'] * learning_rate_factor(progress['cur_nimg'], lr_rampup_kimg))
            _update_ema(ema, net, ema_beta(progress['cur_nimg'], batch_size, ema_halflife_kimg, ema_rampup_ratio))
            progress['cur_nimg'] += batch_size
            progress['data_nimg'] += batch_size
            steps += 1

            # Does this step end a tick, or the run (done, or stopped on request)?
            cur_nimg = progress['cur_nimg']
            done = cur_nimg >= total_nimg
            tick_ends = done or tick.index == 0 or cur_nimg >= tick.start_nimg + kimg_per_tick * 1000
            if not done and _stop_agreed(device, tick_ends or steps % _STOP_POLL_STEPS == 0, synchronize_stops):
                stopped = done = tick_ends = True
                dist.print0()
                dist.print0('Stopping early on request...')
            if not tick_ends:
                continue

            # Status line.
            tick_end_time = time.time()
            tick_seconds = tick_end_time - tick.start_time
            stepmem, gpumem, reserved = peaks.steps_done()   # the steps' peak; EDM's, with the last maintenance
            dist.print0(_status_line({
                'Progress/tick': tick.index, 'Progress/kimg': cur_nimg / 1e3,
                'Timing/total_sec': tick_end_time - start_time, 'Timing/sec_per_tick': tick_seconds,
                'Timing/sec_per_kimg': tick_seconds / max(cur_nimg - tick.start_nimg, 1) * 1e3,
                'Timing/maintenance_sec': tick.maintenance, 'Resources/cpu_mem_gb': memory.rss_gb(),
                'Resources/peak_step_mem_gb': stepmem,
                'Resources/peak_gpu_mem_gb': gpumem, 'Resources/peak_gpu_mem_reserved_gb': reserved,
            }))

            # Snapshot and training state (EDM: a snapshot at tick 0 too, a state never there).
            kimg = cur_nimg // 1000
            written = None
            if _due(tick.index, snapshot_ticks, done):
                exported = speedups.exact_copy(net) if export_net == 'raw' else ema
                written = _write_snapshot(run_dir, cur_nimg, exported, loss_fn, augment_pipe, dataset_kwargs, rank, world_size, grid_seeds, device)
                last_snapshot = written or last_snapshot
                if snapshot_callback is not None:
                    snapshot_callback(snapshot_pkl=written, net=copy.deepcopy(exported).eval().requires_grad_(False), cur_nimg=cur_nimg, device=device)
            if tick.index != 0 and _due(tick.index, state_dump_ticks, done):
                _write_training_state(run_dir, cur_nimg, net, optimizer, ema, progress, batch_size, rank, world_size, device, snapshot_path=written)

            # One line of statistics per tick (rank 0), then the next tick.
            training_stats.default_collector.update()
            if rank == 0:
                if stats_file is None:
                    stats_file = cleanup.enter_context(open(os.path.join(run_dir, 'stats.jsonl'), 'at'))
                stats_file.write(json.dumps(dict(training_stats.default_collector.as_dict(), timestamp=time.time())) + '\n')
                stats_file.flush()
            dist.update_progress(kimg, total_kimg)
            tick.update(index=tick.index + 1, start_nimg=cur_nimg, start_time=time.time())
            tick.maintenance = tick.start_time - tick_end_time
            peaks.maintenance_done() # the next tick's steps, without this maintenance

    dist.barrier() # no rank leaves while another still writes or syncs
    dist.print0()
    dist.print0('Exiting...')
    return dnnlib.EasyDict(run_dir=run_dir, cur_nimg=progress['cur_nimg'], last_snapshot=last_snapshot, stopped_early=stopped)

#----------------------------------------------------------------------------
