"""Command-line pieces shared by the CLIs: the --spectral* options of every training CLI, and
reading a network snapshot named by an option."""

import os
import pickle

import click

import dnnlib
from torch_utils import distributed as dist

#----------------------------------------------------------------------------
# Option values, as SpectralLoss accepts them.

_kinds          = ['none', 'fourier-amp', 'fourier-amp-phase', 'wavelet']
_wavelet_modes  = ['symmetric', 'periodization', 'zero', 'constant', 'reflect', 'periodic']

#----------------------------------------------------------------------------
# --spectral-weight: the word 'weighted' or a non-negative number.

class SpectralWeight(click.ParamType):
    name = 'weighted|FLOAT'

    def convert(self, value, param, ctx):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if value == 'weighted':
            return value
        try:
            w = float(value)
        except ValueError:
            self.fail(f"expected 'weighted' or a number, got {value!r}", param, ctx)
        if not (w >= 0 and w < float('inf')):
            self.fail(f'the constant weight must be a finite number >= 0, got {value!r}', param, ctx)
        return w

#----------------------------------------------------------------------------
# --spectral-level-weights: comma-separated per-level weights; a level may
# give one weight per band, separated by colons (2-D: H:V:D).

class LevelWeights(click.ParamType):
    name = 'LIST'

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, list):
            return value
        weights = []
        try:
            for item in str(value).split(','):
                parts = [float(p) for p in item.strip().split(':')]
                weights.append(parts[0] if len(parts) == 1 else parts)
        except ValueError:
            self.fail(f'expected comma-separated numbers (per band: a:b:c), got {value!r}', param, ctx)
        for w in weights:
            for v in (w if isinstance(w, list) else [w]):
                if not (v >= 0 and v < float('inf')):
                    self.fail(f'weights must be finite numbers >= 0, got {value!r}', param, ctx)
        for w in weights:
            if isinstance(w, list) and len(w) not in (1, 3):
                self.fail(f'a level takes 1 weight or 3 band weights (H:V:D), got {value!r}', param, ctx)
        return weights

#----------------------------------------------------------------------------
# --spectral-wavelet: any discrete PyWavelets wavelet name.

class WaveletName(click.ParamType):
    name = 'NAME'

    def convert(self, value, param, ctx):
        import pywt
        if value not in pywt.wavelist(kind='discrete'):
            self.fail(f'unknown discrete wavelet {value!r}; e.g. haar, bior1.3, db2 (see pywt.wavelist(kind="discrete"))', param, ctx)
        return value

#----------------------------------------------------------------------------
# --spectral-sigma-max: a positive number, or 'none'/'inf' for no cut-off.

class SigmaMax(click.ParamType):
    name = 'FLOAT'

    def convert(self, value, param, ctx):
        if value is None or str(value).lower() in ('none', 'inf'):
            return None
        try:
            s = float(value)
        except ValueError:
            self.fail(f'expected a positive number, got {value!r}', param, ctx)
        if not s > 0:
            self.fail(f'must be > 0, got {value!r}', param, ctx)
        return s

#----------------------------------------------------------------------------
# Click decorator adding the --spectral* options to a command. Used bare
# (@spectral_options) or with other defaults for a command, keyed by the
# parameter name (@spectral_options(spectral='wavelet', spectral_weight='1')).

_defaults = dict(spectral='none', spectral_weight='weighted', spectral_wavelet='haar', spectral_levels=3,
    spectral_level_weights=None, spectral_wavelet_mode='symmetric', spectral_reduction='sum', spectral_fft_norm='ortho',
    spectral_ap_form='product', spectral_phase_wrap=True, spectral_warmup=0, spectral_sigma_max=None, spectral_ddim_steps=1)

