"""Train diffusion-based generative models with the EDM recipe, optionally with a spectral
(Fourier or wavelet) regularizer."""

import copy
import click
import dnnlib
from torch_utils import distributed as dist
from training import launch
from training.launch import ARCHS, PRECONDS
from training.sampling import parse_int_list # --cres: '1,2,2'
from edm_spectral.cli import load_snapshot_option, spectral_kwargs_from_options, resume_option, training_options, training_readers
from edm_spectral.metrics import snapshot_callback_kwargs
from edm_spectral.cli import fast_paths_from_options

#----------------------------------------------------------------------------
# Read the --transfer snapshot once up front, so that a missing, corrupt or refused pickle, one
# made for another resolution, or one whose weights do not fit the network of the options,
# fails here and not after the training loop has built everything.
def check_transfer(path, trust_code, resolution, network_kwargs):
    net = load_snapshot_option(path, '--transfer', trust_code=trust_code)['ema']
    net_res = getattr(net, 'img_resolution', resolution)
    if net_res != resolution:
        raise click.ClickException(f'--transfer: the snapshot is for {net_res}x{net_res} images, the dataset is {resolution}x{resolution}')
    mismatch = launch.transfer_mismatch(net, network_kwargs)
    if mismatch is not None:
        raise click.ClickException(f'--transfer: {mismatch}')

#----------------------------------------------------------------------------
# Pieces of the options that main() assembles.

# Open the dataset once: its name for the run folder, its resolution and size for the options.
def inspect_dataset(dataset_kwargs):
    try:
        dataset = dnnlib.util.construct_class_by_name(**dataset_kwargs)
    except (IOError, ValueError) as err:
        raise click.ClickException(f'--data: {err}')
    if dataset_kwargs.use_labels and not dataset.has_labels:
        raise click.ClickException('--cond=True requires labels specified in dataset.json')
    return dataset.name, dataset.resolution, len(dataset)

# Network: the --arch table, the preconditioner, then the overrides; augmentation adds the 9
# augment-label inputs.
def network_options(opts):
    network = dnnlib.EasyDict(copy.deepcopy(ARCHS[opts.arch]), class_name=PRECONDS[opts.precond][0])
    if opts.cbase is not None:
        network.model_channels = opts.cbase
    if opts.cres is not None:
        network.channel_mult = opts.cres
    if opts.augment:
        network.augment_dim = 9
    network.update(dropout=opts.dropout, use_fp16=opts.fp16)
    return network

def loss_options(opts):
    loss = dnnlib.EasyDict(class_name=PRECONDS[opts.precond][1])
    spectral = spectral_kwargs_from_options(opts)
    if spectral is not None:
        loss.spectral_kwargs = spectral
    return loss

# The batch must split evenly into processes, and each process' share into micro-batches.
def check_batch_split(batch, batch_gpu, world_size):
    if batch % world_size != 0:
        raise click.ClickException(f'--batch={batch} is not divisible by the number of processes ({world_size})')
    share = batch // world_size
    if batch_gpu is not None and share % min(batch_gpu, share) != 0:
        raise click.ClickException(f'--batch-gpu={batch_gpu} must divide the per-process batch {share}')

# --transfer (weights only, no EMA ramp-up, as EDM) or --resume (the whole state).
def starting_point_options(opts, resolution, network_kwargs):
    if opts.transfer is None:
        return resume_option(opts.resume, trust_code=opts.trust_code) if opts.resume is not None else {}
    if opts.resume is not None:
        raise click.ClickException('--transfer and --resume cannot be specified at the same time')
    check_transfer(opts.transfer, opts.trust_code, resolution, network_kwargs)
    return dict(resume_pkl=opts.transfer, ema_rampup_ratio=None)

# <dataset>-<cond|uncond>-<arch>-<precond>-gpus<G>-batch<B>-<fp16|fp32>[-<desc>]
def run_name(dataset_name, opts, world_size):
    parts = [dataset_name, 'cond' if opts.cond else 'uncond', opts.arch, opts.precond, f'gpus{world_size}',
        f'batch{opts.batch}', 'fp16' if opts.fp16 else 'fp32']
    if opts.desc is not None:
        parts.append(opts.desc)
    return '-'.join(parts)

#----------------------------------------------------------------------------

@click.command()

# The network, its training objective and its starting point: train.py's own options.
@click.option('--cond',          help='Class-conditional (needs labels in dataset.json)', metavar='BOOL', type=bool, default=False, show_default=True)
@click.option('--arch',          help='Network: DDPM++, NCSN++ or ADM',                              type=click.Choice(['ddpmpp', 'ncsnpp', 'adm']), default='ddpmpp', show_default=True)
@click.option('--precond',       help='Preconditioner and loss (ddpm = VP network with the discrete DDPM loss)', type=click.Choice(['vp', 've', 'edm', 'ddpm']), default='edm', show_default=True)
@click.option('--cbase',         help='Base channel count  [default: per --arch]', metavar='INT',    type=click.IntRange(min=1))
@click.option('--cres',          help='Channel multipliers per resolution  [default: per --arch]', metavar='LIST', type=parse_int_list)
@click.option('--allow-changes', help='Resume even where the run-defining options differ from the state\'s run (listed in the log)', is_flag=True)
@click.option('--transfer',      help='Start from the weights of this snapshot, fresh optimizer', metavar='PKL|URL', type=str)

