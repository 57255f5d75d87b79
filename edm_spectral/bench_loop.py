"""Bench of the training loop's own work (python -m edm_spectral.bench --loop), for one network
and batch in one process, each comparison timed alternately so that load drifts hit both sides:

- EDM's per-parameter loop (nan_to_num, Adam and the EMA lerp per tensor) against ours
  (training/multi_tensor.py): ms per training step, and operator calls per step outside
  forward and backward, counted with torch.profiler (calls made from Python, which do not
  depend on the device);
- the opt-in fast paths (training/fast_paths.py) against the exact path: ms per step;
- sampling (training.sampling.generate_images, generate.py's sampler) under the fast forms of
  the network against the exact one: images per second;
- peak memory per step of each (CUDA max-allocated, or the process' peak RSS on the CPU)."""

import statistics

import torch

from edm_spectral import bench as spectral_bench
from torch_utils import memory
from training import fast_paths
from training import multi_tensor
from training import training_loop
from training.loss import EDMLoss
from training.networks import EDMPrecond

#----------------------------------------------------------------------------
# EDM's per-parameter work after backward: the learning rate, nan_to_num of each gradient,
# Adam (constructed with foreach=False, the per-parameter implementation on every device),
# and the EMA lerp of each parameter. The reference of the lean step's bits.

def per_parameter_update(optimizer, net, ema, lr, beta):
    for group in optimizer.param_groups:
        group['lr'] = lr
    for param in net.parameters():
        if param.grad is not None:
            torch.nan_to_num(param.grad, nan=0, posinf=1e5, neginf=-1e5, out=param.grad)
    optimizer.step()
    with torch.no_grad():
        for averaged, current in zip(ema.parameters(), net.parameters()):
            averaged.copy_(current.detach().lerp(averaged, beta))

# Ours: the training loop's own helpers.
def lean_update(optimizer, clean_gradients, net, ema, lr, beta):
    training_loop._apply_gradients(optimizer, clean_gradients, lr)
    training_loop._update_ema(ema, net, beta)

#----------------------------------------------------------------------------
# One EDMPrecond network with Adam and an EMA, trained on one fixed batch with the loop's step
# (or EDM's per-parameter one, whose Adam adam_kwargs can change, e.g. foreach=None for torch's
# default). seed fixes the weights and the batch.

class Trainer:
    def __init__(self, net_kwargs, resolution, batch, device, fast=None, per_parameter=False, seed=0, lr=1e-3,
            ema_beta=0.999, loss_kwargs={}, img_channels=3, adam_kwargs={}):
        device = torch.device(device)
        self.options = fast_paths.check_fast_paths(fast, device)
        self.per_parameter, self.lr, self.ema_beta, self.batch = per_parameter, lr, ema_beta, batch
        torch.manual_seed(seed)
        self.net = EDMPrecond(img_resolution=resolution, img_channels=img_channels, **net_kwargs).to(device).train()
        fast_paths.prepare_network(self.net, self.options)
        adam = dict(dict(lr=lr, betas=(0.9, 0.999), eps=1e-8, **(dict(foreach=False) if per_parameter else {})), **adam_kwargs)
        self.optimizer = torch.optim.Adam(self.net.parameters(), **fast_paths.optimizer_kwargs(adam, self.options))
        self.clean_gradients = multi_tensor.GradientCleaner(self.net.parameters())
        self.ema = fast_paths.exact_copy(self.net).eval().requires_grad_(False)
        self.denoiser = fast_paths.denoiser(self.net, self.options, device)
        self.loss_fn = EDMLoss(**loss_kwargs)
        images = torch.rand([batch, img_channels, resolution, resolution], generator=torch.Generator().manual_seed(seed + 1)) * 2 - 1
        self.images = images.to(device)

    # Forward and backward; returns the per-element loss (on the device, not read).
    def forward_backward(self):
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss_fn(net=self.denoiser, images=self.images)
        loss.sum().mul(1 / self.batch).backward()
        return loss.detach()

    def update(self):
        if self.per_parameter:
            per_parameter_update(self.optimizer, self.net, self.ema, self.lr, self.ema_beta)
        else:
            lean_update(self.optimizer, self.clean_gradients, self.net, self.ema, self.lr, self.ema_beta)

    def step(self):
        loss = self.forward_backward()
        self.update()
        return loss

#----------------------------------------------------------------------------
# Trainers in lockstep for comparing their bits: each step draws the same sigma, noise and
# dropout on every side (the global seed), then corrupt(gradients) may plant non-finite
# values before the update.

def steps_in_lockstep(trainers, steps, corrupt=None):
    for step in range(steps):
        for trainer in trainers:
            torch.manual_seed(100 + step)
            trainer.forward_backward()
            if corrupt is not None:
                corrupt([p.grad for p in trainer.net.parameters()])
            trainer.update()