def spectral_options(f=None, **defaults):
    unknown = set(defaults) - set(_defaults)
    if unknown:
        raise TypeError(f'spectral_options: unknown defaults {sorted(unknown)}')
    if f is None:
        return lambda g: spectral_options(g, **defaults)
    d = dict(_defaults, **defaults)
    options = [
        click.option('--spectral',                help='Spectral regularizer on the predicted clean sample', metavar='none|fourier-amp|fourier-amp-phase|wavelet', type=click.Choice(_kinds), default=d['spectral'], show_default=True),
        click.option('--spectral-weight',         help='lambda: the loss\'s own noise weight, or a constant', metavar='weighted|FLOAT', type=SpectralWeight(), default=d['spectral_weight'], show_default=True),
        click.option('--spectral-wavelet',        help='Wavelet for --spectral=wavelet (any discrete PyWavelets name)', metavar='NAME', type=WaveletName(), default=d['spectral_wavelet'], show_default=True),
        click.option('--spectral-levels',         help='Wavelet decomposition levels (capped by the signal size)', metavar='INT', type=click.IntRange(min=1), default=d['spectral_levels'], show_default=True),
        click.option('--spectral-level-weights',  help='Wavelet gammas: LEVELS+1 comma-separated values, approximation first, then coarsest to finest level; a:b:c gives per-band (H:V:D) weights  [default: all 1]', metavar='LIST', type=LevelWeights(), default=d['spectral_level_weights']),
        click.option('--spectral-wavelet-mode',   help='Wavelet boundary mode, as in PyWavelets', metavar='MODE', type=click.Choice(_wavelet_modes), default=d['spectral_wavelet_mode'], show_default=True),
        click.option('--spectral-reduction',      help='L1 norms as sums or means over coefficients, per sample', metavar='sum|mean', type=click.Choice(['sum', 'mean']), default=d['spectral_reduction'], show_default=True),
        click.option('--spectral-fft-norm',       help='FFT normalisation', metavar='ortho|backward', type=click.Choice(['ortho', 'backward']), default=d['spectral_fft_norm'], show_default=True),
        click.option('--spectral-ap-form',        help='Amplitude+phase: printed product of norms, or per-frequency coupling', metavar='product|elementwise', type=click.Choice(['product', 'elementwise']), default=d['spectral_ap_form'], show_default=True),
        click.option('--spectral-phase-wrap',     help='Wrap phase differences into (-pi, pi]', metavar='BOOL', type=bool, default=d['spectral_phase_wrap'], show_default=True),
        click.option('--spectral-warmup',         help='Ramp lambda up linearly from 0 over this many kimg', metavar='KIMG', type=click.FloatRange(min=0), default=d['spectral_warmup'], show_default=True),
        click.option('--spectral-sigma-max',      help='Switch the term off for noise levels sigma >= this', metavar='FLOAT', type=SigmaMax(), default=d['spectral_sigma_max'], show_default='none' if d['spectral_sigma_max'] is None else True),
        click.option('--spectral-ddim-steps',     help='DDPM only: DDIM steps for the x0 estimate (1 = one-step estimate)', metavar='INT', type=click.IntRange(min=1), default=d['spectral_ddim_steps'], show_default=True),
    ]
    for option in reversed(options):
        f = option(f)
    return f

#----------------------------------------------------------------------------
# Map parsed options (the command's kwargs) to SpectralLoss arguments, or None
# when the term is off. Missing options take the defaults above.

def spectral_kwargs_from_options(opts):
    kind = opts.get('spectral', 'none') or 'none'
    if kind not in _kinds:
        raise click.ClickException(f'--spectral must be one of {", ".join(_kinds)}, got {kind!r}')
    if kind == 'none':
        return None
    weight = SpectralWeight().convert(opts.get('spectral_weight', 'weighted'), None, None)
    levels = int(opts.get('spectral_levels', 3))
    level_weights = LevelWeights().convert(opts.get('spectral_level_weights', None), None, None)
    if level_weights is not None:
        if kind != 'wavelet':
            raise click.ClickException('--spectral-level-weights applies to --spectral=wavelet only')
        if len(level_weights) != levels + 1:
            raise click.ClickException(f'--spectral-level-weights needs {levels + 1} values for --spectral-levels={levels} '
                f'(approximation, then levels {levels}..1), got {len(level_weights)}')
    sigma_max = SigmaMax().convert(opts.get('spectral_sigma_max', None), None, None)
    kwargs = dict(
        kind            = kind,
        weight          = weight,
        reduction       = opts.get('spectral_reduction', 'sum'),
        fft_norm        = opts.get('spectral_fft_norm', 'ortho'),
        ap_form         = opts.get('spectral_ap_form', 'product'),
        phase_wrap      = bool(opts.get('spectral_phase_wrap', True)),
        wavelet         = opts.get('spectral_wavelet', 'haar'),
        levels          = levels,
        level_weights   = level_weights,
        wavelet_mode    = opts.get('spectral_wavelet_mode', 'symmetric'),
        warmup_kimg     = float(opts.get('spectral_warmup', 0)),
        sigma_max       = sigma_max,
        ddim_steps      = int(opts.get('spectral_ddim_steps', 1)),
    )
    try:
        from training.spectral_loss import SpectralLoss
        SpectralLoss(**kwargs) # Validate the combination now, not at the first training step.
    except ValueError as e:
        raise click.ClickException(str(e)) from e
    return kwargs

#----------------------------------------------------------------------------

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

#----------------------------------------------------------------------------
