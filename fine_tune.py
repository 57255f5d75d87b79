"""Fine-tune a released (or our own) EDM snapshot with a spectral regularizer: the paper's
image experiments as one command."""

import os
import re
import json
import click
import dnnlib
from torch_utils import distributed as dist
from training import launch
from edm_spectral.weight_movement import weight_movement
from edm_spectral.cli import load_snapshot_option, spectral_kwargs_from_options, resume_option, training_options, training_readers
from edm_spectral.metrics import snapshot_callback_kwargs
from edm_spectral.cli import fast_paths_from_options

#----------------------------------------------------------------------------
# Per-dataset settings of the paper (batch per GPU, lr, dropout, augment, duration).

PRESETS = {
    'cifar10': dnnlib.EasyDict(batch_per_gpu=16, lr=2e-4, dropout=0.13, augment=0.12, duration=0.5),
    'ffhq':    dnnlib.EasyDict(batch_per_gpu=16, lr=5e-5, dropout=0.05, augment=0.15, duration=0.5),
    'afhqv2':  dnnlib.EasyDict(batch_per_gpu=16, lr=5e-5, dropout=0.25, augment=0.15, duration=0.5),
}

# Pick the preset from the snapshot or dataset name, else from the resolution.
def auto_preset(names, resolution):
    for name in names:
        base = os.path.basename(str(name)).lower()
        for key, pattern in [('cifar10', 'cifar'), ('afhqv2', 'afhq'), ('ffhq', 'ffhq')]:
            if pattern in base:
                return key, f'"{pattern}" in {os.path.basename(str(name))}'
    if resolution <= 32:
        return 'cifar10', f'resolution {resolution}'
    return 'ffhq', f'resolution {resolution} (use --preset=afhqv2 for AFHQv2: dropout 0.25)'

#----------------------------------------------------------------------------
# Architecture and preconditioning as train.py names them, read from the network itself.

_PRECOND_NAMES = {'EDMPrecond': 'edm', 'VPPrecond': 'vp', 'VEPrecond': 've', 'iDDPMPrecond': 'iddpm'}
_DEFAULT_LOSSES = {'EDMPrecond': 'EDMLoss', 'VPPrecond': 'VPLoss', 'VEPrecond': 'VELoss'}

def describe_network(net):
    kwargs = net.init_kwargs
    if kwargs.get('model_type', 'DhariwalUNet') == 'DhariwalUNet':
        arch = 'adm'
    else:
        arch = 'ncsnpp' if kwargs.get('embedding_type', 'positional') == 'fourier' else 'ddpmpp'
    return arch, _PRECOND_NAMES.get(type(net).__name__, type(net).__name__.lower())

#----------------------------------------------------------------------------
# Write weight-movement.json and print it (rank 0).

def report_movement(network, run_dir, result, export, trust_code):
    from edm_spectral.checkpoints import load_snapshot
    ref = load_snapshot(network, trust_code=trust_code)['ema']
    new = load_snapshot(result.last_snapshot, trust_code=trust_code)['ema']
    move = weight_movement(ref, new)
    info = dict(checkpoint=network, snapshot=os.path.basename(result.last_snapshot), export=export, cur_nimg=result.cur_nimg, **move)
    with open(os.path.join(run_dir, 'weight-movement.json'), 'wt') as f:
        json.dump(info, f, indent=2)
    print()
    print(f'Exported weights ({export}) vs. the checkpoint after {result.cur_nimg} images:')
    print(f'  relative L2 of the difference, all tensors: {move.relative_l2:.3e}')
    print(f'  largest per-tensor relative L2:             {move.max_tensor_relative_l2:.3e} ({move.max_tensor_name})')
    print(f'  tensors changed:                            {move.num_tensors_changed} of {move.num_tensors}')
    if move.relative_l2 < 1e-5:
        print('  Warning: the exported weights barely moved. Check --lr, --lr-rampup, --ema and --duration, or use --export=raw.')
    return info

#----------------------------------------------------------------------------
# --sweep: the paper's grid is its own command (python -m edm_spectral.sweep run); this runs
# it for the -vp and -ve checkpoints named by --network, passing every other option given on
# the command line to each fine-tune.

def sweep_networks(network):
    m = re.search(r'-(vp|ve)\.pkl$', network)
    if not m:
        raise click.ClickException('--sweep needs a --network ending in -vp.pkl or -ve.pkl; the other one is derived from it '
            '(or run python -m edm_spectral.sweep run with one --network per checkpoint)')
    return [network[:m.start()] + f'-{arch}.pkl' for arch in ['vp', 've']]