# Training on one fixed objective (the same batch, sigma and noise every step, no dropout,
# whose masks are drawn in memory order and so differ with the layout): the loss falls when
# a path trains. Returns the trainer and the losses.
def train_fixed_draw(net_kwargs, resolution, batch, device, fast=None, steps=6, lr=3e-3, loss_kwargs={}):
    trainer = Trainer(dict(net_kwargs, dropout=0), resolution, batch, device, fast=fast, lr=lr, loss_kwargs=loss_kwargs)
    losses = []
    for _ in range(steps):
        torch.manual_seed(7)
        losses.append(float(trainer.step().mean()))
    return trainer, losses

#----------------------------------------------------------------------------
# Operator calls made by fn(), from the profiler: 'calls' counts the aten operators called from
# Python (an operator inside another is part of it: a foreach call is one call on any device,
# though on the CPU torch runs it as a loop of per-tensor operators, counted in 'nested').

def count_operator_calls(fn):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    event_tree = getattr(getattr(prof.profiler, 'kineto_results', None), 'experimental_event_tree', None)
    if event_tree is not None:
        return _count_in_tree(event_tree())
    return _count_in_events(prof.events())

# The counts from the profiler's list of events (torch.autograd.profiler_util.EventList, which
# drops an event that is the only child of one of its name, a redispatch of the same operator).
def _count_in_events(events):
    calls = nested = 0
    for event in events:
        if not event.name.startswith('aten::'):
            continue
        parent = event.cpu_parent
        while parent is not None and not parent.name.startswith('aten::'):
            parent = parent.cpu_parent
        if parent is None:
            calls += 1
        else:
            nested += 1
    return dict(calls=calls, nested=nested)

# The same counts from the profiler's event tree, built in C++: building the Python list of
# events costs about a second per 10,000 events (EDM's per-parameter update at toy size makes
# 4,000), the tree a few ms. The only child of a node of its name is dropped as the list drops it.
def _count_in_tree(roots):
    calls = nested = 0
    stack = [(node, False) for node in roots]
    while stack:
        node, inside = stack.pop()
        children = node.children
        while len(children) == 1 and children[0].name == node.name:
            children = children[0].children
        if node.name.startswith('aten::'):
            if inside:
                nested += 1
            else:
                calls += 1
            inside = True
        stack.extend((child, inside) for child in children)
    return dict(calls=calls, nested=nested)

# Peak memory of one call of fn() in GiB (see torch_utils/memory.py).
def _peak_of(fn, device):
    memory.reset_peak(device)
    fn()
    return memory.peak_gb(device)

# Time the functions round-robin (edm_spectral/bench.py's clock and rotation); per name the
# median ms, the median of its paired ratio to the first name (time of first / time of name,
# both from the same repetition: above 1 means faster than the first), and the ratio of the
# fastest repetitions (on a loaded machine the least disturbed ones).
def _interleaved(fns, iters, warmup, device):
    times = spectral_bench.interleaved_times(fns, iters, warmup, device)
    base = times[next(iter(fns))]
    return {name: dict(ms=statistics.median(ts) * 1e3, min_ms=min(ts) * 1e3, speedup=statistics.median(b / t for b, t in zip(base, ts)),
        min_speedup=min(base) / min(ts)) for name, ts in times.items()}

#----------------------------------------------------------------------------
# EDM's per-parameter loop against ours.

def bench_lean(net_kwargs, resolution, batch, iters, warmup, device):
    device = torch.device(device)
    edm = Trainer(net_kwargs, resolution, batch, device, per_parameter=True)
    ours = Trainer(net_kwargs, resolution, batch, device)
    rows = _interleaved(dict(edm=edm.step, ours=ours.step), iters, warmup, device)
    for name, trainer in [('edm', edm), ('ours', ours)]:
        trainer.step() # state exists: the counts are those of a steady step
        trainer.forward_backward()
        rows[name].update(count_operator_calls(trainer.update))
        rows[name]['peak_gb'] = _peak_of(trainer.step, device)
    # The per-parameter work alone (what the lean path changes), repeated on the gradients of
    # one backward pass: milliseconds, so five times the repetitions.
    for trainer in (edm, ours):
        trainer.forward_backward()
    updates = _interleaved(dict(edm=edm.update, ours=ours.update), 5 * iters, warmup, device)
    for name, row in updates.items():
        rows[name].update(update_ms=row['ms'], update_speedup=row['speedup'])
    num_tensors = len(list(ours.net.parameters()))
    return dict(resolution=resolution, batch=batch, iters=iters, num_tensors=num_tensors,
        num_params=sum(p.numel() for p in ours.net.parameters()), rows=rows, step_speedup=rows['ours']['speedup'],
        update_speedup=rows['ours']['update_speedup'], call_ratio=rows['edm']['calls'] / max(rows['ours']['calls'], 1))

