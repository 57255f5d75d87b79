"""Run configuration and launching, shared by train.py, fine_tune.py and the other trainers:
EDM's network and loss tables, the augmentation settings, the numbered run folders, and one
call that writes training_options.json, tees the output to log.txt and runs the training loop.
Library code: problems are ordinary exceptions, which the CLIs turn into messages."""

import json
import math
import os
import re
import traceback

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

# Training duration: exact, in whole images (EDM cut it to whole kimg, so that --duration=0.0025
# trained 2 kimg, or nothing on resuming a 2.0-kimg state). Whole kimg stay integers, as EDM
# writes them in training_options.json.
def duration_to_kimg(duration_mimg):
    nimg = round(duration_mimg * 1e6)
    if nimg < 1:
        raise ValueError(f'a duration of {duration_mimg:g} Mimg is less than one image')
    return nimg // 1000 if nimg % 1000 == 0 else nimg / 1000

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

# The names are training-state-<kimg>.pt, or with the exact image count where a name was taken
# (training-state-000002.600.pt, training-state-000002.600-1.pt: see the training loop).
def resume_kwargs(path):
    m = re.fullmatch(r'training-state-((\d+)(?:\.(\d{3}))?(?:-\d+)?)\.pt', os.path.basename(path))
    if not m:
        raise ValueError(f'expected a training-state-<kimg>.pt file from a previous run, got "{path}"')
    if not os.path.isfile(path):
        raise FileNotFoundError(f'file not found: "{path}"')
    c = dnnlib.EasyDict()
    pkl = os.path.join(os.path.dirname(path), f'network-snapshot-{m.group(1)}.pkl')
    if os.path.isfile(pkl):
        c.resume_pkl = pkl
    c.resume_kimg = int(m.group(2)) if m.group(3) is None else (int(m.group(2)) * 1000 + int(m.group(3))) / 1000
    c.resume_state_dump = path
    return c

#----------------------------------------------------------------------------
# Checks of a run's options, before its folder is made and any data worker starts.

class TrainingError(RuntimeError):
    """A run that was refused or that failed: the message is one line (a failed run's log.txt
    ends with the traceback and a FAILED line)."""

# The command-line option behind a training_options.json key, for the messages.
_OPTION_NAMES = {
    'network_kwargs.model_channels': '--cbase', 'network_kwargs.channel_mult': '--cres', 'network_kwargs.dropout': '--dropout',
    'network_kwargs.use_fp16': '--fp16', 'network_kwargs.augment_dim': '--augment', 'network_kwargs.class_name': '--precond',
    'loss_kwargs.class_name': '--precond', 'augment_kwargs.p': '--augment', 'batch_size': '--batch', 'batch_gpu': '--batch-gpu',
    'dataset_kwargs.use_labels': '--cond', 'optimizer_kwargs.lr': '--lr', 'seed': '--seed', 'total_kimg': '--duration',
    'ema_halflife_kimg': '--ema', 'ema_rampup_ratio': '--ema-rampup', 'lr_rampup_kimg': '--lr-rampup', 'loss_scaling': '--ls',
}
# Options whose value is the key's value (--cbase=16 is model_channels=16; --arch sets several keys).
_SAME_VALUE = {'--cbase', '--cres', '--dropout', '--fp16', '--batch', '--batch-gpu', '--cond', '--lr', '--seed', '--ema-rampup',
    '--lr-rampup', '--ls'}

def option_name(key):
    if key in _OPTION_NAMES:
        return _OPTION_NAMES[key]
    head, _, arg = key.rpartition('.')
    if head == 'loss_kwargs.spectral_kwargs':
        return '--spectral' if arg == 'kind' else '--spectral-' + arg.replace('_', '-')
    if head == 'network_kwargs' and any(arg in arch for arch in ARCHS.values()):
        return '--arch'
    return None

def _show(value):
    return 'unset' if value is _UNSET else json.dumps(value)

# "--cbase=16 (network_kwargs.model_channels=16)": the option and the key with a value.
def describe_setting(key, value):
    option = option_name(key)
    if option in _SAME_VALUE or (option or '').startswith('--spectral'):
        shown = ','.join(str(v) for v in value) if isinstance(value, list) else 'unset' if value is _UNSET else value
        return f'{option}={shown} ({key}={_show(value)})'
    return f'{key}={_show(value)}' + (f' ({option})' if option else '')

_UNSET = object()

# Nested options as (dotted key, value) pairs.
def _flatten(options, prefix=''):
    for key, value in options.items():
        if isinstance(value, dict) and value:
            yield from _flatten(value, f'{prefix}{key}.')
        else:
            yield f'{prefix}{key}', value

# Numbers that would fail later, or never stop a run: NaN and infinity anywhere, a seed that
# numpy refuses, a network too deep for the images.
def check_options(c):
    for key, value in _flatten(c):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f'{describe_setting(key, value)} is not a finite number')
    try:
        training_loop.check_seed(c.get('seed', 0))
        if c.get('dataset_kwargs', {}).get('resolution') is not None:
            training_loop.check_network_resolution(c.network_kwargs, c.dataset_kwargs.resolution)
    except ValueError as err:
        option = '--seed' if 'seed' in str(err) else '--data / --cres'
        raise ValueError(f'{option}: {err}') from None