# The options given on the command line, rebuilt as fine_tune.py arguments.
def sweep_passthrough(ctx):
    skip = {'sweep', 'dry_run', 'network', 'data', 'outdir', 'nproc', 'device', 'trust_code', 'spectral', 'spectral_weight', 'spectral_wavelet', 'desc'}
    args = []
    for param in ctx.command.params:
        if param.name in skip or ctx.get_parameter_source(param.name) != click.core.ParameterSource.COMMANDLINE:
            continue
        value = ctx.params[param.name]
        flag = max(param.opts, key=len)
        if getattr(param, 'is_flag', False):
            args += [flag] if value else []
        elif isinstance(value, list):
            args.append(f'{flag}=' + ','.join(str(v) if not isinstance(v, list) else ':'.join(str(x) for x in v) for v in value))
        else:
            args.append(f'{flag}={value}')
    return args

def run_sweep(ctx, opts):
    from edm_spectral import sweep
    args = [f'--network={n}' for n in sweep_networks(opts.network)] + [f'--data={opts.data}', f'--outdir={opts.outdir}', f'--nproc={opts.nproc}']
    args += ([f'--device={opts.device}'] if opts.device else []) + (['--trust-code'] if opts.trust_code else []) + (['--dry-run'] if opts.dry_run else [])
    sweep.run.main(args + ['--'] + sweep_passthrough(ctx), prog_name='python -m edm_spectral.sweep run', standalone_mode=False)

#----------------------------------------------------------------------------

@click.command(context_settings=dict(show_default=True))

# Main options.
@click.option('--network',       help='Checkpoint to fine-tune (EDM pickle)', metavar='PKL|URL',     type=str, required=True)
@click.option('--preset',        help='Paper hyper-parameters per dataset (auto: from the names, else resolution)', type=click.Choice(['auto', 'cifar10', 'ffhq', 'afhqv2']), default='auto')
@click.option('--export',        help='What snapshots store as "ema": the EMA or the raw trained net', type=click.Choice(['ema', 'raw']), default='ema')
@click.option('--allow-changes', help='Resume even where the run-defining options differ from the state\'s run (listed in the log)', is_flag=True)

# Data, hyperparameters, performance, I/O, spectral regularization and metrics: train.py's
# options (edm_spectral/cli.py), with the fine-tuning defaults (None = the preset's value).
@training_options(
    duration   = dict(default=None, help='Images to train on, in millions  [default: preset, 0.5]'),
    batch      = dict(default=None, help='Images per step over all processes  [default: 16 per process]'),
    lr         = dict(default=None, help='Adam learning rate (peak)  [default: preset]'),
    lr_rampup  = dict(default=10),
    ema        = dict(default=0.025),
    ema_rampup = dict(default='0.05', help='EMA half-life cap as a fraction of images seen, or none'),
    dropout    = dict(default=None, help='Dropout rate of the network  [default: preset]'),
    augment    = dict(default=None, help='Probability of each non-leaky augmentation  [default: preset]'),
    fp16       = dict(default=None, help='Run the network in float16 on CUDA  [default: as the checkpoint]'),
    desc       = dict(help='Suffix for the run folder name  [default: ft-<regularizer>]'),
    tick       = dict(default=10),
    snap       = dict(default=10),
    dump       = dict(default=10),
    seed       = dict(default=0, help='Random seed'),
    resume     = dict(help='Continue a fine-tune exactly from its training state'),
)
@click.option('--sweep',         help="The paper's grid for the -vp and -ve checkpoints: runs python -m edm_spectral.sweep run", is_flag=True)
@click.option('--nproc',         help='Processes per step of --sweep (torchrun when > 1)', metavar='INT', type=click.IntRange(min=1), default=1)

