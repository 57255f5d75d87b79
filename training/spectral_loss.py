"""Spectral (Fourier and wavelet) regularizers on the predicted clean sample,
from "Spectral Regularization for Diffusion Models" (Chandran et al., 2026)."""

import numpy as np
import torch
from torch_utils import persistence

# This file is pickled into snapshots and exec'd by stock EDM when they are
# loaded, so it imports only numpy, torch and torch_utils at module level.
# ptwt (the wavelet transform) and pywt (wavelet names) are imported lazily.

#----------------------------------------------------------------------------
# The values each string option of SpectralLoss accepts; its signature gives
# the defaults. The --spectral* CLI options are derived from both.

CHOICES = dict(
    kind            = ('fourier-amp', 'fourier-amp-phase', 'wavelet'),
    reduction       = ('sum', 'mean'),
    fft_norm        = ('ortho', 'backward'),
    ap_form         = ('product', 'elementwise'),
    wavelet_mode    = ('symmetric', 'zero', 'constant', 'reflect', 'periodic'), # ptwt's boundary modes.
)

_phase_eps = 1e-12 # Floor on |z|^2 in the phase gradient: finite grads at zero amplitude.

#----------------------------------------------------------------------------
# Phase of a complex tensor whose gradient stays finite at zero amplitude.
# The value is exactly torch.angle(); the gradient is that of atan2 with
# |z|^2 replaced by |z|^2 + eps, so z = 0 gets a zero gradient, not NaN.

def safe_angle(z):
    x, y = z.real.contiguous(), z.imag.contiguous() # Strided views make atan2 ~50x slower on CPU.
    xd, yd = x.detach(), y.detach()
    phi = torch.atan2(yd, xd)
    if not (x.requires_grad or y.requires_grad):
        return phi
    r2 = xd * xd + yd * yd + _phase_eps
    return phi + (xd * y - yd * x) / r2 # The numerator is exactly zero in the forward pass.

#----------------------------------------------------------------------------
# Multiplicity of each rfft bin in the full FFT over the last axis of length n
# (bins 0 and n/2 occur once, the others twice as themselves and their mirror).

