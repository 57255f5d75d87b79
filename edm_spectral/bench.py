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
# cres 1,2,2,2 at 64), or a reduced DDPM++ that runs in minutes on a CPU.

def network_kwargs(resolution, full):
    if not full:
        return launch.small_ddpmpp(attn_resolutions=[16], dropout=0.13)
    return dict(launch.ARCHS['ddpmpp'], channel_mult=[2,2,2] if resolution <= 32 else [1,2,2,2], num_blocks=4, attn_resolutions=[16], dropout=0.13)

#----------------------------------------------------------------------------
# Wall-clock seconds of fn(), with the device synchronised on both ends.

def _timed(fn, device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0

#----------------------------------------------------------------------------
# Benchmark one resolution: every variant's full training step and the
# spectral term alone, interleaved round-robin so drifts hit all alike.

def bench_resolution(resolution, batch, iters, warmup, full, device, seed=0):
    from training.loss import EDMLoss
    from training.networks import EDMPrecond
    from training.spectral_loss import SpectralLoss

    torch.manual_seed(seed)
    net = EDMPrecond(img_resolution=resolution, img_channels=3, **network_kwargs(resolution, full)).to(device).train()
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

    times = {name: [] for name in losses}
    term_times = {name: [] for name in terms}
    names = list(losses)
    for rep in range(warmup + iters):
        order = names[rep % len(names):] + names[:rep % len(names)] # Rotate the order each repetition.
        for name in order:
            t = _timed(lambda: step(losses[name]), device)
            if rep >= warmup:
                times[name].append(t)
        for name in terms:
            t = _timed(lambda: term_only(terms[name]), device)
            if rep >= warmup:
                term_times[name].append(t)

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
@click.option('--threads',      help='CPU threads for torch  [default: torch\'s choice]', metavar='INT', type=click.IntRange(min=1), default=None)
@click.option('--out',          help='Where to write the JSON results  [default: bench-spectral.json, with --loop bench-loop.json]', metavar='JSON', type=str, default=None)
@click.option('--loop',         help='Bench the training loop instead: EDM per-parameter loop vs ours, fast paths, sampling (edm_spectral/bench_loop.py)', is_flag=True)
@click.option('--compile',      help='With --loop: also time torch.compile with this backend', type=click.Choice(['none', 'eager', 'inductor']), default='none', show_default=True)
def main(device, resolutions, batch, iters, warmup, preset, full, threads, out, loop, compile):
    """Time a training step (EDMPrecond + DDPM++, EDMLoss, forward, backward,
    Adam) with each spectral regularizer against none, in one process with
    interleaved repetitions, and the spectral term alone (forward + backward).

    \b
    Examples:
    python -m edm_spectral.bench                          # reduced net, CPU-friendly
    python -m edm_spectral.bench --device=cuda --preset=full --iters=50
    python -m edm_spectral.bench --loop --resolutions=32    # lean loop and fast paths
    """
    full = full or preset == 'full'
    if device is None:
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    try:
        device = torch.device(device)
    except RuntimeError as e:
        raise click.ClickException(f'Invalid --device {device!r}: {e}')
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise click.ClickException('--device=cuda requested but CUDA is not available')
    if threads is not None:
        torch.set_num_threads(threads)
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    if loop:
        from edm_spectral import bench_loop # Lazy: the spectral bench does not need it.
        bench_loop.run(device, resolutions, batch, iters, warmup, full, None if compile == 'none' else compile, 'bench-loop.json' if out is None else out)
        return
    out = 'bench-spectral.json' if out is None else out

    results = dict(device=str(device), device_name=torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.processor() or platform.machine(),
        torch=torch.__version__, ptwt=importlib.metadata.version('ptwt'), threads=torch.get_num_threads(), full=full, warmup=warmup, results=[])
    click.echo(f'torch {results["torch"]}, {results["threads"]} thread(s); the wavelet terms are computed by ptwt {results["ptwt"]}')
    for res in resolutions:
        click.echo(f'Resolution {res}x{res}, batch {batch}, {"full" if full else "reduced"} DDPM++ on {device}...')
        r = bench_resolution(res, batch, iters, warmup, full, device)
        results['results'].append(r)
        click.echo(f'  {r["num_params"] / 1e6:.2f}M parameters; medians of {iters} repetitions; ratio = median of paired ratios to "none"')
        click.echo(f'  {"variant":<20s} {"step ms":>9s} {"min ms":>9s} {"ratio":>7s} {"min ratio":>9s} {"term ms":>9s} {"term/step":>10s}')
        for row in r['rows']:
            term = f'{row["term_ms"]:9.2f} {100 * row["term_fraction"]:9.2f}%' if 'term_ms' in row else f'{"-":>9s} {"-":>10s}'
            click.echo(f'  {row["variant"]:<20s} {row["step_ms"]:9.2f} {row["step_min_ms"]:9.2f} {row["ratio"]:7.3f} {row["ratio_of_min"]:9.3f} {term}')
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, 'w') as f:
            json.dump(results, f, indent=2)
        click.echo(f'Wrote {out}')

#----------------------------------------------------------------------------

if __name__ == '__main__':
    main() # pylint: disable=no-value-for-parameter

#----------------------------------------------------------------------------