def main(**kwargs):
    """Fine-tune an EDM checkpoint, optionally with a spectral regularizer, using the
    per-dataset settings of the paper. Architecture, preconditioning, loss and
    augmentation settings come from the checkpoint; the run folder is the same as
    train.py's, plus weight-movement.json.

    Examples:

    \b
    # AFHQv2 64x64, DDPM++ checkpoint, weighted Fourier amplitude+phase term, 8 GPUs
    torchrun --standalone --nproc_per_node=8 fine_tune.py \\
        --network=https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-afhqv2-64x64-uncond-vp.pkl \\
        --data=datasets/afhqv2-64x64.zip --outdir=runs \\
        --spectral=fourier-amp-phase --spectral-weight=weighted

    \b
    # The paper's Table 1 for FFHQ (VP and VE): the sweep command; --dry-run prints its commands
    python -m edm_spectral.sweep run --nproc=8 --data=datasets/ffhq-64x64.zip --outdir=sweep-ffhq \\
        --network=https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-ffhq-64x64-uncond-vp.pkl \\
        --network=https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-ffhq-64x64-uncond-ve.pkl \\
        --ref=https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/ffhq-64x64.npz
    """
    opts = dnnlib.EasyDict(kwargs)
    if opts.sweep:
        run_sweep(click.get_current_context(), opts)
        return
    try:
        device = dist.init(opts.device)
    except ValueError as e:
        raise click.ClickException(str(e))

    # The checkpoint: network class and arguments, loss and augmentation settings.
    dist.print0(f'Reading "{opts.network}"...')
    snap = load_snapshot_option(opts.network, '--network', trust_code=opts.trust_code)
    net = snap['ema']
    net_kwargs = dict(net.init_kwargs)
    interface = {k: net_kwargs.pop(k) for k in ['img_resolution', 'img_channels', 'label_dim'] if k in net_kwargs}
    arch, precond = describe_network(net)

    # Dataset, checked against the network.
    dataset_kwargs = dnnlib.EasyDict(class_name='training.dataset.ImageFolderDataset', path=opts.data,
        use_labels=(net.label_dim > 0), xflip=opts.xflip, cache=opts.cache)
    try:
        dataset_obj = dnnlib.util.construct_class_by_name(**dataset_kwargs)
        dataset_obj.label_dim # reads the labels: a conditional net needs them in dataset.json
    except (IOError, ValueError) as e:
        raise click.ClickException(f'--data: {e}')
    if (dataset_obj.resolution, dataset_obj.num_channels) != (net.img_resolution, net.img_channels):
        raise click.ClickException(f'--data: the dataset is {dataset_obj.num_channels}x{dataset_obj.resolution}x{dataset_obj.resolution}, '
            f'but the network expects {net.img_channels}x{net.img_resolution}x{net.img_resolution}')
    if dataset_obj.label_dim != net.label_dim:
        raise click.ClickException(f'--data: the dataset has {dataset_obj.label_dim} label dimensions, the network {net.label_dim}')
    dataset_kwargs.resolution = dataset_obj.resolution
    dataset_kwargs.max_size = len(dataset_obj)
    dataset_name = dataset_obj.name
    del dataset_obj

    # Preset, then explicit options on top.
    preset_name, reason = (opts.preset, 'given') if opts.preset != 'auto' else auto_preset([opts.network, opts.data], net.img_resolution)
    preset = PRESETS[preset_name]
    batch = opts.batch if opts.batch is not None else preset.batch_per_gpu * dist.get_world_size()
    lr = opts.lr if opts.lr is not None else preset.lr
    dropout = opts.dropout if opts.dropout is not None else preset.dropout
    augment = opts.augment if opts.augment is not None else preset.augment
    duration = opts.duration if opts.duration is not None else preset.duration
    if batch % dist.get_world_size() != 0:
        raise click.ClickException(f'--batch={batch} is not divisible by the number of processes ({dist.get_world_size()})')

    # Network: the checkpoint's class and arguments, with the fine-tuning dropout and precision.
    c = dnnlib.EasyDict()
    c.dataset_kwargs = dataset_kwargs
    c.data_loader_kwargs = dnnlib.EasyDict(pin_memory=(device.type == 'cuda'), num_workers=opts.workers, prefetch_factor=2)
    c.network_kwargs = dnnlib.EasyDict(net_kwargs)
    c.network_kwargs.class_name = f'training.networks.{type(net).__name__}'
    c.network_kwargs.dropout = dropout
    if opts.fp16 is not None:
        c.network_kwargs.use_fp16 = opts.fp16

    # Loss: the checkpoint's class and arguments, plus the spectral term.
    loss_fn = snap.get('loss_fn', None)
    if loss_fn is not None:
        c.loss_kwargs = dnnlib.EasyDict(class_name=f'training.loss.{type(loss_fn).__name__}', **dict(loss_fn.init_kwargs))
    elif type(net).__name__ in _DEFAULT_LOSSES:
        c.loss_kwargs = dnnlib.EasyDict(class_name=f'training.loss.{_DEFAULT_LOSSES[type(net).__name__]}')
    else:
        raise click.ClickException(f'--network: the snapshot has no loss_fn and {type(net).__name__} has no default loss')
    c.loss_kwargs.pop('spectral_kwargs', None)
    spectral_kwargs = spectral_kwargs_from_options(opts)
    if spectral_kwargs is not None:
        c.loss_kwargs.spectral_kwargs = spectral_kwargs
    c.optimizer_kwargs = dnnlib.EasyDict(class_name='torch.optim.Adam', lr=lr, betas=[0.9,0.999], eps=1e-8)

    # Augmentation: the checkpoint's pipeline at the preset probability. A network with
    # augment inputs keeps the pipe even at p=0, so that every parameter gets a gradient.
    augment_dim = net_kwargs.get('augment_dim', 0)
    if augment_dim > 0:
        pipe = snap.get('augment_pipe', None)
        c.augment_kwargs = dnnlib.EasyDict(dict(pipe.init_kwargs)) if pipe is not None else launch.augment_pipe_kwargs(augment)
        c.augment_kwargs = dnnlib.EasyDict(class_name='training.augment.AugmentPipe', **{k: v for k, v in c.augment_kwargs.items() if k != 'class_name'})
        c.augment_kwargs.p = augment
    elif augment > 0:
        dist.print0(f'Note: the network has no augment-label input (augment_dim=0), so augmentation is off (preset asked for {augment}).')
        augment = 0
    del snap, net

    # Schedule and cadence.
    c.total_kimg = launch.duration_to_kimg(duration)
    c.ema_halflife_kimg = launch.ema_to_kimg(opts.ema)
    c.update(batch_size=batch, batch_gpu=opts.batch_gpu)
    c.update(loss_scaling=opts.ls, cudnn_benchmark=opts.bench)
    fast = fast_paths_from_options(opts, device) # only when asked: the options of the exact path stay EDM's
    if fast is not None:
        c.fast_paths = fast
    c.update(kimg_per_tick=opts.tick, snapshot_ticks=opts.snap, state_dump_ticks=opts.dump)
    c.seed = opts.seed
    c.resume_pkl = opts.network
    c.ema_rampup_ratio = None if opts.ema_rampup == 'none' else opts.ema_rampup
    if opts.resume is not None:
        r = resume_option(opts.resume, trust_code=opts.trust_code)
        c.resume_kimg, c.resume_state_dump = r.resume_kimg, r.resume_state_dump
    c.lr_rampup_kimg = opts.lr_rampup
    if opts.grid_seeds is not None:
        c.grid_seeds = opts.grid_seeds
    c.export_net = opts.export
    metrics = snapshot_callback_kwargs(opts) # --metrics: evaluated after each snapshot, into metrics.jsonl
    if metrics is not None:
        c.snapshot_callback_kwargs = metrics

    # Run folder name as train.py's, with the regularizer as default description.
    if opts.desc is None:
        kind = 'none' if spectral_kwargs is None else str(spectral_kwargs.get('kind', 'none'))
        if kind == 'wavelet':
            kind += '-' + str(spectral_kwargs.get('wavelet', ''))
        if spectral_kwargs is not None:
            w = spectral_kwargs.get('weight', 'weighted')
            kind += '-weighted' if w == 'weighted' else f'-w{w:g}' if isinstance(w, (int, float)) else f'-{w}'
        opts.desc = f'ft-{kind}'
    cond_str = 'cond' if dataset_kwargs.use_labels else 'uncond'
    dtype_str = 'fp16' if c.network_kwargs.get('use_fp16', False) else 'fp32'
    desc = f'{dataset_name}-{cond_str}-{arch}-{precond}-gpus{dist.get_world_size()}-batch{batch}-{dtype_str}-{opts.desc}'

    summary = [('Checkpoint', opts.network), ('Preset', f'{preset_name} ({reason})'), ('Dataset path', opts.data),
        ('Network', f'{arch} / {precond}'), ('Spectral regularizer', 'none' if spectral_kwargs is None else json.dumps(spectral_kwargs)),
        ('Batch size', batch), ('Learning rate', f'{lr:g}, ramp-up {opts.lr_rampup:g} kimg'),
        ('EMA', f'half-life {c.ema_halflife_kimg:g} kimg, ramp-up {c.ema_rampup_ratio}, export {opts.export}'),
        ('Dropout / augment', f'{dropout:g} / {augment:g}'), ('Duration', f'{c.total_kimg:g} kimg')]
    try:
        result = launch.launch_training(c, desc=desc, outdir=opts.outdir, nosubdir=opts.nosubdir, dry_run=opts.dry_run, device=device,
            summary=summary, allow_changes=opts.allow_changes, **training_readers('--network', trust_code=opts.trust_code))
    except (FileExistsError, launch.TrainingError) as e:
        raise click.ClickException(str(e))
    if result is None or dist.get_rank() != 0:
        return
    if result.last_snapshot is None:
        print('No snapshot was written (snapshots disabled?); skipping the weight movement report.')
        return
    with dnnlib.util.Logger(file_name=os.path.join(result.run_dir, 'log.txt'), file_mode='a', should_flush=True):
        report_movement(opts.network, result.run_dir, result, opts.export, opts.trust_code)

#----------------------------------------------------------------------------

if __name__ == "__main__":
    main()

#----------------------------------------------------------------------------