# What defines a run: resuming with other values would not continue the same training.
RUN_DEFINING_OPTIONS = ['network_kwargs', 'loss_kwargs', 'augment_kwargs', 'batch_size', 'dataset_kwargs.use_labels']

# The differences of the run-defining options from the run that wrote the state (its
# training_options.json, beside the state file), as messages.
def resume_changes(c):
    options_file = os.path.join(os.path.dirname(os.path.abspath(c.resume_state_dump)), 'training_options.json')
    try:
        with open(options_file) as f:
            saved = json.load(f)
    except (OSError, ValueError) as err:
        return [f'the options of that run cannot be compared: {options_file} is missing or unreadable ({err})']
    def pick(options):
        picked = {}
        for name in RUN_DEFINING_OPTIONS:
            value = options
            for part in name.split('.'):
                value = value.get(part, _UNSET) if isinstance(value, dict) else _UNSET
            picked.update(_flatten({name: value}) if isinstance(value, dict) else [(name, value)])
        return picked
    before, now = pick(saved), pick(json.loads(json.dumps(c)))
    return [f'this state was trained with {describe_setting(key, before.get(key, _UNSET))}, now {_show(now.get(key, _UNSET))}'
        for key in list(before) + [k for k in now if k not in before] if before.get(key, _UNSET) != now.get(key, _UNSET)]

# Whether a snapshot's network fits the one the options build (the loop copies the weights
# by name): None, or a message naming the tensor that differs in shape and the options that
# differ. The network is built on the meta device, which allocates and draws nothing.
_SHAPE_NEUTRAL = {'dropout', 'use_fp16', 'class_name'}

def transfer_mismatch(source, network_kwargs):
    if not hasattr(source, 'init_kwargs'):
        return None
    interface = {k: source.init_kwargs[k] for k in ['img_resolution', 'img_channels', 'label_dim'] if k in source.init_kwargs}
    with torch.device('meta'):
        target = dnnlib.util.construct_class_by_name(**network_kwargs, **interface)
    theirs = {name: tuple(t.shape) for name, t in source.state_dict().items()}
    clashes = [(name, theirs[name], tuple(t.shape)) for name, t in target.state_dict().items() if name in theirs and theirs[name] != tuple(t.shape)]
    if not clashes:
        return None
    before = {k: v for k, v in json.loads(json.dumps(source.init_kwargs)).items() if k not in interface}
    now = json.loads(json.dumps({k: v for k, v in network_kwargs.items()}))
    changes = [f'{describe_setting("network_kwargs." + key, before.get(key, _UNSET))}, now {_show(now.get(key, _UNSET))}'
        for key in list(before) + [k for k in now if k not in before]
        if key not in _SHAPE_NEUTRAL and before.get(key, _UNSET) != now.get(key, _UNSET)]
    name, there, here = clashes[0]
    return (f'the snapshot\'s network does not fit this one ({name} is {list(there)} there, {list(here)} here)' +
        (f': it was trained with {"; ".join(changes)}' if changes else ''))

#----------------------------------------------------------------------------
# Make the run directory, write training_options.json (the options c), tee the output to
# log.txt and train. loop_kwargs are training_loop arguments that are not options (the readers
# of resume_pkl and resume_state_dump). Returns training_loop's result, None for a dry run.

def launch_training(c, desc, outdir, nosubdir, dry_run, device, summary, allow_changes=False, **loop_kwargs):
    try:
        check_options(c)
        if dist.get_rank() == 0:
            dnnlib.util.check_writable_dir(outdir, '--outdir')
    except ValueError as err:
        raise TrainingError(str(err)) from None
    changes = resume_changes(c) if c.get('resume_state_dump') else []
    if changes and not allow_changes:
        raise TrainingError(f'--resume: {"; ".join(changes)}; pass --allow-changes to continue anyway')
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
    for change in changes:
        dist.print0(f'Warning: --allow-changes: {change}')
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
    failure = None
    try:
        return training_loop.training_loop(**c, **loop_kwargs, device=device)
    except Exception as err:
        failure = failure_message(err)
        if logger is not None: # the details for the log, one line for the console
            logger.file.write(traceback.format_exc() + f'FAILED: {failure}\n')
    finally:
        if logger is not None:
            logger.close()
        dist.shutdown()
    # Raised here, without the traceback, whose frames would keep the data loader's workers
    # alive until the interpreter waits for them at exit.
    raise TrainingError(failure)

# One line for an error raised in the training loop; an error in a data worker comes with the
# worker's traceback in its message, whose last line names it.
def failure_message(err):
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    if 'Original Traceback' in str(err) and lines:
        return f'in a data loader worker: {lines[-1].strip()}'
    text = lines[0] if lines else ''
    known = isinstance(err, ValueError) or hasattr(err, 'format_message') # click's errors are messages already
    return text if known and text else f'{type(err).__name__}: {text}'.rstrip(': ')

#----------------------------------------------------------------------------
