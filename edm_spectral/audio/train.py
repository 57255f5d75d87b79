"""Train or fine-tune a DiffWave vocoder, optionally with a 1-D spectral regularizer.

Examples:

\b
# Fine-tune LMNT's released LJSpeech model with the Fourier amplitude term (paper, Table 2).
torchrun --standalone --nproc_per_node=8 -m edm_spectral.audio.train --data=datasets/LJSpeech-1.1 \\
    --init=diffwave-ljspeech-22kHz-1000578.pt --steps=150000 --spectral=fourier-amp --spectral-weight=1e-4

\b
# Train a small model from scratch on the embedded espeak-ng corpus, on the CPU.
python -m edm_spectral.audio.train --data=out/espeak-corpus --residual-layers=8 --residual-channels=32 \\
    --dilation-cycle=4 --steps=500 --batch=8 --device=cpu
"""

import copy
import json
import os
import time

import click
import torch

import dnnlib
from torch_utils import distributed as dist
from torch_utils import training_stats
from training import launch
from training.loss import make_spectral_loss
from training.sampling import parse_int_list
from edm_spectral.cli import spectral_options, spectral_kwargs_from_options
from edm_spectral.weight_movement import weight_movement
from edm_spectral.audio import model as model_lib
from edm_spectral.audio import diffusion
from edm_spectral.audio import data as data_lib

#----------------------------------------------------------------------------
# The spectral term for audio: the images' builder (SpectralLoss over [N, 1, T] waveforms, DDIM
# roll-outs allowed: the diffusion is discrete), with a constant lambda (its 'weight', e.g. 1e-4);
# None without one.

def build_spectral(spectral_kwargs):
    spectral = make_spectral_loss(spectral_kwargs, 'DiffWave', allow_ddim=True)
    if spectral is not None and spectral.weight == 'weighted':
        raise ValueError("Audio uses a constant spectral weight: pass e.g. --spectral-weight=1e-4 (the paper uses 1e-4, 1e-5, 1e-6), got 'weighted'")
    return spectral

#----------------------------------------------------------------------------
# The training loop. Single process or torchrun (one process per device). `batch` is the total
# batch over all processes. Writes weights-<step>.pt (LMNT format) and weights.pt (latest).

