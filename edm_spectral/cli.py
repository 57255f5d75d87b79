"""Command-line pieces shared by the CLIs: the --spectral* options of every training CLI, the
options train.py and fine_tune.py share, the sampler options of generate.py and fid.py, and
reading a network snapshot named by an option."""

import functools
import inspect
import os
import pickle

import click

import dnnlib
from torch_utils import distributed as dist
from training.sampling import ABLATION_CHOICES, parse_int_list
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
# The options train.py and fine_tune.py share, one definition with one meaning in both (EDM's
# units: --duration and --ema in Mimg, --lr-rampup and --tick in kimg, --snap and --dump in
# ticks, booleans as BOOL), followed by the --spectral* and --metrics* options. A command
# changes defaults or help texts by parameter name: @training_options(ema=dict(default=0.025)).

# --tick: kimg > 0; whole numbers stay integers, as EDM writes them to training_options.json.
class Kimg(click.ParamType):
    name = 'KIMG'

    def convert(self, value, param, ctx):
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f'{value!r} is not a number', param, ctx)
        if not 0 < number < float('inf'):
            self.fail(f'{value!r} is not a number of kimg > 0', param, ctx)
        return int(number) if number.is_integer() else number

# --ema-rampup: a ratio >= 0, or "none" to disable the ramp-up.
def parse_ema_rampup(s):
    if s is None or isinstance(s, float):
        return s
    if str(s).lower() == 'none':
        return 'none'
    try:
        value = float(s)
    except ValueError:
        raise click.BadParameter(f'"{s}" is neither a number nor "none"') from None
    if value < 0:
        raise click.BadParameter('must be >= 0')
    return value

_training_options = [ # (option names, click.option arguments); order = order in --help
    (['--outdir'],        dict(help='Parent folder of the numbered run folders', metavar='DIR', type=str, required=True)),
    (['--data'],          dict(help='Dataset zip or folder (dataset_tool.py format)', metavar='ZIP|DIR', type=str, required=True)),
    (['--duration'],      dict(help='Images to train on, in millions', metavar='MIMG', type=click.FloatRange(min=0, min_open=True), default=200)),
    (['--batch'],         dict(help='Images per step over all processes', metavar='INT', type=click.IntRange(min=1), default=512)),
    (['--batch-gpu'],     dict(help='Micro-batch per process (accumulates gradients)', metavar='INT', type=click.IntRange(min=1))),
    (['--lr'],            dict(help='Adam learning rate (peak)', metavar='FLOAT', type=click.FloatRange(min=0, min_open=True), default=10e-4)),
    (['--lr-rampup'],     dict(help='Linear LR warm-up in kimg, 0 = full rate at once', metavar='KIMG', type=click.FloatRange(min=0), default=10000)),
    (['--ema'],           dict(help='Half-life of the weight EMA in millions of images (whole kimg, as EDM)', metavar='MIMG', type=click.FloatRange(min=0), default=0.5)),
    (['--ema-rampup'],    dict(help='EMA half-life cap as a fraction of images seen  [default: 0.05; none with --transfer]', metavar='RATIO|none', type=parse_ema_rampup)),
    (['--dropout'],       dict(help='Dropout rate of the network', metavar='FLOAT', type=click.FloatRange(min=0, max=1), default=0.13)),
    (['--augment'],       dict(help='Probability of each non-leaky augmentation, 0 = off', metavar='FLOAT', type=click.FloatRange(min=0, max=1), default=0.12)),
    (['--xflip'],         dict(help='Add mirrored copies of the dataset', metavar='BOOL', type=bool, default=False)),
    (['--fp16'],          dict(help='Run the network in float16 on CUDA', metavar='BOOL', type=bool, default=False)),
    (['--ls'],            dict(help='Static loss scale (use with --fp16)', metavar='FLOAT', type=click.FloatRange(min=0, min_open=True), default=1)),
    (['--bench'],         dict(help='Let cuDNN pick the fastest kernels', metavar='BOOL', type=bool, default=True)),
    # Opt-in fast paths (training/fast_paths.py); each changes the numerics.
    (['--amp'],           dict(help='Fast path, other numerics: autocast the denoiser (loss and spectral term stay float32)', type=click.Choice(['none', 'bf16']), default='none')),
    (['--channels-last'], dict(help='Fast path, other numerics: channels-last weights and activations', is_flag=True)),
    (['--compile'],       dict(help='Fast path, other numerics: torch.compile the denoiser (inductor: a C++ compiler on the CPU, Triton on CUDA)', is_flag=True)),
    (['--fused-adam'],    dict(help="Fast path, other numerics: torch's fused Adam kernel", is_flag=True)),
    (['--fused-attention'], dict(help='Fast path, other numerics: attention through scaled_dot_product_attention', is_flag=True)),
    (['--cache'],         dict(help='Keep decoded images in RAM', metavar='BOOL', type=bool, default=True)),
    (['--workers'],       dict(help='Data loading processes per GPU', metavar='INT', type=click.IntRange(min=1), default=1)),
    (['--device'],        dict(help='Device  [default: cuda if available, else cpu]', metavar='cuda|cpu|cuda:N', type=str)),
    (['--desc'],          dict(help='Suffix for the run folder name', metavar='STR', type=str)),
    (['--nosubdir'],      dict(help='Write into --outdir itself, no numbered run folder', is_flag=True)),
    (['--tick'],          dict(help='Status line every this many kimg', metavar='KIMG', type=Kimg(), default=50)),
    (['--snap'],          dict(help='Network snapshot every this many ticks', metavar='TICKS', type=click.IntRange(min=1), default=50)),
    (['--dump'],          dict(help='Training state every this many ticks', metavar='TICKS', type=click.IntRange(min=1), default=500)),
    (['--seed'],          dict(help='Random seed  [default: drawn at random]', metavar='INT', type=int)),
    (['--resume'],        dict(help='Continue a run exactly from its training state', metavar='PT', type=str)),
    (['--grid-seeds'],    dict(help='Sample a PNG grid with these seeds at every snapshot', metavar='LIST', type=parse_int_list)),
    (['--trust-code'],    dict(help='Let the pickles read run their embedded code (unsafe)', is_flag=True)),
    (['-n', '--dry-run'], dict(help='Print the options and exit without training', is_flag=True)),
]