# Data, hyperparameters, performance, I/O, spectral regularization and metrics, shared with
# fine_tune.py (edm_spectral/cli.py).
@training_options(trust_code=dict(help='Let --transfer/--resume pickles run their embedded code (unsafe)'))

def main(**kwargs):
    """Train an EDM-style diffusion model (Karras et al. 2022), optionally with a
    Fourier or wavelet regularizer on the denoised image (docs/training.md).

    Examples:

    \b
    # Class-conditional DDPM++ on CIFAR-10 with 8 GPUs (EDM's recipe)
    torchrun --standalone --nproc_per_node=8 train.py --outdir=training-runs \\
        --data=datasets/cifar10-32x32.zip --cond=1 --arch=ddpmpp

    \b
    # The same with the weighted Fourier amplitude regularizer
    torchrun --standalone --nproc_per_node=8 train.py --outdir=training-runs \\
        --data=datasets/cifar10-32x32.zip --cond=1 --arch=ddpmpp \\
        --spectral=fourier-amp --spectral-weight=weighted

    \b
    # A smoke test on the CPU
    python train.py --outdir=runs --data=datasets/tiny.zip --device=cpu \\
        --cbase=16 --cres=1,2 --batch=8 --duration=0.0001 --tick=1
    """
    opts = dnnlib.EasyDict(kwargs)
    try:
        device = dist.init(opts.device)
    except ValueError as e:
        raise click.ClickException(str(e))

    # The options in training_options.json's order (EDM's keys first, then ours).
    dataset_kwargs = dnnlib.EasyDict(class_name='training.dataset.ImageFolderDataset', path=opts.data, use_labels=opts.cond,
        xflip=opts.xflip, cache=opts.cache)
    dataset_name, dataset_kwargs.resolution, dataset_kwargs.max_size = inspect_dataset(dataset_kwargs)
    c = dnnlib.EasyDict(
        dataset_kwargs=dataset_kwargs,
        data_loader_kwargs=dnnlib.EasyDict(pin_memory=(device.type == 'cuda'), num_workers=opts.workers, prefetch_factor=2),
        network_kwargs=network_options(opts),
        loss_kwargs=loss_options(opts),
        optimizer_kwargs=dnnlib.EasyDict(class_name='torch.optim.Adam', lr=opts.lr, betas=[0.9,0.999], eps=1e-8),
    )
    if opts.augment:
        c.augment_kwargs = launch.augment_pipe_kwargs(opts.augment)
    c.update(total_kimg=launch.duration_to_kimg(opts.duration), ema_halflife_kimg=launch.ema_to_kimg(opts.ema),
        batch_size=opts.batch, batch_gpu=opts.batch_gpu, loss_scaling=opts.ls, cudnn_benchmark=opts.bench,
        kimg_per_tick=opts.tick, snapshot_ticks=opts.snap, state_dump_ticks=opts.dump)
    fast = fast_paths_from_options(opts, device) # only when asked: the options of the exact path stay EDM's
    if fast is not None:
        c.fast_paths = fast
    check_batch_split(opts.batch, opts.batch_gpu, dist.get_world_size())
    c.seed = opts.seed if opts.seed is not None else launch.random_seed(device)
    c.update(starting_point_options(opts, dataset_kwargs.resolution, c.network_kwargs))

    c.lr_rampup_kimg = opts.lr_rampup
    if opts.ema_rampup == 'none':
        c.ema_rampup_ratio = None
    elif opts.ema_rampup is not None:
        c.ema_rampup_ratio = opts.ema_rampup
    else:
        c.setdefault('ema_rampup_ratio', 0.05) # --transfer has already turned it off
    if opts.grid_seeds is not None:
        c.grid_seeds = opts.grid_seeds
    metrics = snapshot_callback_kwargs(opts) # --metrics: evaluated after each snapshot, into metrics.jsonl
    if metrics is not None:
        c.snapshot_callback_kwargs = metrics

    spectral = c.loss_kwargs.get('spectral_kwargs')
    summary = [('Dataset path', dataset_kwargs.path), ('Class-conditional', dataset_kwargs.use_labels),
        ('Network architecture', opts.arch), ('Preconditioning & loss', opts.precond),
        ('Spectral regularizer', 'none' if spectral is None else spectral.get('kind')),
        ('Batch size', c.batch_size), ('Mixed-precision', c.network_kwargs.use_fp16)]
    readers = training_readers('--transfer' if opts.transfer is not None else '--resume', trust_code=opts.trust_code)
    try:
        launch.launch_training(c, desc=run_name(dataset_name, opts, dist.get_world_size()), outdir=opts.outdir, nosubdir=opts.nosubdir,
            dry_run=opts.dry_run, device=device, summary=summary, allow_changes=opts.allow_changes, **readers)
    except (FileExistsError, launch.TrainingError) as e:
        raise click.ClickException(str(e))

#----------------------------------------------------------------------------

if __name__ == "__main__":
    main()

#----------------------------------------------------------------------------
