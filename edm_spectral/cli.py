"""Command-line pieces shared by the CLIs: the --spectral* options of every training CLI, and
reading a network snapshot named by an option."""

import functools
import inspect
import os
import pickle

import click

import dnnlib
from torch_utils import distributed as dist
from training.spectral_loss import CHOICES, SpectralLoss

#----------------------------------------------------------------------------
# The --spectral* options are SpectralLoss's arguments: their choices come from
# training.spectral_loss.CHOICES, their defaults from its signature, and every
# value is checked once, by SpectralLoss itself. The types below only parse.
# (persistent_class wraps the class in a subclass taking *args, **kwargs.)

_signature = inspect.signature(SpectralLoss.__mro__[1].__init__).parameters

#----------------------------------------------------------------------------
# --spectral-weight: the word 'weighted' or a number.

class SpectralWeight(click.ParamType):
    name = 'weighted|FLOAT'

    def convert(self, value, param, ctx):
        if value == 'weighted' or (isinstance(value, (int, float)) and not isinstance(value, bool)):
            return value
        try:
            return float(value)
        except ValueError:
            self.fail(f"expected 'weighted' or a number, got {value!r}", param, ctx)

#----------------------------------------------------------------------------
# --spectral-level-weights: comma-separated per-level weights; a level may
# give one weight per band, separated by colons (2-D: H:V:D).

class LevelWeights(click.ParamType):
    name = 'LIST'

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, list):
            return value
        try:
            weights = [[float(p) for p in item.strip().split(':')] for item in str(value).split(',')]
        except ValueError:
            self.fail(f'expected comma-separated numbers (per band: a:b:c), got {value!r}', param, ctx)
        return [w[0] if len(w) == 1 else w for w in weights]

#----------------------------------------------------------------------------
# --spectral-sigma-max: a number, or 'none'/'inf' for no cut-off.

class SigmaMax(click.ParamType):
    name = 'FLOAT'

    def convert(self, value, param, ctx):
        if value is None or str(value).lower() in ('none', 'inf'):
            return None
        try:
            return float(value)
        except ValueError:
            self.fail(f"expected a number or 'none', got {value!r}", param, ctx)

#----------------------------------------------------------------------------
# Per SpectralLoss argument: option name (the command's parameter), type,
# metavar and help. Order = order in --help.

def _choice(arg, extra=()):
    return click.Choice(list(extra) + list(CHOICES[arg]))

_options = dict(
    kind            = ('spectral',               _choice('kind', ['none']),   None,    'Spectral regularizer on the predicted clean sample'),
    weight          = ('spectral_weight',        SpectralWeight(),            None,    'lambda: the loss\'s own noise weight, or a constant >= 0'),
    wavelet         = ('spectral_wavelet',       click.STRING,                'NAME',  'Wavelet for --spectral=wavelet (any discrete PyWavelets name)'),
    levels          = ('spectral_levels',        click.INT,                   'INT',   'Wavelet decomposition levels (capped by the signal size)'),
    level_weights   = ('spectral_level_weights', LevelWeights(),              'LIST',  'Wavelet gammas: LEVELS+1 comma-separated values, approximation first, then coarsest to finest level; a:b:c gives per-band (H:V:D) weights'),
    wavelet_mode    = ('spectral_wavelet_mode',  _choice('wavelet_mode'),     None,    'Wavelet boundary mode, as in PyWavelets (computed by ptwt)'),
    reduction       = ('spectral_reduction',     _choice('reduction'),        None,    'L1 norms as sums or means over coefficients, per sample'),
    fft_norm        = ('spectral_fft_norm',      _choice('fft_norm'),         None,    'FFT normalisation'),
    ap_form         = ('spectral_ap_form',       _choice('ap_form'),          None,    'Amplitude+phase: printed product of norms, or per-frequency coupling'),
    phase_wrap      = ('spectral_phase_wrap',    click.BOOL,                  'BOOL',  'Wrap phase differences into (-pi, pi]'),
    warmup_kimg     = ('spectral_warmup',        click.FLOAT,                 'KIMG',  'Ramp lambda up linearly from 0 over this many kimg'),
    sigma_max       = ('spectral_sigma_max',     SigmaMax(),                  'FLOAT', 'Switch the term off for noise levels sigma >= this'),
    ddim_steps      = ('spectral_ddim_steps',    click.INT,                   'INT',   'DDPM only: DDIM steps for the x0 estimate (1 = one-step estimate)'),
)
assert set(_options) == set(_signature) - {'self'}, 'every SpectralLoss argument needs an option'