#----------------------------------------------------------------------------
# The fast paths against the exact path, one at a time and all together. compile=None leaves
# torch.compile out (its first steps compile, which takes minutes on a CPU).

def fast_path_variants(device, compile_backend=None):
    variants = dict(amp=dict(amp='bf16'), channels_last=dict(channels_last=True), fused_adam=dict(fused_adam=True),
        fused_attention=dict(fused_attention=True))
    if compile_backend is not None:
        variants['compile'] = dict(compile=compile_backend)
    variants['all'] = {key: value for options in variants.values() for key, value in options.items()}
    usable = {}
    for name, options in variants.items():
        try:
            fast_paths.check_fast_paths(options, device)
        except (RuntimeError, ValueError) as err:
            usable[name] = str(err)
            continue
        usable[name] = options
    return usable

def bench_fast_paths(net_kwargs, resolution, batch, iters, warmup, device, compile_backend=None):
    device = torch.device(device)
    variants = fast_path_variants(device, compile_backend)
    trainers = dict(exact=Trainer(net_kwargs, resolution, batch, device))
    skipped = {}
    for name, options in variants.items():
        if isinstance(options, str):
            skipped[name] = options
        else:
            trainers[name] = Trainer(net_kwargs, resolution, batch, device, fast=options)
    first_step = {}
    for name, trainer in trainers.items(): # compilation happens here, outside the timing
        first_step[name] = spectral_bench.interleaved_times(dict(first=trainer.step), 1, 0, device)['first'][0]
    rows = _interleaved({name: trainer.step for name, trainer in trainers.items()}, iters, warmup, device)
    for name, trainer in trainers.items():
        rows[name]['peak_gb'] = _peak_of(trainer.step, device)
        rows[name]['first_step_s'] = first_step[name]
        rows[name]['options'] = variants.get(name, {})
    return dict(resolution=resolution, batch=batch, iters=iters, rows=rows, skipped=skipped)

#----------------------------------------------------------------------------
# Sampling: the default sampler (generate.py's) on the exact network and on its fast forms.

# Weights that look trained: a fresh network's output layers are zero-initialized, so its
# output does not depend on the rest and would hide every difference between the forms.
@torch.no_grad()
def perturb_weights(net, scale=0.02, seed=0):
    generator = torch.Generator().manual_seed(seed)
    for param in net.parameters():
        param.add_(torch.randn(param.shape, generator=generator).to(param.device) * scale)
    return net

def sampling_network(net_kwargs, resolution, device, seed=0):
    torch.manual_seed(seed)
    net = EDMPrecond(img_resolution=resolution, img_channels=3, **net_kwargs).eval().requires_grad_(False)
    return perturb_weights(net, seed=seed).to(device)

# The fast forms of the network for sampling (new copies: the exact network stays as it is);
# those the device lacks are left out.
SAMPLING_FORMS = dict(channels_last=dict(channels_last=True), fused_attention=dict(fused_attention=True),
    amp=dict(amp='bf16'), all=dict(channels_last=True, fused_attention=True, amp='bf16'))

def sampling_forms(exact, device):
    forms = {}
    for name, options in SAMPLING_FORMS.items():
        try:
            options = fast_paths.check_fast_paths(options, device)
        except (RuntimeError, ValueError):
            continue
        net = fast_paths.prepare_network(fast_paths.exact_copy(exact), options)
        forms[name] = fast_paths.denoiser(net, options, device)
    return forms

def bench_sampling(net_kwargs, resolution, num_images, iters, warmup, device, num_steps=18):
    from training.sampling import generate_images
    device = torch.device(device)
    exact = sampling_network(net_kwargs, resolution, device)
    forms = dict(exact=exact, **sampling_forms(exact, device))
    seeds = list(range(num_images))
    run = lambda net: generate_images(net, seeds, device, max_batch_size=num_images, num_steps=num_steps)
    outputs = {name: run(net) for name, net in forms.items()}
    rows = _interleaved({name: (lambda net=net: run(net)) for name, net in forms.items()}, iters, warmup, device)
    for name, row in rows.items():
        row['images_per_s'] = num_images / (row['ms'] / 1e3)
        row['max_abs_diff_uint8'] = int((outputs[name].to(torch.int16) - outputs['exact'].to(torch.int16)).abs().max())
        row['peak_gb'] = _peak_of(lambda net=forms[name]: run(net), device)
    return dict(resolution=resolution, num_images=num_images, num_steps=num_steps, iters=iters, rows=rows)

#----------------------------------------------------------------------------
# Text of the results, one table per part.

