"""Measure the training-step overhead of the spectral regularizers."""

import importlib.metadata
import json
import os
import platform
import statistics
import time

import click
import torch

from training import launch
from training.sampling import parse_int_list

#----------------------------------------------------------------------------
# The regularizers compared against the plain EDM loss.

VARIANTS = {
    'none':                 None,
    'fourier-amp':          dict(kind='fourier-amp'),
    'fourier-amp-phase':    dict(kind='fourier-amp-phase'),
    'wavelet-haar':         dict(kind='wavelet', wavelet='haar'),
    'wavelet-bior1.3':      dict(kind='wavelet', wavelet='bior1.3'),
}

#----------------------------------------------------------------------------
# Network configurations: the released DDPM++ (CIFAR-10 at 32, the paper's
# cres 1,2,2,2 at 64), or a reduced DDPM++ that runs in minutes on a CPU (cbase channels,
# 32 unless given; cbase does not change the released one).

def network_kwargs(resolution, full, cbase=None):
    if not full:
        return launch.small_ddpmpp(**(dict(model_channels=cbase) if cbase else {}), attn_resolutions=[16], dropout=0.13)
    return dict(launch.ARCHS['ddpmpp'], channel_mult=[2,2,2] if resolution <= 32 else [1,2,2,2], num_blocks=4, attn_resolutions=[16], dropout=0.13)

#----------------------------------------------------------------------------
# The timing, device and output helpers of every bench here (this one, bench_loop.py and
# gpucheck.py): one clock, one round-robin, one way to pick the device and to write JSON.

# Wall-clock seconds of fn(), with the device synchronised on both ends.
def _timed(fn, device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0

# The functions timed round-robin, the order rotating each repetition so that slow drifts of
# the machine hit all alike; per name the seconds of each timed repetition (after warmup).
def interleaved_times(fns, iters, warmup, device):
    device = torch.device(device)
    names = list(fns)
    times = {name: [] for name in names}
    for rep in range(warmup + iters):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            t = _timed(fns[name], device)
            if rep >= warmup:
                times[name].append(t)
    return times

# The --device option: cuda when there is one, else the CPU; a click error for a bad value.
def pick_device(device):
    if device is None:
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    try:
        device = torch.device(device)
    except RuntimeError as e:
        raise click.ClickException(f'Invalid --device {device!r}: {e}')
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise click.ClickException('--device=cuda requested but CUDA is not available')
    return device

# What the reports call the machine: the GPU's name, or the CPU's model.
def device_name(device):
    device = torch.device(device)
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()

# The machine's load when the bench ran (1, 5 and 15 minute averages), where the OS tells it.
def load_average():
    try:
        return list(os.getloadavg())
    except (AttributeError, OSError):
        return None

def write_json(data, out):
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, 'w') as f:
        json.dump(data, f, indent=2, default=str)
    click.echo(f'Wrote {out}')

#----------------------------------------------------------------------------
# Benchmark one resolution: every variant's full training step and the
# spectral term alone, interleaved round-robin so drifts hit all alike.

def bench_resolution(resolution, batch, iters, warmup, full, device, seed=0, cbase=None):
    from training.loss import EDMLoss
    from training.networks import EDMPrecond
    from training.spectral_loss import SpectralLoss

    torch.manual_seed(seed)
    net = EDMPrecond(img_resolution=resolution, img_channels=3, **network_kwargs(resolution, full, cbase)).to(device).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-5, betas=(0.9, 0.999), eps=1e-8)
    images = torch.rand([batch, 3, resolution, resolution], device=device) * 2 - 1
    losses = {name: EDMLoss(spectral_kwargs=kw) for name, kw in VARIANTS.items()}
    terms = {name: SpectralLoss(**kw) for name, kw in VARIANTS.items() if kw is not None}
    pred = torch.randn_like(images).requires_grad_(True)

    def step(loss_fn):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net=net, images=images, labels=None)
        loss.sum().mul(1 / batch).backward()
        opt.step()

    def term_only(spectral):
        pred.grad = None
        spectral(pred, images).sum().backward()

    names = list(losses)
    fns = {name: (lambda loss_fn=loss_fn: step(loss_fn)) for name, loss_fn in losses.items()}
    fns.update({('term', name): (lambda spectral=spectral: term_only(spectral)) for name, spectral in terms.items()})
    times = interleaved_times(fns, iters, warmup, device)
    term_times = {name: times[('term', name)] for name in terms}

    # Ratios are paired: each repetition's time over the plain step's time in
    # the same repetition (taken moments apart), then the median; this cancels
    # slow drifts from other load on the machine.
    base = statistics.median(times['none'])
    rows = []
    for name in names:
        row = dict(variant=name, step_ms=statistics.median(times[name]) * 1e3, step_min_ms=min(times[name]) * 1e3,
            ratio=statistics.median(t / t0 for t, t0 in zip(times[name], times['none'])),
            ratio_of_min=min(times[name]) / min(times['none']), times_ms=[t * 1e3 for t in times[name]])
        if name in terms:
            tm = statistics.median(term_times[name])
            row.update(term_ms=tm * 1e3, term_fraction=tm / base)
        rows.append(row)
    num_params = sum(p.numel() for p in net.parameters())
    return dict(resolution=resolution, batch=batch, iters=iters, num_params=num_params, rows=rows)

#----------------------------------------------------------------------------
# Command line.

def _check_resolutions(ctx, param, values):
    if not values or any(v < 8 or v % 8 != 0 for v in values):
        raise click.BadParameter(f'resolutions must be multiples of 8, got {",".join(map(str, values))!r}')
    return values

