"""One command for the paths that need a CUDA device (make gpu-check): a few minutes on one GPU
machine, one JSON and one Markdown report.

Checks: the lean step's bits against EDM's per-parameter loop and against torch's default
Adam; fp16 with loss scaling; bf16 autocast; torchrun with NCCL, one process per GPU (needs two
GPUs or more); generate's determinism across batch sizes. Benches: the spectral overhead with
the released DDPM++ at 64x64 (edm_spectral/bench.py), the lean loop, the fast paths and
sampling (edm_spectral/bench_loop.py) with the released DDPM++ at 32x32.

Without CUDA the CUDA checks are skipped with a note and the benches run at toy size, which
is what the test suite runs."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

import click
import torch

from edm_spectral import bench as spectral_bench
from edm_spectral import bench_loop

# A DDPM++ small enough for the CPU part of the test suite.
TOY_NETWORK = dict(model_type='SongUNet', embedding_type='positional', encoder_type='standard', decoder_type='standard',
    channel_mult_noise=1, resample_filter=[1,1], model_channels=16, channel_mult=[1,2], num_blocks=1, attn_resolutions=[4], dropout=0.1)

NO_CUDA = 'no CUDA: skipped (runs on a CUDA machine)'

#----------------------------------------------------------------------------
# The sizes of one run: the released configurations on CUDA, toy ones elsewhere (or asked).

def plan(device, toy):
    if toy or device.type != 'cuda':
        return dict(toy=True, train_res=8, train_net=TOY_NETWORK, train_batch=2, iters=1, warmup=0,
            spectral_res=16, spectral_full=False, spectral_batch=2, sample_images=2, sample_steps=2)
    return dict(toy=False, train_res=32, train_net=spectral_bench.network_kwargs(32, True), train_batch=32, iters=10, warmup=2,
        spectral_res=64, spectral_full=True, spectral_batch=16, sample_images=64, sample_steps=18)

#----------------------------------------------------------------------------
# The checks. Each returns a dict with 'status' (pass, fail or skipped) and what it measured.

def _same_state(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))

# The lean step against EDM's per-parameter loop (foreach=False Adam) and against torch's
# default Adam (multi-tensor on CUDA: what EDM's loop runs there today).
def check_lean_bits(device, sizes):
    kwargs = dict(net_kwargs=TOY_NETWORK, resolution=8, batch=4, device=device, lr=1e-2, ema_beta=0.9)
    trainers = dict(ours=bench_loop.Trainer(**kwargs), per_parameter=bench_loop.Trainer(**kwargs, per_parameter=True),
        torch_default=bench_loop.Trainer(**kwargs, per_parameter=True, adam_kwargs=dict(foreach=None)))
    def plant_nan(grads):
        grads[0].view(-1)[0] = float('nan')
    bench_loop.steps_in_lockstep(trainers.values(), 5, plant_nan)
    result = {name: dict(net=_same_state(trainers['ours'].net, trainer.net), ema=_same_state(trainers['ours'].ema, trainer.ema))
        for name, trainer in trainers.items() if name != 'ours'}
    identical = all(all(r.values()) for r in result.values())
    return dict(status='pass' if identical else 'fail', identical=result, steps=5)

# A few loop steps with the network in fp16 and a static loss scale: finite losses and weights.
def check_fp16_loss_scaling(device, sizes, workdir):
    if device.type != 'cuda':
        return dict(status='skipped', note=NO_CUDA)
    result = _tiny_run(device, workdir, 'fp16', dict(use_fp16=True), loss_scaling=64)
    finite = all(torch.isfinite(p).all() for p in result['net'].parameters())
    return dict(status='pass' if finite and result['losses_finite'] else 'fail', weights_finite=bool(finite), losses=result['losses'])

# bf16 autocast trains (loss on a fixed draw falls) and stays close to the exact path.
def check_bf16(device, sizes):
    if device.type != 'cuda':
        return dict(status='skipped', note=NO_CUDA)
    losses = {name: bench_loop.train_fixed_draw(TOY_NETWORK, 8, 4, device, fast=fast)[1] for name, fast in [('exact', None), ('bf16', dict(amp='bf16'))]}
    falls = losses['bf16'][-1] < 0.9 * losses['bf16'][0]
    close = abs(losses['bf16'][-1] - losses['exact'][-1]) <= 0.05 * losses['exact'][-1]
    return dict(status='pass' if falls and close else 'fail', losses=losses)

# train.py under torchrun, one process per GPU (NCCL): the run finishes and writes its state.
def check_torchrun_nccl(device, sizes, workdir):
    if device.type != 'cuda':
        return dict(status='skipped', note=NO_CUDA)
    gpus = torch.cuda.device_count()
    if gpus < 2:
        return dict(status='skipped', note=f'needs 2 or more GPUs for NCCL between processes; found {gpus}')
    data = _tiny_dataset(workdir)
    outdir = os.path.join(workdir, 'torchrun')
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={gpus}', os.path.join(root, 'train.py'),
        f'--outdir={outdir}', f'--data={data}', '--device=cuda', '--cbase=16', '--cres=1,2', f'--batch={2 * gpus}',
        '--duration=0.00002', '--tick=0.01', '--seed=0', '--augment=0', '--nosubdir']
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=root)
    states = [n for n in os.listdir(outdir) if n.startswith('training-state-')] if os.path.isdir(outdir) else []
    ok = proc.returncode == 0 and len(states) > 0
    return dict(status='pass' if ok else 'fail', processes=gpus, returncode=proc.returncode, states=states,
        output_tail=(proc.stdout + proc.stderr)[-2000:] if not ok else '')

# generate's sampler on the GPU: the same seeds give the same images in any batch size.
def check_generate_determinism(device, sizes):
    if device.type != 'cuda':
        return dict(status='skipped', note=NO_CUDA)
    from training.sampling import generate_images
    net = bench_loop.sampling_network(dict(TOY_NETWORK, attn_resolutions=[8]), 16, device) # trained-looking weights
    seeds = list(range(8))
    runs = {batch: generate_images(net, seeds, device, max_batch_size=batch, num_steps=8) for batch in (8, 3, 1)}
    again = generate_images(net, seeds, device, max_batch_size=8, num_steps=8)
    diffs = {f'batch {b} vs 8': int((r.to(torch.int16) - runs[8].to(torch.int16)).abs().max()) for b, r in runs.items() if b != 8}
    repeat = bool(torch.equal(again, runs[8]))
    identical = repeat and all(d == 0 for d in diffs.values())
    return dict(status='pass' if identical else 'fail', repeat_identical=repeat, max_abs_diff_uint8=diffs)

#----------------------------------------------------------------------------
# A tiny dataset (checkerboards) and a few training-loop steps on it.

def _tiny_dataset(workdir):
    from edm_spectral.toy import make_checkerboards, write_image_folder
    path = os.path.join(workdir, 'checkers-8x8')
    if not os.path.isdir(path):
        write_image_folder(make_checkerboards(16, 8, [1, 2], seed=0), path)
    return path

def _tiny_run(device, workdir, name, network_overrides, **overrides):
    from training import training_loop
    run_dir = os.path.join(workdir, name)
    kwargs = dict(run_dir=run_dir,
        dataset_kwargs=dict(class_name='training.dataset.ImageFolderDataset', path=_tiny_dataset(workdir), use_labels=False, xflip=False, cache=True),
        data_loader_kwargs=dict(num_workers=0), network_kwargs=dict(class_name='training.networks.EDMPrecond', **TOY_NETWORK, **network_overrides),
        loss_kwargs=dict(class_name='training.loss.EDMLoss'), optimizer_kwargs=dict(class_name='torch.optim.Adam', lr=1e-3, betas=[0.9, 0.999], eps=1e-8),
        seed=0, batch_size=4, total_kimg=0.016, kimg_per_tick=0.004, snapshot_ticks=100, state_dump_ticks=None,
        ema_halflife_kimg=0.01, lr_rampup_kimg=0, device=device, stop_on_signal=False)
    kwargs.update(overrides)
    os.makedirs(run_dir, exist_ok=True)
    from edm_spectral.checkpoints import load_snapshot
    result = training_loop.training_loop(**kwargs)
    with open(os.path.join(run_dir, 'stats.jsonl')) as f:
        losses = [json.loads(line)['Loss/loss']['mean'] for line in f]
    return dict(losses=losses, losses_finite=all(v == v and abs(v) != float('inf') for v in losses), net=load_snapshot(result.last_snapshot)['ema'])

#----------------------------------------------------------------------------
# The benches, at the sizes of the plan.

def bench_spectral(device, sizes):
    result = spectral_bench.bench_resolution(sizes['spectral_res'], sizes['spectral_batch'], max(sizes['iters'], 1), sizes['warmup'], sizes['spectral_full'], device)
    for row in result['rows']:
        row.pop('times_ms', None)
    return dict(status='pass', **result)

def bench_speed(device, sizes, compile_backend):
    net, res, batch, iters, warmup = sizes['train_net'], sizes['train_res'], sizes['train_batch'], sizes['iters'], sizes['warmup']
    lean = bench_loop.bench_lean(net, res, batch, iters, warmup, device)
    fast = bench_loop.bench_fast_paths(net, res, batch, iters, warmup, device, compile_backend)
    sampling = bench_loop.bench_sampling(net, res, sizes['sample_images'], max(iters // 2, 1), min(warmup, 1), device, num_steps=sizes['sample_steps'])
    return dict(status='pass', lean=lean, fast=fast, sampling=sampling, text=bench_loop.format_results(lean, fast, sampling))

#----------------------------------------------------------------------------
# Run everything; a check that raises is reported as an error and the rest go on.

def run_checks(device, toy=False, compile_backend=None, workdir=None):
    device = torch.device(device)
    sizes = plan(device, toy)
    own_workdir = workdir is None
    workdir = tempfile.mkdtemp(prefix='gpucheck-') if own_workdir else workdir
    steps = [
        ('lean_bits',              lambda: check_lean_bits(device, sizes)),
        ('fp16_loss_scaling',      lambda: check_fp16_loss_scaling(device, sizes, workdir)),
        ('bf16',                   lambda: check_bf16(device, sizes)),
        ('torchrun_nccl',          lambda: check_torchrun_nccl(device, sizes, workdir)),
        ('generate_determinism',   lambda: check_generate_determinism(device, sizes)),
        ('spectral_bench',         lambda: bench_spectral(device, sizes)),
        ('speed_bench',            lambda: bench_speed(device, sizes, compile_backend)),
    ]
    report = dict(device=str(device), device_name=spectral_bench.device_name(device), load_before=spectral_bench.load_average(),
        torch=torch.__version__, cuda=torch.version.cuda, gpus=torch.cuda.device_count() if torch.cuda.is_available() else 0,
        threads=torch.get_num_threads(), sizes={k: v for k, v in sizes.items() if k not in ('train_net',)}, checks={})
    start = time.time()
    try:
        for name, fn in steps:
            t0 = time.time()
            try:
                result = fn()
            except Exception as err: # pylint: disable=broad-except
                result = dict(status='error', error=f'{type(err).__name__}: {err}', traceback=traceback.format_exc()[-3000:])
            result['seconds'] = round(time.time() - t0, 2)
            report['checks'][name] = result
            click.echo(f'{name:<22s} {result["status"]:<8s} {result["seconds"]:8.1f} s  {result.get("note", result.get("error", ""))}')
    finally:
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    report['seconds'] = round(time.time() - start, 1)
    report['load_after'] = spectral_bench.load_average()
    return report

#----------------------------------------------------------------------------
# The Markdown report: a table of the checks, then the bench tables.

def format_markdown(report):
    lines = [f'# GPU check: {report["device_name"]} ({report["device"]})', '',
        f'torch {report["torch"]}, CUDA {report["cuda"]}, {report["gpus"]} GPU(s), {report["seconds"]} s in all'
        + (' (toy sizes: no CUDA, or --toy)' if report['sizes'].get('toy') else ''), '',
        '| check | status | seconds | note |', '|---|---|---|---|']
    for name, result in report['checks'].items():
        note = result.get('note') or result.get('error') or ''
        if name == 'lean_bits' and 'identical' in result:
            note = ', '.join(f'{k}: {"identical" if all(v.values()) else "differs"}' for k, v in result['identical'].items())
        if name == 'generate_determinism' and 'max_abs_diff_uint8' in result:
            note = f'repeat identical: {result["repeat_identical"]}; max |diff|: {result["max_abs_diff_uint8"]}'
        lines.append(f'| {name} | {result["status"]} | {result["seconds"]} | {note} |')
    spectral = report['checks'].get('spectral_bench', {})
    if 'rows' in spectral:
        lines += ['', f'## Spectral overhead ({spectral["resolution"]}x{spectral["resolution"]}, batch {spectral["batch"]}, {spectral["num_params"] / 1e6:.1f}M parameters)', '',
            '| variant | step ms | ratio to none |', '|---|---|---|']
        lines += [f'| {row["variant"]} | {row["step_ms"]:.2f} | {row["ratio"]:.3f} |' for row in spectral['rows']]
    speed = report['checks'].get('speed_bench', {})
    if 'text' in speed:
        lines += ['', '## Lean loop, fast paths, sampling', '', '```', speed['text'], '```']
    return '\n'.join(lines) + '\n'

def write_reports(report, outdir):
    os.makedirs(outdir, exist_ok=True)
    json_path, md_path = os.path.join(outdir, 'gpucheck.json'), os.path.join(outdir, 'gpucheck.md')
    spectral_bench.write_json(report, json_path)
    with open(md_path, 'w') as f:
        f.write(format_markdown(report))
    return json_path, md_path

#----------------------------------------------------------------------------

@click.command()
@click.option('--device',     help='Device  [default: cuda if available, else cpu]', metavar='STR', type=str, default=None)
@click.option('--out',        help='Folder of gpucheck.json and gpucheck.md', metavar='DIR', type=str, default='out/gpucheck', show_default=True)
@click.option('--toy',        help='Toy sizes even on CUDA (a quick look)', is_flag=True)
@click.option('--no-compile', help='Leave torch.compile out of the fast-path bench', is_flag=True)
def main(device, out, toy, no_compile):
    """Run the checks that need CUDA (fp16 with loss scaling, bf16, torchrun with NCCL,
    generate determinism across batch sizes), the spectral overhead bench with the released
    DDPM++ at 64x64, and the lean-loop and fast-path ratios; write one JSON and one Markdown
    report. Without CUDA, the CUDA checks are skipped and the benches run at toy size.

    \b
    make gpu-check
    python -m edm_spectral.gpucheck --out=out/gpucheck
    """
    device = spectral_bench.pick_device(device)
    if device.type != 'cuda':
        click.echo(f'{NO_CUDA.split(":")[0]} on this machine: the CUDA checks are skipped, the benches run at toy size.')
    compile_backend = None
    if not no_compile and device.type == 'cuda':
        from training.fast_paths import check_compiler
        try:
            check_compiler('inductor', device)
            compile_backend = 'inductor'
        except RuntimeError as err:
            click.echo(f'torch.compile left out: {err}')
    report = run_checks(device, toy=toy, compile_backend=compile_backend)
    json_path, md_path = write_reports(report, out)
    click.echo(f'Wrote {json_path} and {md_path}')
    failed = [name for name, r in report['checks'].items() if r['status'] in ('fail', 'error')]
    if failed:
        raise click.ClickException(f'failed: {", ".join(failed)}')

#----------------------------------------------------------------------------

if __name__ == '__main__':
    main() # pylint: disable=no-value-for-parameter

#----------------------------------------------------------------------------
