"""Run configuration and launching, shared by train.py, fine_tune.py and the other trainers:
EDM's network and loss tables, the augmentation settings, the numbered run folders, and one
call that writes training_options.json, tees the output to log.txt and runs the training loop.
Library code: problems are ordinary exceptions, which the CLIs turn into messages."""

import json
import os
import re

import torch

import dnnlib
from torch_utils import distributed as dist
from training import training_loop

#----------------------------------------------------------------------------
# Network configuration of each --arch (EDM's train.py); the classes' defaults fill in the rest.

ARCHS = {
    'ddpmpp': dict(model_type='SongUNet', embedding_type='positional', encoder_type='standard', decoder_type='standard',
                   channel_mult_noise=1, resample_filter=[1,1], model_channels=128, channel_mult=[2,2,2]),
    'ncsnpp': dict(model_type='SongUNet', embedding_type='fourier', encoder_type='residual', decoder_type='standard',
                   channel_mult_noise=2, resample_filter=[1,3,3,1], model_channels=128, channel_mult=[2,2,2]),
    'adm':    dict(model_type='DhariwalUNet', model_channels=192, channel_mult=[1,2,3,4]),
}

# Preconditioner and loss of each --precond; ddpm is the discrete DDPM of Ho et al. on the VP network.
PRECONDS = {
    'vp':   ('training.networks.VPPrecond',  'training.loss.VPLoss'),
    've':   ('training.networks.VEPrecond',  'training.loss.VELoss'),
    'edm':  ('training.networks.EDMPrecond', 'training.loss.EDMLoss'),
    'ddpm': ('training.networks.VPPrecond',  'training.loss.DDPMLoss'),
}

# A small DDPM++ that trains in seconds to minutes on a CPU (toy experiments, benchmarks, tests):
# the --arch=ddpmpp table with fewer channels and blocks; other sizes and network arguments
# (dropout, ...) as keywords.
def small_ddpmpp(model_channels=32, channel_mult=(1, 2, 2), num_blocks=1, attn_resolutions=(), **overrides):
    return dict(ARCHS['ddpmpp'], model_channels=model_channels, channel_mult=list(channel_mult), num_blocks=num_blocks,
        attn_resolutions=list(attn_resolutions), **overrides)

# Augmentations that EDM enables, each with probability p (xflip always on, labelled).
def augment_pipe_kwargs(p):
    return dnnlib.EasyDict(class_name='training.augment.AugmentPipe', p=p, xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1)

#----------------------------------------------------------------------------
# Units of the options: durations and EMA half-lives are given in Mimg, the loop counts kimg.

# Training duration: EDM's rounding down to whole kimg (at least 1); durations under 1 kimg
# are kept exactly, for smoke tests.
def duration_to_kimg(duration_mimg):
    kimg = duration_mimg * 1000
    return max(int(kimg), 1) if kimg >= 1 else kimg

# EMA half-life: whole kimg, as EDM (--ema=0.025 is 25 kimg).
def ema_to_kimg(ema_mimg):
    return int(ema_mimg * 1000)

#----------------------------------------------------------------------------
# Numbered run directory below outdir: the largest existing leading number plus one.

def next_run_dir(outdir, desc):
    prev_ids = []
    if os.path.isdir(outdir):
        for name in os.listdir(outdir):
            m = re.match(r'^\d+', name)
            if m and os.path.isdir(os.path.join(outdir, name)):
                prev_ids.append(int(m.group()))
    run_dir = os.path.join(outdir, f'{max(prev_ids, default=-1) + 1:05d}-{desc}')
    if os.path.exists(run_dir):
        raise FileExistsError(f'Run directory already exists: {run_dir}')
    return run_dir

#----------------------------------------------------------------------------
# Draw a seed from the OS on rank 0 and share it with all ranks (torch's own default
# generator would give the same "random" seed in every run).

def random_seed(device):
    seed = torch.tensor(int.from_bytes(os.urandom(4), 'little') % (1 << 31), dtype=torch.int64, device=device)
    if dist.get_world_size() > 1:
        torch.distributed.broadcast(seed, src=0)
    return int(seed)

#----------------------------------------------------------------------------
# A training state to resume from: the state file, its kimg and (when present) its sibling
# snapshot, as training_loop arguments.

def resume_kwargs(path):
    m = re.fullmatch(r'training-state-(\d+)\.pt', os.path.basename(path))
    if not m:
        raise ValueError(f'expected a training-state-<kimg>.pt file from a previous run, got "{path}"')
    if not os.path.isfile(path):
        raise FileNotFoundError(f'file not found: "{path}"')
    c = dnnlib.EasyDict()
    pkl = os.path.join(os.path.dirname(path), f'network-snapshot-{m.group(1)}.pkl')
    if os.path.isfile(pkl):
        c.resume_pkl = pkl
    c.resume_kimg = int(m.group(1))
    c.resume_state_dump = path
    return c

#----------------------------------------------------------------------------
# Make the run directory, write training_options.json (the options c), tee the output to
# log.txt and train. loop_kwargs are training_loop arguments that are not options (the readers
# of resume_pkl and resume_state_dump). Returns training_loop's result, None for a dry run.

def launch_training(c, desc, outdir, nosubdir, dry_run, device, summary, **loop_kwargs):
    if dist.get_rank() != 0:
        c.run_dir = None
    elif nosubdir:
        c.run_dir = outdir
    else:
        c.run_dir = next_run_dir(outdir, desc)

    dist.print0()
    dist.print0('Training options:')
    dist.print0(json.dumps(c, indent=2))
    dist.print0()
    dist.print0(f'Output directory:        {c.run_dir}')
    for key, value in summary:
        dist.print0(f'{key + ":":<24} {value}')
    dist.print0(f'Number of processes:     {dist.get_world_size()}')
    dist.print0(f'Device:                  {device}')
    dist.print0()
    if dry_run:
        dist.print0('Dry run; exiting.')
        return None

    dist.print0('Creating output directory...')
    logger = None
    if dist.get_rank() == 0:
        os.makedirs(c.run_dir, exist_ok=True)
        with open(os.path.join(c.run_dir, 'training_options.json'), 'wt') as f:
            json.dump(c, f, indent=2)
        logger = dnnlib.util.Logger(file_name=os.path.join(c.run_dir, 'log.txt'), file_mode='a', should_flush=True)
    try:
        result = training_loop.training_loop(**c, **loop_kwargs, device=device)
    finally:
        if logger is not None:
            logger.close()
    dist.shutdown()
    return result

#----------------------------------------------------------------------------