def training_run(run_dir, data, params, steps, batch=16, lr=2e-4, spectral_kwargs=None, init=None, resume=None,
        seed=0, fp16=False, workers=2, snap=5000, tick=100, cache_dir=None, device=None, verbose=True, upsampler_init='lmnt'):
    device = dist.init(device) if not isinstance(device, torch.device) else device
    rank, world = dist.get_rank(), dist.get_world_size()
    if batch % world:
        raise ValueError(f'--batch={batch} is not divisible by the number of processes ({world})')
    if fp16 and device.type != 'cuda':
        raise ValueError('--fp16 needs a CUDA device')
    torch.manual_seed(seed * world + rank)
    if upsampler_init not in model_lib.UPSAMPLER_INITS:
        raise ValueError(f'Unknown --upsampler-init "{upsampler_init}"; choose from {", ".join(model_lib.UPSAMPLER_INITS)}')
    if upsampler_init != 'lmnt' and (init or resume):
        raise ValueError('--upsampler-init only applies to new models: with --init/--resume the weights come from the checkpoint')

    # Model and optimizer state: fresh, from a checkpoint to fine-tune, or resumed.
    start_step = 0
    src = resume or init
    src_data = None
    if src is not None:
        net, ckpt_params, src_data = model_lib.load_checkpoint(src, device='cpu')
        params = dict(ckpt_params, **{k: params[k] for k in ('batch_size', 'learning_rate', 'max_grad_norm', 'crop_mel_frames') if k in params})
    params = model_lib.make_params(params, batch_size=batch, learning_rate=lr)
    if src is None:
        net = model_lib.DiffWave(params, upsampler_init=upsampler_init)
    net.train().requires_grad_(True).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    scaler = torch.amp.GradScaler('cuda', enabled=fp16)
    if resume is not None:
        start_step = int(src_data.get('step', 0))
        if src_data.get('optimizer'):
            opt.load_state_dict(src_data['optimizer'])
            for group in opt.param_groups:
                group['lr'] = lr
        if fp16 and src_data.get('scaler'):
            scaler.load_state_dict(src_data['scaler'])
        if src_data.get('spectral_kwargs', None) != (spectral_kwargs or None) and rank == 0:
            print(f'Note: resuming with spectral settings {spectral_kwargs}, the checkpoint had {src_data.get("spectral_kwargs")}')
    ddp = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device] if device.type == 'cuda' else None) if world > 1 else net
    init_state = copy.deepcopy(net.state_dict()) # After DDP's broadcast: rank 0's weights on every rank.
    if resume is not None and src_data.get('init_model'):
        init_state = src_data['init_model'] # Keep measuring from where fine-tuning started.
    spectral = build_spectral(spectral_kwargs)

    # Data: endless random crops, each rank with its own stream.
    corpus = data_lib.AudioCorpus(data, params, split='train', cache_dir=cache_dir)
    stream = data_lib.CropStream(corpus, params['crop_mel_frames'], seed=seed + start_step, rank=rank)
    stream._lengths() # Computes (and caches) every mel up front, and fails early on bad files.
    loader = iter(torch.utils.data.DataLoader(stream, batch_size=batch // world, num_workers=workers,
        pin_memory=(device.type == 'cuda'), persistent_workers=workers > 0))

    if rank == 0 and verbose:
        print(f'DiffWave: {params["residual_layers"]} layers, {params["residual_channels"]} channels, '
            f'{sum(p.numel() for p in net.parameters()):,} parameters; {len(corpus)} training clips; '
            f'{world} process(es) on {device}; spectral: {spectral_kwargs if spectral is not None else "none"}')

    def save(step):
        if rank != 0:
            return
        path = os.path.join(run_dir, f'weights-{step}.pt')
        model_lib.save_checkpoint(path, net, params, step=step, optimizer=opt, scaler=scaler,
            spectral_kwargs=spectral_kwargs, init_model=init_state)
        link = os.path.join(run_dir, 'weights.pt')
        if os.path.lexists(link):
            os.remove(link)
        try:
            os.symlink(os.path.basename(path), link)
        except OSError:
            torch.save(torch.load(path, weights_only=True), link)

    # Main loop.
    collector = training_stats.Collector(regex='.*')
    stats_path = os.path.join(run_dir, 'stats.jsonl')
    start_time = tick_time = time.time()
    tick_step = start_step
    betas = params['noise_schedule']
    max_grad_norm = params['max_grad_norm'] or 1e9
    for step in range(start_step, steps):
        audio, mel = next(loader)
        audio, mel = audio.to(device, non_blocking=True), mel.to(device, non_blocking=True)
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=fp16):
            loss, base, ls = diffusion.diffwave_loss(ddp, audio, mel, betas, spectral=spectral,
                cur_kimg=step * batch / 1000)
        if not torch.isfinite(loss):
            raise RuntimeError(f'Non-finite loss at step {step}')
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), max_grad_norm)
        scaler.step(opt)
        scaler.update()
        training_stats.report('Loss/total', loss.detach())
        training_stats.report('Loss/base', base.detach())
        if ls is not None:
            training_stats.report('Loss/spectral', ls.detach())
        training_stats.report('Progress/grad_norm', grad_norm.detach())

        done = step + 1
        if done % tick == 0 or done == steps:
            collector.update()
            now = time.time()
            if rank == 0:
                stats = dict(collector.as_dict(), step=done, timestamp=now, sec_per_step=(now - tick_time) / max(done - tick_step, 1))
                with open(stats_path, 'a') as f:
                    f.write(json.dumps(stats) + '\n')
                if verbose:
                    spec = f' spectral {collector.mean("Loss/spectral"):.4g}' if ls is not None else ''
                    print(f'step {done:<8d} time {dnnlib.util.format_time(now - start_time):<10s} loss {collector.mean("Loss/total"):.5f} '
                        f'L1 {collector.mean("Loss/base"):.5f}{spec} grad {collector.mean("Progress/grad_norm"):.3f}', flush=True)
            tick_time, tick_step = now, done
        if done % snap == 0 or done == steps:
            save(done)
    dist.barrier()
    moved = weight_movement(init_state, net.state_dict()).relative_l2
    if rank == 0 and verbose:
        print(f'Done: {steps - start_step} steps; weights moved by {moved:.3g} (relative L2 vs. the start)')
    return os.path.join(run_dir, 'weights.pt'), moved

#----------------------------------------------------------------------------
# Command line.