def _hermitian_weights(n, device, dtype):
    w = torch.full([n // 2 + 1], 2, device=device, dtype=dtype)
    w[0] = 1
    if n % 2 == 0:
        w[-1] = 1
    return w

#----------------------------------------------------------------------------
# Number of decomposition levels used for a signal of the given spatial
# shape: the requested count, capped at pywt.dwt_max_level (at least 1).

_levels_cache = dict()

def effective_levels(levels, shape, name):
    key = (levels, tuple(shape), name)
    if key not in _levels_cache:
        import pywt # Lazy, see above.
        max_level = pywt.dwt_max_level(min(shape), pywt.Wavelet(name).dec_len)
        _levels_cache[key] = max(1, min(levels, max_level))
    return _levels_cache[key]

#----------------------------------------------------------------------------
# Multi-level DWT of [N, C, T] or [N, C, H, W] by ptwt, equal to pywt.wavedec
# / wavedec2: [approx_J, details_J, ..., details_1], a detail being [N, C, T_j]
# (1-D) or (cH, cV, cD) (2-D). 'reflect' and 'periodic' would repeat a signal
# shorter than the filter more than once, which ptwt refuses.

def wavedec(x, name, mode, levels):
    import ptwt, pywt # Lazy, see above.
    filter_len = pywt.Wavelet(name).dec_len
    if mode in ('reflect', 'periodic') and min(x.shape[2:]) < filter_len:
        raise ValueError(f'Wavelet mode {mode!r} needs signals at least as long as the {name} filter ({filter_len}), '
            f'got spatial shape {tuple(x.shape[2:])}; use symmetric, zero or constant')
    transform = ptwt.wavedec2 if x.ndim == 4 else ptwt.wavedec
    return transform(x, name, mode=mode, level=levels)

#----------------------------------------------------------------------------
# The paper's spectral regularizers L_S(x0_hat, x0) -> per-sample loss [N],
# with the schedule of lambda (multiplier) and the DDIM roll-out length that
# the losses using it share. Inputs are [N, C, T] (1-D, transform over T) or
# [N, C, H, W] (2-D, over H and W), per channel; the term is computed in
# float32 (float64 stays float64) with autocast off, whatever the input dtype.

@persistence.persistent_class
class SpectralLoss:
    def __init__(self,
        kind,                           # 'fourier-amp', 'fourier-amp-phase' or 'wavelet'.
        weight          = 'weighted',   # lambda: 'weighted' = the base loss's lambda(sigma), or a constant.
        reduction       = 'sum',        # L1 norms as 'sum' or 'mean' over coefficients, per sample.
        fft_norm        = 'ortho',      # torch.fft normalisation: 'ortho' or 'backward'.
        ap_form         = 'product',    # 'product' (printed formula) or 'elementwise' (per frequency).
        phase_wrap      = True,         # Wrap the phase difference into (-pi, pi]?
        wavelet         = 'haar',       # Any discrete PyWavelets wavelet name.
        levels          = 3,            # Wavelet levels J, capped at pywt.dwt_max_level.
        level_weights   = None,         # gamma: None = all 1; else J+1 entries, pywt.wavedec order.
        wavelet_mode    = 'symmetric',  # Boundary mode as in PyWavelets (its default).
        warmup_kimg     = 0,            # Ramp lambda linearly from 0 over this many kimg.
        sigma_max       = None,         # Switch the term off where sigma >= sigma_max.
        ddim_steps      = 1,            # Losses with discrete steps: DDIM steps for the x0 estimate.
    ):
        # Every check of the options is here; messages start with 'arg=value:' (the CLI names its option there).
        def fail(arg, value, why):
            raise ValueError(f'{arg}={value!r}: {why}')
        def number(arg, value, low, strict=False):
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not np.isfinite(value) or value < low or (strict and value == low):
                fail(arg, value, f'must be a finite number {">" if strict else ">="} {low}')
            return float(value)
        def integer(arg, value):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                fail(arg, value, 'must be an integer >= 1')
            return int(value)
        for arg, value in dict(kind=kind, reduction=reduction, fft_norm=fft_norm, ap_form=ap_form, wavelet_mode=wavelet_mode).items():
            if value not in CHOICES[arg]:
                hint = " (ptwt has no such mode; 'periodic' also wraps around)" if value == 'periodization' else ''
                fail(arg, value, f'choose from {", ".join(CHOICES[arg])}{hint}')
        if isinstance(weight, str) and weight != 'weighted':
            fail('weight', weight, "must be 'weighted' or a number >= 0")
        weight = weight if weight == 'weighted' else number('weight', weight, 0)
        levels = integer('levels', levels)
        if kind == 'wavelet':
            import pywt # Lazy, see above.
            if wavelet not in pywt.wavelist(kind='discrete'):
                fail('wavelet', wavelet, 'not a discrete PyWavelets wavelet (e.g. haar, bior1.3, db2; see pywt.wavelist(kind="discrete"))')
        if level_weights is not None:
            if kind != 'wavelet':
                fail('level_weights', level_weights, 'applies to the wavelet term only')
            if len(level_weights) != levels + 1:
                fail('level_weights', level_weights, f'needs {levels + 1} values for levels={levels} (approximation, then levels {levels}..1), got {len(level_weights)}')
            gammas = []
            for w in level_weights:
                bands = [number('level_weights', v, 0) for v in w] if isinstance(w, (list, tuple)) else [number('level_weights', w, 0)]
                if len(bands) not in (1, 3):
                    fail('level_weights', level_weights, 'a level takes 1 weight or 3 band weights (H, V, D)')
                gammas.append(bands[0] if len(bands) == 1 else bands)
            level_weights = gammas
        warmup_kimg = number('warmup_kimg', warmup_kimg, 0)
        sigma_max = None if sigma_max is None else number('sigma_max', sigma_max, 0, strict=True)
        ddim_steps = integer('ddim_steps', ddim_steps)

        self.kind = kind
        self.weight = weight
        self.reduction = reduction
        self.fft_norm = fft_norm
        self.ap_form = ap_form
        self.phase_wrap = bool(phase_wrap)
        self.wavelet = wavelet
        self.levels = levels
        self.level_weights = level_weights
        self.wavelet_mode = wavelet_mode
        self.warmup_kimg = warmup_kimg
        self.sigma_max = sigma_max
        self.ddim_steps = ddim_steps

    # Per-sample multiplier of L_S: lambda (the base weight lambda(sigma) or a
    # constant) times the warm-up ramp, zero where sigma >= sigma_max.
    def multiplier(self, base_weight, sigma, cur_kimg=0):
        per_sample = lambda t: t.reshape(t.shape[0], -1)[:, 0] if t.ndim > 0 else t.reshape(1)
        sigma = per_sample(torch.as_tensor(sigma, dtype=torch.float32))
        if self.weight == 'weighted':
            lam = per_sample(torch.as_tensor(base_weight, dtype=torch.float32, device=sigma.device)).expand(sigma.shape)
        else:
            lam = torch.full_like(sigma, self.weight)
        if self.warmup_kimg > 0:
            lam = lam * min(max(float(cur_kimg), 0.0) / self.warmup_kimg, 1.0)
        if self.sigma_max is not None:
            lam = torch.where(sigma >= self.sigma_max, torch.zeros_like(lam), lam)
        return lam

    # Per-sample spectral distance between prediction and target.
    def __call__(self, x0_hat, x0):
        if x0_hat.shape != x0.shape:
            raise ValueError(f'Spectral loss: prediction {tuple(x0_hat.shape)} and target {tuple(x0.shape)} differ in shape')
        if x0.ndim not in (3, 4):
            raise ValueError(f'Spectral loss expects [N, C, T] or [N, C, H, W], got shape {tuple(x0.shape)}')
        dtype = torch.promote_types(torch.promote_types(x0_hat.dtype, x0.dtype), torch.float32)
        with torch.autocast(device_type=x0.device.type, enabled=False):
            x0_hat = x0_hat.to(dtype)
            x0 = x0.to(dtype)
            if self.kind == 'wavelet':
                return self._wavelet(x0_hat, x0)
            return self._fourier(x0_hat, x0)

    # L1 between FFT amplitudes, optionally gated by the phase difference. The
    # real FFT holds half the spectrum; each bin is weighted by its
    # multiplicity, so the result equals the formula over the full FFT.
    def _fourier(self, x0_hat, x0):
        N = x0.shape[0]
        dims = tuple(range(2, x0.ndim))
        count = int(np.prod(x0.shape[1:]))
        Z_hat = torch.fft.rfftn(x0_hat, dim=dims, norm=self.fft_norm)
        Z = torch.fft.rfftn(x0, dim=dims, norm=self.fft_norm)
        mult = _hermitian_weights(x0.shape[-1], x0.device, x0.dtype)
        dA = (Z.abs() - Z_hat.abs()).abs()
        reduce = lambda t: (t * mult).reshape(N, -1).sum(dim=1) / (count if self.reduction == 'mean' else 1)
        if self.kind == 'fourier-amp':
            return reduce(dA)
        if self.phase_wrap: # arg(Z conj(Z_hat)) is the wrapped difference, with one atan2 instead of two.
            dphi = safe_angle(Z * Z_hat.conj()).abs()
        else:
            dphi = (safe_angle(Z) - safe_angle(Z_hat)).abs()
        if self.ap_form == 'elementwise':
            return reduce(dA * (1 + dphi))
        gate = 1 + (dphi * mult).reshape(N, -1).sum(dim=1) / count # Mean over coefficients, whatever the reduction.
        return reduce(dA) * gate

    # Weighted L1 between multi-level wavelet coefficients, one norm per
    # (level, band), LL included. Levels capped by the size keep the
    # approximation weight and the finest levels' weights.
    def _wavelet(self, x0_hat, x0):
        N = x0.shape[0]
        J = effective_levels(self.levels, x0.shape[2:], self.wavelet)
        gammas = [1.0] * (J + 1) if self.level_weights is None else [self.level_weights[0]] + self.level_weights[len(self.level_weights) - J:]
        diff = wavedec(x0_hat - x0, self.wavelet, self.wavelet_mode, J) # The DWT is linear: transform the difference once.
        total = 0
        for j, (coeffs, gamma) in enumerate(zip(diff, gammas)):
            bands = [coeffs] if (j == 0 or x0.ndim == 3) else list(coeffs)
            gamma = gamma if isinstance(gamma, list) else [gamma] * len(bands)
            if len(gamma) != len(bands):
                raise ValueError(f'level_weights entry {j} has {len(gamma)} band weights; this level of a {x0.ndim - 2}-D signal has {len(bands)} band(s)')
            for band, g in zip(bands, gamma):
                norm = band.abs().reshape(N, -1)
                norm = norm.mean(dim=1) if self.reduction == 'mean' else norm.sum(dim=1)
                total = total + g * norm
        return total

    def __repr__(self):
        args = ', '.join(f'{k}={v!r}' for k, v in self.__dict__.items() if not k.startswith('_'))
        return f'SpectralLoss({args})'

#----------------------------------------------------------------------------
