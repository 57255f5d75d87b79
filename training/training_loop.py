"""Main training loop: the EDM mechanics, plus exact resume, CPU support, graceful stop and
sample grids."""

import os
import copy
import json
import time
import pickle
import signal
import numpy as np
import torch
import dnnlib
from torch_utils import distributed as dist
from torch_utils import training_stats
from torch_utils import misc

#----------------------------------------------------------------------------
# Stop requests from SIGINT/SIGTERM: the first one asks for a clean stop at the end of the
# current step, a second SIGINT interrupts at once.

_stop_requested = False

def _request_stop(signum, frame):
    global _stop_requested
    if _stop_requested and signum == signal.SIGINT:
        raise KeyboardInterrupt
    _stop_requested = True
    print(f'\nReceived signal {signum}: stopping after this step, writing a final snapshot and training state...', flush=True)

def _install_stop_handlers():
    old = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            old[sig] = signal.signal(sig, _request_stop)
        except ValueError: # Not the main thread: rely on the default behaviour.
            pass
    return old

def _restore_handlers(old):
    for sig, handler in old.items():
        signal.signal(sig, handler)

# DataLoader workers get the same signals (Ctrl-C reaches the whole process group, torchrun
# signals the group too): they must not die while the main process finishes its last step.
# They still exit with the main process (torch's parent watchdog).
def _ignore_stop_signals_in_worker(worker_id):
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

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
# Atomic writes: a stop or crash while saving never leaves a truncated file behind.

def _atomic_write(path, write_fn):
    tmp = path + '.tmp'
    with open(tmp, 'wb') as f:
        write_fn(f)
    os.replace(tmp, path)

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
    from edm_spectral.images import save_image_grid
    devices = [device] if device.type == 'cuda' else []
    with torch.random.fork_rng(devices=devices):
        images = generate_images(net, grid_seeds, device)
    save_image_grid(images, path)

#----------------------------------------------------------------------------
# Main training loop.