@click.command(help=__doc__)
@click.option('--data',             help='LJSpeech-layout corpus (metadata.csv + wavs/)', metavar='DIR', type=str, required=True)
@click.option('--outdir',           help='Where to make the run directory', metavar='DIR', type=str, default='training-runs', show_default=True)
@click.option('--init',             help='Checkpoint to fine-tune (LMNT weights.pt or ours); its params define the model', metavar='PT', type=str)
@click.option('--resume',           help='Resume training from a checkpoint (or a run directory\'s weights.pt)', metavar='PT|DIR', type=str)
@click.option('--steps',            help='Total optimisation steps', metavar='INT', type=click.IntRange(min=1), default=150000, show_default=True)
@click.option('--batch',            help='Total batch size (over all processes)', metavar='INT', type=click.IntRange(min=1), default=16, show_default=True)
@click.option('--lr',               help='Adam learning rate', metavar='FLOAT', type=click.FloatRange(min=0, min_open=True), default=2e-4, show_default=True)
@click.option('--max-grad-norm',    help='Gradient clipping (LMNT: none)', metavar='FLOAT', type=click.FloatRange(min=0, min_open=True))
@click.option('--residual-layers',  help='Residual layers (new models)', metavar='INT', type=click.IntRange(min=1), default=30, show_default=True)
@click.option('--residual-channels',help='Residual channels (new models)', metavar='INT', type=click.IntRange(min=1), default=64, show_default=True)
@click.option('--dilation-cycle',   help='Dilation cycle length (new models)', metavar='INT', type=click.IntRange(min=1), default=10, show_default=True)
@click.option('--upsample',         help='Mel upsampling factors, product = hop (new models)', metavar='LIST', type=parse_int_list, default='16,16', show_default=True)
@click.option('--upsampler-init',   help='Mel upsampler initialisation (new models): lmnt = LMNT/PyTorch default, interp = linear interpolation', type=click.Choice(['lmnt', 'interp']), default='lmnt', show_default=True)
@click.option('--crop-frames',      help='Mel frames per training crop', metavar='INT', type=click.IntRange(min=1), default=62, show_default=True)
@click.option('--fp16',             help='Mixed precision (CUDA only)', metavar='BOOL', type=bool, default=False, show_default=True)
@click.option('--seed',             help='Random seed', metavar='INT', type=int, default=0, show_default=True)
@click.option('--workers',          help='Data loader worker processes', metavar='INT', type=click.IntRange(min=0), default=2, show_default=True)
@click.option('--snap-steps', 'snap', help='Checkpoint every this many steps (the image trainers\' --snap counts ticks)', metavar='STEPS', type=click.IntRange(min=1), default=5000, show_default=True)
@click.option('--tick-steps', 'tick', help='Log line every this many steps (the image trainers\' --tick counts kimg)', metavar='STEPS', type=click.IntRange(min=1), default=100, show_default=True)
@click.option('--cache-dir',        help='Mel cache directory [default: <outdir>/mel-cache]', metavar='DIR', type=str)
@click.option('--desc',             help='String to include in the run directory name', metavar='STR', type=str)
@click.option('--device',           help='Device [default: cuda if available, else cpu]', metavar='STR', type=str)
@click.option('--dry-run',          help='Print the options and exit', is_flag=True)
@spectral_options
def main(**opts):
    opts = dnnlib.EasyDict(opts)
    try:
        spectral_kwargs = spectral_kwargs_from_options(opts)
        build_spectral(spectral_kwargs) # Validates the options before any work.
        device = dist.init(opts.device)
    except (ValueError, ImportError) as e:
        raise click.ClickException(str(e))
    if opts.init and opts.resume:
        raise click.ClickException('--init and --resume are mutually exclusive')
    for name in ['init', 'resume']:
        if opts[name] is not None and not os.path.exists(opts[name]):
            raise click.ClickException(f'--{name}: no such file or directory: {opts[name]}')
    params = dict(residual_layers=opts.residual_layers, residual_channels=opts.residual_channels,
        dilation_cycle_length=opts.dilation_cycle, upsample_factors=opts.upsample, crop_mel_frames=opts.crop_frames,
        max_grad_norm=opts.max_grad_norm)
    try:
        model_lib.make_params(params)
    except ValueError as e:
        raise click.ClickException(str(e))

    world = dist.get_world_size()
    kind = (spectral_kwargs or {}).get('kind', 'none') if spectral_kwargs else 'none'
    desc = f'{os.path.basename(os.path.normpath(opts.data))}-diffwave-{"ft" if opts.init else "l%dc%d" % (opts.residual_layers, opts.residual_channels)}' \
        f'-{kind}-gpus{world}-batch{opts.batch}-{"fp16" if opts.fp16 else "fp32"}'
    if opts.desc:
        desc += f'-{opts.desc}'
    config = dict(data=opts.data, params=params, steps=opts.steps, batch=opts.batch, lr=opts.lr, spectral_kwargs=spectral_kwargs,
        init=opts.init, resume=opts.resume, seed=opts.seed, fp16=opts.fp16, workers=opts.workers, snap=opts.snap, tick=opts.tick,
        cache_dir=opts.cache_dir or os.path.join(opts.outdir, 'mel-cache'), upsampler_init=opts.upsampler_init)
    dist.print0(json.dumps(config, indent=2))
    if opts.dry_run:
        dist.print0('Dry run; exiting.')
        return

    run_dir = None
    if dist.get_rank() == 0:
        run_dir = launch.next_run_dir(opts.outdir, desc)
        os.makedirs(run_dir)
        with open(os.path.join(run_dir, 'training_options.json'), 'wt') as f:
            json.dump(config, f, indent=2)
    if world > 1:
        holder = [run_dir]
        torch.distributed.broadcast_object_list(holder, src=0)
        run_dir = holder[0]
    logger = dnnlib.util.Logger(file_name=os.path.join(run_dir, 'log.txt'), file_mode='a', should_flush=True) if dist.get_rank() == 0 else None
    try:
        dist.print0(f'Run directory: {run_dir}')
        training_run(run_dir=run_dir, device=device, **config)
    except (ValueError, FileNotFoundError) as e:
        raise click.ClickException(str(e))
    finally:
        if logger is not None:
            logger.close()

#----------------------------------------------------------------------------

if __name__ == '__main__':
    main()

#----------------------------------------------------------------------------