_defaults = {option: ('none' if arg == 'kind' else _signature[arg].default) for arg, (option, *_) in _options.items()}
_shown_defaults = dict(spectral_level_weights='all 1', spectral_sigma_max='none')

#----------------------------------------------------------------------------
# Click decorator adding the --spectral* options to a command. Used bare
# (@spectral_options) or with other defaults for a command, keyed by the
# parameter name (@spectral_options(spectral='wavelet', spectral_weight='1')).

def spectral_options(f=None, **defaults):
    unknown = set(defaults) - set(_defaults)
    if unknown:
        raise TypeError(f'spectral_options: unknown defaults {sorted(unknown)}')
    if f is None:
        return lambda g: spectral_options(g, **defaults)
    d = dict(_defaults, **defaults)
    for option, option_type, metavar, help in reversed(list(_options.values())):
        if metavar is None:
            metavar = '|'.join(option_type.choices) if isinstance(option_type, click.Choice) else option_type.name
        shown = True if option in defaults or option not in _shown_defaults else _shown_defaults[option]
        f = click.option('--' + option.replace('_', '-'), option, help=help, metavar=metavar, type=option_type, default=d[option], show_default=shown)(f)
    return f

#----------------------------------------------------------------------------
# Map parsed options (the command's kwargs) to SpectralLoss arguments, or None
# when the term is off. Missing options take SpectralLoss's defaults; values
# are parsed as the options do and checked by SpectralLoss, whose messages
# ('arg=value: ...') get the option's name.

def spectral_kwargs_from_options(opts):
    kind = opts.get('spectral', 'none') or 'none'
    if kind == 'none':
        return None
    kwargs = dict()
    for arg, (option, option_type, _, _) in _options.items():
        value = opts.get(option, _defaults[option])
        kwargs[arg] = None if value is None else option_type.convert(value, None, None)
    try:
        SpectralLoss(**kwargs) # Validate the combination now, not at the first training step.
    except ValueError as e:
        message = str(e)
        for arg, (option, *_) in _options.items():
            if message.startswith(arg + '='):
                message = '--' + option.replace('_', '-') + message[len(arg):]
                break
        raise click.ClickException(message) from e
    return kwargs

#----------------------------------------------------------------------------
# Read the snapshot an option names (`option`, e.g. '--network', appears in the
# messages) on every rank, rank 0 first: it fills the download cache for URLs.
# A missing, corrupt or refused pickle is a clear error, not a traceback.

def load_snapshot_option(path, option, trust_code=False, device='cpu'):
    from edm_spectral.checkpoints import load_snapshot
    if not dnnlib.util.is_url(path) and not os.path.isfile(path):
        raise click.ClickException(f'{option}: file not found: "{path}"')
    if dist.get_rank() != 0:
        dist.barrier()
    try:
        return load_snapshot(path, trust_code=trust_code, device=device)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, pickle.UnpicklingError) as e: # the last: refused by the safe loader
        hint = '' if trust_code else ' (a pickle made by other code may load with --trust-code, which executes the code stored in it)'
        raise click.ClickException(f'{option}: cannot load network snapshot "{path}": {e}{hint}') from e
    finally:
        if dist.get_rank() == 0:
            dist.barrier()

# --resume: training.launch.resume_kwargs, with its problems as messages.

def resume_option(path):
    from training.launch import resume_kwargs
    try:
        return resume_kwargs(path)
    except (ValueError, FileNotFoundError) as e:
        raise click.ClickException(f'--resume: {e}') from e

# The readers training_loop uses for resume_pkl and resume_state_dump (training/ does not
# import this package): the safe loader unless trust_code, snapshots read as above, with
# `option` (e.g. '--transfer') in the messages.

def training_readers(option, trust_code=False):
    from edm_spectral.checkpoints import load_training_state
    return dict(load_snapshot=functools.partial(load_snapshot_option, option=option, trust_code=trust_code),
        load_training_state=functools.partial(load_training_state, trust_code=trust_code))

#----------------------------------------------------------------------------