@click.command()
@click.option('--device',       help='Device  [default: cuda if available, else cpu]', metavar='STR', type=str, default=None)
@click.option('--resolutions',  help='Image resolutions to test', metavar='LIST', type=parse_int_list, callback=_check_resolutions, default='32,64', show_default=True)
@click.option('--batch',        help='Images per training step', metavar='INT', type=click.IntRange(min=1), default=16, show_default=True)
@click.option('--iters',        help='Timed repetitions per variant', metavar='INT', type=click.IntRange(min=1), default=10, show_default=True)
@click.option('--warmup',       help='Untimed repetitions first', metavar='INT', type=click.IntRange(min=0), default=2, show_default=True)
@click.option('--preset',       help='Network size: reduced (CPU-friendly) or full (the released DDPM++)', type=click.Choice(['reduced', 'full']), default='reduced', show_default=True)
@click.option('--full',         help='Deprecated spelling of --preset=full', is_flag=True, hidden=True)
@click.option('--cbase',        help='Channels of the reduced DDPM++  [default: 32]', metavar='INT', type=click.IntRange(min=1), default=None)
@click.option('--threads',      help='CPU threads for torch  [default: torch\'s choice]', metavar='INT', type=click.IntRange(min=1), default=None)
@click.option('--out',          help='Where to write the JSON results  [default: bench-spectral.json, with --loop bench-loop.json]', metavar='JSON', type=str, default=None)
@click.option('--loop',         help='Bench the training loop instead: EDM per-parameter loop vs ours, fast paths, sampling (edm_spectral/bench_loop.py)', is_flag=True)
@click.option('--compile',      help='With --loop: also time torch.compile with this backend', type=click.Choice(['none', 'eager', 'inductor']), default='none', show_default=True)
@click.option('--sample-images', help='With --loop: images per sampling batch  [default: --batch]', metavar='INT', type=click.IntRange(min=1), default=None)
@click.option('--sample-steps', help='With --loop: sampler steps', metavar='INT', type=click.IntRange(min=2), default=18, show_default=True)
@click.option('--parts',        help='With --loop: which parts to run (lean, fast, sampling)', metavar='LIST', type=str, default='lean,fast,sampling', show_default=True)
def main(device, resolutions, batch, iters, warmup, preset, full, cbase, threads, out, loop, compile, sample_images, sample_steps, parts):
    """Time a training step (EDMPrecond + DDPM++, EDMLoss, forward, backward,
    Adam) with each spectral regularizer against none, in one process with
    interleaved repetitions, and the spectral term alone (forward + backward).

    \b
    Examples:
    python -m edm_spectral.bench                          # reduced net, CPU-friendly
    python -m edm_spectral.bench --device=cuda --preset=full --iters=50
    python -m edm_spectral.bench --loop --resolutions=32 --cbase=64   # lean loop, fast paths, sampling
    """
    full = full or preset == 'full'
    if full and cbase is not None:
        raise click.ClickException('--cbase sets the reduced DDPM++; the released one (--preset=full) has its own widths')
    device = pick_device(device)
    if threads is not None:
        torch.set_num_threads(threads)
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    if loop:
        from edm_spectral import bench_loop # Lazy: the spectral bench does not need it.
        parts = [p.strip() for p in parts.split(',') if p.strip()]
        if not parts or any(p not in bench_loop.PARTS for p in parts):
            raise click.ClickException(f'--parts: a comma-separated list of {", ".join(bench_loop.PARTS)}; got {",".join(parts)!r}')
        bench_loop.run(device, resolutions, batch, iters, warmup, full, None if compile == 'none' else compile, 'bench-loop.json' if out is None else out,
            sample_images=sample_images, sample_steps=sample_steps, cbase=cbase, parts=parts)
        return
    out = 'bench-spectral.json' if out is None else out

    results = dict(device=str(device), device_name=device_name(device),
        torch=torch.__version__, ptwt=importlib.metadata.version('ptwt'), threads=torch.get_num_threads(), full=full, warmup=warmup, results=[])
    click.echo(f'torch {results["torch"]}, {results["threads"]} thread(s); the wavelet terms are computed by ptwt {results["ptwt"]}')
    for res in resolutions:
        click.echo(f'Resolution {res}x{res}, batch {batch}, {"full" if full else "reduced"} DDPM++ on {device}...')
        r = bench_resolution(res, batch, iters, warmup, full, device, cbase=cbase)
        results['results'].append(r)
        click.echo(f'  {r["num_params"] / 1e6:.2f}M parameters; medians of {iters} repetitions; ratio = median of paired ratios to "none"')
        click.echo(f'  {"variant":<20s} {"step ms":>9s} {"min ms":>9s} {"ratio":>7s} {"min ratio":>9s} {"term ms":>9s} {"term/step":>10s}')
        for row in r['rows']:
            term = f'{row["term_ms"]:9.2f} {100 * row["term_fraction"]:9.2f}%' if 'term_ms' in row else f'{"-":>9s} {"-":>10s}'
            click.echo(f'  {row["variant"]:<20s} {row["step_ms"]:9.2f} {row["step_min_ms"]:9.2f} {row["ratio"]:7.3f} {row["ratio_of_min"]:9.3f} {term}')
    if out:
        write_json(results, out)

#----------------------------------------------------------------------------

if __name__ == '__main__':
    main() # pylint: disable=no-value-for-parameter

#----------------------------------------------------------------------------