def training_loop(
    run_dir             = '.',      # Run directory (written by rank 0 only).
    dataset_kwargs      = {},       # Dataset class_name and arguments.
    data_loader_kwargs  = {},       # Extra torch.utils.data.DataLoader arguments.
    network_kwargs      = {},       # Preconditioner class_name and network arguments.
    loss_kwargs         = {},       # Loss class_name and arguments (incl. spectral_kwargs).
    optimizer_kwargs    = {},       # Optimizer class_name and arguments; 'lr' is the peak rate.
    augment_kwargs      = None,     # AugmentPipe class_name and arguments; None = no augmentation.
    seed                = 0,        # Seed shared by all ranks (each rank derives its own streams).
    batch_size          = 512,      # Images per optimizer step, summed over all processes.
    batch_gpu           = None,     # Micro-batch per process (gradient accumulation); None = whole share.
    total_kimg          = 200000,   # Stop after this many thousand images (float allowed).
    ema_halflife_kimg   = 500,      # EMA half-life in thousands of images.
    ema_rampup_ratio    = 0.05,     # Cap the half-life at this fraction of the images seen; None = no cap.
    lr_rampup_kimg      = 10000,    # Linear LR warm-up in kimg; 0 = full rate from the first step.
    loss_scaling        = 1,        # Static factor on the loss before backward (fp16 range).
    kimg_per_tick       = 50,       # Status line and maintenance every this many kimg.
    snapshot_ticks      = 50,       # Network snapshot every this many ticks; None = never.
    state_dump_ticks    = 500,      # Training state every this many ticks; None = never.
    resume_pkl          = None,     # Snapshot whose 'ema' initializes net and EMA; None = random init.
    resume_state_dump   = None,     # training-state-*.pt to continue from; None = fresh optimizer.
    resume_kimg         = 0,        # Progress to start from when the state does not record cur_nimg.
    cudnn_benchmark     = True,     # torch.backends.cudnn.benchmark.
    device              = None,     # Device, None = cuda if available, else cpu.
    grid_seeds          = None,     # Seeds of a sample grid written with every snapshot, None = no grid.
    export_net          = 'ema',    # What the snapshots store under 'ema': 'ema' or 'raw' (the trained net).
    trust_code          = False,    # Allow resume_pkl/resume_state_dump to execute code embedded in pickles?
    stop_on_signal      = True,     # Stop cleanly on SIGINT/SIGTERM, writing a final snapshot and state.
):
    global _stop_requested
    if export_net not in ('ema', 'raw'):
        raise ValueError(f'export_net must be "ema" or "raw", got {export_net!r}')

    # Devices, per-rank seeds and precision flags.
    start_time = time.time()
    device = dist.init(device) # idempotent; resolves None/'cuda' to this process' device
    rank, world_size = dist.get_rank(), dist.get_world_size()
    np.random.seed((seed * world_size + rank) % (1 << 31))
    torch.manual_seed(np.random.randint(1 << 31))
    torch.backends.cudnn.benchmark = cudnn_benchmark
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False

    if rank == 0 and run_dir is not None:
        os.makedirs(run_dir, exist_ok=True)

    # Per-process micro-batch and number of accumulation rounds.
    batch_gpu_total = batch_size // world_size
    if batch_gpu is None or batch_gpu > batch_gpu_total:
        batch_gpu = batch_gpu_total
    num_accumulation_rounds = batch_gpu_total // max(batch_gpu, 1)
    if batch_gpu < 1 or batch_size != batch_gpu * num_accumulation_rounds * world_size:
        raise ValueError(f'batch size {batch_size} must be a multiple of {world_size} processes x per-GPU batch {batch_gpu}')

    # Read the training state first: its data position decides where the sampler starts.
    state = None
    if resume_state_dump:
        dist.print0(f'Loading training state from "{resume_state_dump}"...')
        from edm_spectral.checkpoints import load_training_state
        state = load_training_state(resume_state_dump, trust_code=trust_code)
    cur_nimg = int(state['cur_nimg']) if state is not None and 'cur_nimg' in state else int(resume_kimg * 1000)
    data_nimg = int(state['data_nimg']) if state is not None and 'data_nimg' in state else 0

    # Data: an endless shuffled stream, started where the saved run left it.
    dist.print0('Loading dataset...')
    dataset_obj = dnnlib.util.construct_class_by_name(**dataset_kwargs)
    dataset_sampler = misc.InfiniteSampler(dataset=dataset_obj, rank=rank, num_replicas=world_size, seed=seed, start_idx=data_nimg)
    loader_kwargs = dict(data_loader_kwargs)
    if stop_on_signal and loader_kwargs.get('num_workers', 0) > 0:
        loader_kwargs.setdefault('worker_init_fn', _ignore_stop_signals_in_worker)
    dataset_iterator = iter(torch.utils.data.DataLoader(dataset=dataset_obj, sampler=dataset_sampler, batch_size=batch_gpu, **loader_kwargs))

    # Network, with a summary printed by rank 0.
    dist.print0('Constructing network...')
    interface_kwargs = dict(img_resolution=dataset_obj.resolution, img_channels=dataset_obj.num_channels, label_dim=dataset_obj.label_dim)
    net = dnnlib.util.construct_class_by_name(**network_kwargs, **interface_kwargs)
    net.train().requires_grad_(True).to(device)
    if rank == 0:
        with torch.no_grad():
            images = torch.zeros([batch_gpu, net.img_channels, net.img_resolution, net.img_resolution], device=device)
            sigma = torch.ones([batch_gpu], device=device)
            labels = torch.zeros([batch_gpu, net.label_dim], device=device)
            misc.print_module_summary(net, [images, sigma, labels], max_nesting=2)

    # Loss, optimizer, augmentation, DDP wrapper and EMA copy.
    dist.print0('Setting up optimizer...')
    loss_fn = dnnlib.util.construct_class_by_name(**loss_kwargs)
    optimizer = dnnlib.util.construct_class_by_name(params=net.parameters(), **optimizer_kwargs)
    augment_pipe = dnnlib.util.construct_class_by_name(**augment_kwargs) if augment_kwargs is not None else None
    if world_size > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device] if device.type == 'cuda' else None)
    else:
        ddp = net
    ema = copy.deepcopy(net).eval().requires_grad_(False)

    # Initial weights from a snapshot, then the saved training state on top.
    if resume_pkl is not None:
        dist.print0(f'Loading network weights from "{resume_pkl}"...')
        from edm_spectral.checkpoints import load_snapshot
        if rank != 0:
            dist.barrier() # rank 0 goes first (downloads)
        data = load_snapshot(resume_pkl, trust_code=trust_code)
        if rank == 0:
            dist.barrier()
        misc.copy_params_and_buffers(src_module=data['ema'], dst_module=net, require_all=False)
        misc.copy_params_and_buffers(src_module=data['ema'], dst_module=ema, require_all=False)
        del data
    if state is not None:
        src = state['net']
        if isinstance(src, torch.nn.Module):
            misc.copy_params_and_buffers(src_module=src, dst_module=net, require_all=True)
        else:
            net.load_state_dict(src, strict=True)
        optimizer.load_state_dict(state['optimizer_state'])
        if 'ema_state' in state:
            ema.load_state_dict(state['ema_state'], strict=True)
        rng_states = state.get('rng_states', None)
        if rng_states is not None and len(rng_states) == world_size:
            _set_rng_state(rng_states[rank], device)
        elif rng_states is not None:
            dist.print0(f'Warning: the training state was written by {len(rng_states)} processes, not {world_size}; '
                'the random streams and data order are not resumed exactly.')
        del state, src

    # Main loop: one optimizer step per iteration, maintenance once per tick.
    dist.print0(f'Training for {total_kimg} kimg...')
    dist.print0()
    tick_start_nimg = cur_nimg
    tick_start_time = time.time()
    maintenance_time = tick_start_time - start_time
    dist.update_progress(cur_nimg // 1000, total_kimg)
    stats_jsonl = None
    cur_tick = 0
    last_snapshot = None
    _stop_requested = False
    old_handlers = _install_stop_handlers() if stop_on_signal else {}
    try:
        while True:

            # Forward and backward over the micro-batches; DDP syncs on the last one only.
            optimizer.zero_grad(set_to_none=True)
            loss_fn.cur_kimg = cur_nimg / 1000 # read by the spectral warm-up
            for round_idx in range(num_accumulation_rounds):
                with misc.ddp_sync(ddp, (round_idx == num_accumulation_rounds - 1)):
                    images, labels = next(dataset_iterator)
                    images = images.to(device).to(torch.float32) / 127.5 - 1
                    labels = labels.to(device)
                    loss = loss_fn(net=ddp, images=images, labels=labels, augment_pipe=augment_pipe)
                    training_stats.report('Loss/loss', loss)
                    loss.sum().mul(loss_scaling / batch_gpu_total).backward()

            # Optimizer step at the ramped learning rate, with non-finite gradients clamped.
            lr_factor = learning_rate_factor(cur_nimg, lr_rampup_kimg)
            for g in optimizer.param_groups:
                g['lr'] = optimizer_kwargs['lr'] * lr_factor
            for param in net.parameters():
                if param.grad is not None:
                    torch.nan_to_num(param.grad, nan=0, posinf=1e5, neginf=-1e5, out=param.grad)
            optimizer.step()

            # Update EMA (parameters only, as EDM; buffers come from the initial copy).
            beta = ema_beta(cur_nimg, batch_size, ema_halflife_kimg, ema_rampup_ratio)
            with torch.no_grad():
                for p_ema, p_net in zip(ema.parameters(), net.parameters()):
                    p_ema.copy_(p_net.detach().lerp(p_ema, beta))

            # Progress, stop requests, and whether this step ends a tick.
            cur_nimg += batch_size
            data_nimg += batch_size
            done = (cur_nimg >= total_kimg * 1000)
            stop = _stop_requested or dist.should_stop()
            if world_size > 1 and stop_on_signal: # every rank must stop after the same step
                flag = torch.tensor([float(stop)], device=device)
                torch.distributed.all_reduce(flag)
                stop = bool(flag.item() > 0)
            if stop and not done:
                done = True
                dist.print0()
                dist.print0('Stopping early on request...')
            if (not done) and (cur_tick != 0) and (cur_nimg < tick_start_nimg + kimg_per_tick * 1000):
                continue

            # Status line; every field is also reported to training_stats.
            tick_end_time = time.time()
            fields = []
            fields += [f"tick {training_stats.report0('Progress/tick', cur_tick):<5d}"]
            fields += [f"kimg {training_stats.report0('Progress/kimg', cur_nimg / 1e3):<9.1f}"]
            fields += [f"time {dnnlib.util.format_time(training_stats.report0('Timing/total_sec', tick_end_time - start_time)):<12s}"]
            fields += [f"sec/tick {training_stats.report0('Timing/sec_per_tick', tick_end_time - tick_start_time):<7.1f}"]
            fields += [f"sec/kimg {training_stats.report0('Timing/sec_per_kimg', (tick_end_time - tick_start_time) / max(cur_nimg - tick_start_nimg, 1) * 1e3):<7.2f}"]
            fields += [f"maintenance {training_stats.report0('Timing/maintenance_sec', maintenance_time):<6.1f}"]
            fields += [f"cpumem {training_stats.report0('Resources/cpu_mem_gb', _cpu_mem_gb()):<6.2f}"]
            gpumem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == 'cuda' else 0
            reserved = torch.cuda.max_memory_reserved(device) / 2**30 if device.type == 'cuda' else 0
            fields += [f"gpumem {training_stats.report0('Resources/peak_gpu_mem_gb', gpumem):<6.2f}"]
            fields += [f"reserved {training_stats.report0('Resources/peak_gpu_mem_reserved_gb', reserved):<6.2f}"]
            if device.type == 'cuda':
                torch.cuda.reset_peak_memory_stats(device)
            dist.print0(' '.join(fields))

            # Network snapshot in the EDM pickle format (rank 0 writes it).
            if (snapshot_ticks is not None) and (done or cur_tick % snapshot_ticks == 0):
                src = net if export_net == 'raw' else ema
                snapshot_loss = copy.deepcopy(loss_fn)
                if hasattr(snapshot_loss, 'cur_kimg'):
                    snapshot_loss.cur_kimg = 0.0 # progress lives in the training state; keep the pickle a clean constructor state
                data = dict(ema=src, loss_fn=snapshot_loss, augment_pipe=augment_pipe, dataset_kwargs=dict(dataset_kwargs))
                for key, value in data.items():
                    if isinstance(value, torch.nn.Module):
                        value = copy.deepcopy(value).eval().requires_grad_(False)
                        if world_size > 1:
                            misc.check_ddp_consistency(value)
                        data[key] = value.cpu()
                if rank == 0:
                    last_snapshot = os.path.join(run_dir, f'network-snapshot-{cur_nimg//1000:06d}.pkl')
                    _atomic_write(last_snapshot, lambda f: pickle.dump(data, f, protocol=4))
                    if grid_seeds is not None and len(grid_seeds) > 0:
                        _save_grid(data['ema'].to(device), grid_seeds, device, last_snapshot[:-len('.pkl')] + '-grid.png')
                del data

            # Training state: EDM's net + optimizer, plus what an exact resume needs.
            if (state_dump_ticks is not None) and (done or cur_tick % state_dump_ticks == 0) and cur_tick != 0:
                rng_state = _get_rng_state(device)
                if world_size > 1:
                    rng_states = [None] * world_size
                    torch.distributed.all_gather_object(rng_states, rng_state)
                else:
                    rng_states = [rng_state]
                if rank == 0:
                    dump = dict(net=net, optimizer_state=optimizer.state_dict(), ema_state=ema.state_dict(),
                        cur_nimg=cur_nimg, data_nimg=data_nimg, rng_states=rng_states, world_size=world_size, batch_size=batch_size)
                    _atomic_write(os.path.join(run_dir, f'training-state-{cur_nimg//1000:06d}.pt'), lambda f: torch.save(dump, f))
                    del dump

            # One line of statistics per tick.
            training_stats.default_collector.update()
            if rank == 0:
                if stats_jsonl is None:
                    stats_jsonl = open(os.path.join(run_dir, 'stats.jsonl'), 'at')
                stats_jsonl.write(json.dumps(dict(training_stats.default_collector.as_dict(), timestamp=time.time())) + '\n')
                stats_jsonl.flush()
            dist.update_progress(cur_nimg // 1000, total_kimg)

            # Next tick.
            cur_tick += 1
            tick_start_nimg = cur_nimg
            tick_start_time = time.time()
            maintenance_time = tick_start_time - tick_end_time
            if done:
                break
    finally:
        _restore_handlers(old_handlers)
        if stats_jsonl is not None:
            stats_jsonl.close()

    dist.barrier() # no rank leaves while another still writes or syncs
    dist.print0()
    dist.print0('Exiting...')
    return dnnlib.EasyDict(run_dir=run_dir, cur_nimg=cur_nimg, last_snapshot=last_snapshot, stopped_early=bool(_stop_requested))

#----------------------------------------------------------------------------
# Resident memory of this process in GiB.

def _cpu_mem_gb():
    import psutil
    return psutil.Process(os.getpid()).memory_info().rss / 2**30

#----------------------------------------------------------------------------