def format_results(lean=None, fast=None, sampling=None):
    lines = []
    if lean is not None:
        lines.append(f'Training step, EDM per-parameter loop vs ours ({lean["num_tensors"]} tensors, {lean["num_params"] / 1e6:.2f}M parameters, '
            f'{lean["resolution"]}x{lean["resolution"]}, batch {lean["batch"]}, median of {lean["iters"]}; update = the work after backward alone):')
        lines.append(f'  {"loop":<10s} {"step ms":>9s} {"min ms":>9s} {"update ms":>10s} {"calls":>7s} {"nested":>7s} {"peak GiB":>9s}')
        for name, row in lean['rows'].items():
            lines.append(f'  {name:<10s} {row["ms"]:9.2f} {row["min_ms"]:9.2f} {row["update_ms"]:10.2f} {row["calls"]:7d} {row["nested"]:7d} {row["peak_gb"]:9.3f}')
        ours = lean['rows']['ours']
        lines.append(f'  ours: {lean["step_speedup"]:.3f}x the step speed ({ours["min_speedup"]:.3f}x of the fastest steps), '
            f'{lean["update_speedup"]:.3f}x the update speed, {lean["call_ratio"]:.1f}x fewer operator calls outside forward and backward')
    if fast is not None:
        lines.append(f'Fast paths vs the exact path ({fast["resolution"]}x{fast["resolution"]}, batch {fast["batch"]}, median of {fast["iters"]}; '
            'speed-up = exact time / fast time, paired; of min = of the fastest steps):')
        lines.append(f'  {"path":<16s} {"step ms":>9s} {"speed-up":>9s} {"of min":>8s} {"first s":>8s} {"peak GiB":>9s}')
        for name, row in fast['rows'].items():
            lines.append(f'  {name:<16s} {row["ms"]:9.2f} {row["speedup"]:8.3f}x {row["min_speedup"]:7.3f}x {row["first_step_s"]:8.2f} {row["peak_gb"]:9.3f}')
        for name, why in fast['skipped'].items():
            lines.append(f'  {name:<16s} skipped: {why}')
    if sampling is not None:
        lines.append(f'Sampling, default sampler ({sampling["num_steps"]} steps), {sampling["num_images"]} images per batch, median of {sampling["iters"]}:')
        lines.append(f'  {"network":<16s} {"images/s":>9s} {"speed-up":>9s} {"of min":>8s} {"max |diff| (uint8)":>19s} {"peak GiB":>9s}')
        for name, row in sampling['rows'].items():
            lines.append(f'  {name:<16s} {row["images_per_s"]:9.2f} {row["speedup"]:8.3f}x {row["min_speedup"]:7.3f}x {row["max_abs_diff_uint8"]:19d} {row["peak_gb"]:9.3f}')
    return '\n'.join(lines)

#----------------------------------------------------------------------------
# python -m edm_spectral.bench --loop: every part per resolution, printed and written as JSON.

PARTS = ('lean', 'fast', 'sampling')

def _load_text(load):
    return 'unknown' if load is None else ' '.join(f'{v:.2f}' for v in load)

def run(device, resolutions, batch, iters, warmup, full, compile_backend=None, out='bench-loop.json', sample_images=None, sample_steps=18, cbase=None,
        parts=PARTS):
    import click
    device = torch.device(device)
    results = dict(device=str(device), device_name=spectral_bench.device_name(device), torch=torch.__version__,
        threads=torch.get_num_threads(), full=full, cbase=cbase, warmup=warmup, parts=list(parts), load_before=spectral_bench.load_average(), results=[])
    click.echo(f'torch {results["torch"]}, {results["threads"]} thread(s), {device} ({results["device_name"]}), load average {_load_text(results["load_before"])}')
    for resolution in resolutions:
        kwargs = spectral_bench.network_kwargs(resolution, full, cbase)
        click.echo(f'Resolution {resolution}x{resolution}, batch {batch}, {"full" if full else "reduced"} DDPM++ '
            f'({kwargs["model_channels"]} channels, channel_mult {kwargs["channel_mult"]})...')
        part = {}
        if 'lean' in parts:
            part['lean'] = bench_lean(kwargs, resolution, batch, iters, warmup, device)
        if 'fast' in parts:
            part['fast'] = bench_fast_paths(kwargs, resolution, batch, iters, warmup, device, compile_backend)
        if 'sampling' in parts:
            part['sampling'] = bench_sampling(kwargs, resolution, sample_images or batch, max(iters // 2, 1), min(warmup, 1), device, num_steps=sample_steps)
        click.echo(format_results(**part))
        results['results'].append(dict(resolution=resolution, **part))
    results['load_after'] = spectral_bench.load_average()
    click.echo(f'load average after: {_load_text(results["load_after"])}')
    if out:
        spectral_bench.write_json(results, out)
    return results

#----------------------------------------------------------------------------