# The training loop's fast_paths from --amp, --channels-last, --compile, --fused-adam and
# --fused-attention, checked for the device; None when none is on (the exact path).
def fast_paths_from_options(opts, device):
    from training import fast_paths
    chosen = dict(amp=None if opts.amp == 'none' else opts.amp, channels_last=opts.channels_last, compile='inductor' if opts.compile else None,
        fused_adam=opts.fused_adam, fused_attention=opts.fused_attention)
    chosen = {key: value for key, value in chosen.items() if value != fast_paths.DEFAULTS[key]}
    if not chosen:
        return None
    try:
        fast_paths.check_fast_paths(chosen, device)
    except (ValueError, RuntimeError) as err:
        raise click.ClickException(str(err))
    return chosen

def _param_name(names):
    return max(names, key=len).lstrip('-').replace('-', '_')

def training_options(**changes):
    known = {_param_name(names) for names, _ in _training_options}
    if set(changes) - known:
        raise TypeError(f'training_options: unknown options {sorted(set(changes) - known)}')
    def decorate(f):
        from edm_spectral.metrics import metrics_options # not at import: it loads the metrics code
        f = spectral_options(metrics_options(f))
        for names, kwargs in reversed(_training_options):
            kwargs = dict(kwargs, **changes.get(_param_name(names), {}))
            f = click.option(*names, show_default=not kwargs.get('is_flag', False), **kwargs)(f)
        return f
    return decorate

#----------------------------------------------------------------------------
# The sampler options of generate.py, also those of fid.py calc --network: EDM's names, passed
# to training.sampling.sample_batch as keyword arguments (None = the sampler's default). Any
# ablation option selects the generalized ablation sampler. `source` names the option whose
# images they apply to in the help texts (e.g. '--network').

_sampler_options = [ # (option names, help, ablation?, click.option arguments)
    (['--steps', 'num_steps'],        'Noise levels N (2N-1 network calls for Heun)', False, dict(metavar='INT', type=click.IntRange(min=2), default=18)),
    (['--sigma_min'],                 'Smallest noise level  [default: per --disc]', False, dict(metavar='FLOAT', type=click.FloatRange(min=0, min_open=True))),
    (['--sigma_max'],                 'Largest noise level  [default: per --disc]', False, dict(metavar='FLOAT', type=click.FloatRange(min=0, min_open=True))),
    (['--rho'],                       'Exponent of the EDM step spacing', False, dict(metavar='FLOAT', type=click.FloatRange(min=0, min_open=True), default=7)),
    (['--S_churn', 'S_churn'],        'Churn: noise re-added over all steps', False, dict(metavar='FLOAT', type=click.FloatRange(min=0), default=0)),
    (['--S_min', 'S_min'],            'Churn only where sigma >= this', False, dict(metavar='FLOAT', type=click.FloatRange(min=0), default=0)),
    (['--S_max', 'S_max'],            'Churn only where sigma <= this', False, dict(metavar='FLOAT', type=click.FloatRange(min=0), default='inf')),
    (['--S_noise', 'S_noise'],        'Scale of the re-added noise', False, dict(metavar='FLOAT', type=float, default=1)),
    (['--solver'],                    'ODE solver', True, dict(metavar='euler|heun', type=click.Choice(ABLATION_CHOICES['solver']))),
    (['--disc', 'discretization'],    'time steps', True, dict(metavar='vp|ve|iddpm|edm', type=click.Choice(ABLATION_CHOICES['discretization']))),
    (['--schedule'],                  'noise schedule sigma(t)', True, dict(metavar='vp|ve|linear', type=click.Choice(ABLATION_CHOICES['schedule']))),
    (['--scaling'],                   'signal scaling s(t)', True, dict(metavar='vp|none', type=click.Choice(ABLATION_CHOICES['scaling']))),
]

def sampler_options(f=None, source=None):
    if f is None:
        return lambda g: sampler_options(g, source=source)
    for names, text, ablation, kwargs in reversed(_sampler_options):
        if source is None:
            help = 'Ablation: ' + text if ablation else text
        else:
            help = f'{source}, ablation: {text}' if ablation else f'{source}: {text[0].lower()}{text[1:]}'
        f = click.option(*names, help=help, show_default=True, **kwargs)(f)
    return f

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

# The state is read here (storage memory-mapped), so that a corrupt or refused file is one
# error before the run folder is made; the loop's reader (training_readers) then takes this
# object instead of reading the file again (a trusted pickle's code runs once). The hand-over
# holds one state, for the file as it was read (path, size, mtime).
_checked_state = {}

def _file_key(path):
    st = os.stat(path)
    return (os.path.abspath(path), st.st_size, st.st_mtime_ns)

def resume_option(path, trust_code=False):
    from training.launch import resume_kwargs
    from edm_spectral.checkpoints import load_training_state
    _checked_state.clear()
    try:
        kwargs = resume_kwargs(path)
        state = load_training_state(path, trust_code=trust_code, mmap=True)
    except (ValueError, FileNotFoundError, pickle.UnpicklingError) as e: # the last: refused by the safe loader
        raise click.ClickException(f'--resume: {e}') from e
    _checked_state[(_file_key(path), trust_code)] = state
    return kwargs

def _load_checked_training_state(path, trust_code=False):
    from edm_spectral.checkpoints import load_training_state
    state = _checked_state.pop((_file_key(path), trust_code), None) if os.path.isfile(path) else None
    return state if state is not None else load_training_state(path, trust_code=trust_code)

# The readers training_loop uses for resume_pkl and resume_state_dump (training/ does not
# import this package): the safe loader unless trust_code, snapshots read as above, with
# `option` (e.g. '--transfer') in the messages.

def training_readers(option, trust_code=False):
    return dict(load_snapshot=functools.partial(load_snapshot_option, option=option, trust_code=trust_code),
        load_training_state=functools.partial(_load_checked_training_state, trust_code=trust_code))

#----------------------------------------------------------------------------
