"""Spectral (Fourier and wavelet) regularizers on the predicted clean sample,
from "Spectral Regularization for Diffusion Models" (Chandran et al., 2026)."""

import numpy as np
import torch
from torch_utils import persistence

# This file is pickled into snapshots and exec'd by stock EDM when they are
# loaded, so it imports only numpy, torch and torch_utils at module level.
# pywt is imported lazily, and only when a wavelet loss is evaluated.

#----------------------------------------------------------------------------
# Options accepted by SpectralLoss.

_kinds          = ('fourier-amp', 'fourier-amp-phase', 'wavelet')
_reductions     = ('sum', 'mean')
_fft_norms      = ('ortho', 'backward')
_ap_forms       = ('product', 'elementwise')
_wavelet_modes  = ('symmetric', 'periodization', 'zero', 'constant', 'reflect', 'periodic')
_phase_eps      = 1e-12     # Floor on |z|^2 in the phase gradient: finite grads at zero amplitude.

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
# Wrap angles into (-pi, pi]; the gradient passes through unchanged.

def wrap_phase(d):
    return d - (2 * np.pi) * torch.ceil((d - np.pi) / (2 * np.pi)).detach()

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
# Decomposition filters of a PyWavelets wavelet, as conv1d weights [2, 1, F]
# (low-pass, high-pass), flipped because conv1d is a correlation.

_filter_cache = dict()

def wavelet_filters(name, device, dtype):
    key = (name, str(device), dtype)
    if key not in _filter_cache:
        import pywt # Lazy: stock EDM environments need not have it.
        try:
            wavelet = pywt.Wavelet(name)
        except ValueError as e:
            raise ValueError(f'Unknown discrete wavelet {name!r} (see pywt.wavelist(kind="discrete"))') from e
        dec_lo, dec_hi = wavelet.filter_bank[:2]
        bank = np.stack([np.asarray(dec_lo, dtype=np.float64)[::-1], np.asarray(dec_hi, dtype=np.float64)[::-1]])
        _filter_cache[key] = torch.as_tensor(bank.copy(), device=device).to(dtype).unsqueeze(1)
    return _filter_cache[key]

#----------------------------------------------------------------------------
# Indices into the signal (length n) that realise PyWavelets' signal
# extension at positions k (possibly outside [0, n)); index n means "zero".

def _extension_index(k, n, mode):
    if mode == 'symmetric':
        m = k % (2 * n)
        return np.where(m >= n, 2 * n - 1 - m, m)
    if mode == 'reflect':
        if n == 1:
            return np.zeros_like(k)
        m = k % (2 * n - 2)
        return np.where(m >= n, 2 * n - 2 - m, m)
    if mode in ('periodic', 'periodization'):
        return k % n
    if mode == 'constant':
        return np.clip(k, 0, n - 1)
    if mode == 'zero':
        return np.where((k < 0) | (k >= n), n, k)
    raise ValueError(f'Unsupported wavelet boundary mode {mode!r}; choose from {", ".join(_wavelet_modes)}')

#----------------------------------------------------------------------------
# Extend the last axis by left/right samples as PyWavelets does. Pads up to
# the signal length use slicing or F.pad (cheap, also backward); longer ones
# (tiny signals at deep levels) a gather.

_pad_modes = dict(zero='constant', constant='replicate', reflect='reflect', periodic='circular', periodization='circular')

def _extend(x, left, right, mode):
    n = x.shape[-1]
    if left == 0 and right == 0:
        return x
    if mode == 'symmetric' and max(left, right) <= n:
        return torch.cat([x[..., :left].flip(-1), x, x[..., n - right:].flip(-1)], dim=-1)
    lead = x.shape[:-1]
    x = x.reshape(-1, 1, n)
    if mode in _pad_modes and max(left, right) < n:
        return torch.nn.functional.pad(x, [left, right], mode=_pad_modes[mode]).reshape(*lead, n + left + right)
    idx = _extension_index(np.arange(-left, n + right), n, mode)
    if mode == 'zero':
        x = torch.nn.functional.pad(x, [0, 1])
    return x[..., torch.as_tensor(idx, device=x.device)].reshape(*lead, n + left + right)

#----------------------------------------------------------------------------
# Geometry of one DWT level on a length-n axis with an F-tap filter, chosen
# so that output i = sum_j f[j] * ext(x)[2i + 1 + s - j] as in PyWavelets
# (s = F/2 - 1 for 'periodization', which first pads odd lengths with the
# last sample; s = 0 otherwise). Returns (odd_pad, n_out, left, right).

def _dwt_geometry(n, F, mode):
    if mode == 'periodization':
        odd = n % 2
        n_out, start = (n + odd) // 2, F // 2 + 1 - F
        return odd, n_out, -start, start + 2 * (n_out - 1) + F - (n + odd)
    n_out, start = (n + F - 1) // 2, 2 - F
    return 0, n_out, -start, start + 2 * (n_out - 1) + F - n

def _prepare_axis(x, F, mode):
    odd, n_out, left, right = _dwt_geometry(x.shape[-1], F, mode)
    if odd:
        x = torch.cat([x, x[..., -1:]], dim=-1)
    return _extend(x, left, right, mode), n_out

#----------------------------------------------------------------------------
# One level of the 1-D DWT along the last axis, coefficient for coefficient
# equal to pywt.dwt(x, wavelet, mode). Returns [..., 2, n_out] (approx, detail).

def dwt1(x, filters, mode):
    F = filters.shape[-1]
    lead = x.shape[:-1]
    x, n_out = _prepare_axis(x, F, mode)
    if F == 2 and x.shape[-1] == 2 * n_out: # Haar without extension: disjoint pairs.
        y = x.reshape(-1, n_out, 2) @ filters[:, 0, :].t()
        return y.transpose(1, 2).reshape(*lead, 2, n_out)
    y = torch.nn.functional.conv1d(x.reshape(-1, 1, x.shape[-1]), filters, stride=2)
    return y.reshape(*lead, 2, n_out)

#----------------------------------------------------------------------------
# One level of the 2-D DWT over the last two axes, equal to pywt.dwt2.
# The separable filters are applied as one stride-2 conv2d with the four
# outer-product kernels. Returns [..., 4, H', W'], band 2h + w for pass h
# along H and w along W (0 = low, 1 = high): LL, cV, cH, cD in pywt's names.

def dwt2(x, filters, mode):
    F = filters.shape[-1]
    lead = x.shape[:-2]
    x, w_out = _prepare_axis(x, F, mode)
    x, h_out = _prepare_axis(x.transpose(-1, -2), F, mode)
    x = x.transpose(-1, -2)
    g = filters[:, 0, :]
    kernel = (g[:, None, :, None] * g[None, :, None, :]).reshape(4, F, F) # [2h + w, a, b] = g_h[a] g_w[b]
    if F == 2 and x.shape[-2:] == (2 * h_out, 2 * w_out): # Haar without extension: disjoint 2x2 blocks.
        y = torch.einsum('...iajb,kab->...kij', x.reshape(*lead, h_out, 2, w_out, 2), kernel)
        return y
    y = torch.nn.functional.conv2d(x.reshape(-1, 1, *x.shape[-2:]), kernel.unsqueeze(1), stride=2)
    return y.reshape(*lead, 4, h_out, w_out)

#----------------------------------------------------------------------------
# One DWT level on a length-n axis as a dense [2 * n_out, n] matrix (low-pass
# rows, then high-pass rows) with the boundary extension folded in. For short
# axes (images) a matmul is cheaper than a stride-2 convolution, notably in
# the backward pass on CPU.

_matrix_cache = dict()
_matrix_max_len = 256       # Longer axes (audio) use the convolution path.

def analysis_matrix(name, n, mode, device, dtype):
    key = (name, n, mode, str(device), dtype)
    if key not in _matrix_cache:
        g = wavelet_filters(name, 'cpu', torch.float64)[:, 0, :].numpy()
        F = g.shape[-1]
        odd, n_out, left, right = _dwt_geometry(n, F, mode)
        m = n + odd
        idx = _extension_index(np.arange(-left, m + right), m, mode)
        if odd:
            idx = np.minimum(idx, n - 1) # The odd-length pad repeats the last sample.
        rows = np.repeat(np.arange(n_out), F)
        taps = np.tile(np.arange(F), n_out)
        cols = idx[2 * rows + taps]
        A = np.zeros([2, n_out, n + 1]) # Column n collects the 'zero' mode's padding.
        for band in range(2):
            np.add.at(A[band], (rows, cols), g[band, taps])
        _matrix_cache[key] = torch.as_tensor(A[:, :, :n].reshape(2 * n_out, n), device=device).to(dtype)
    return _matrix_cache[key]

#----------------------------------------------------------------------------
# Multi-level DWT of [N, C, T] or [N, C, H, W], in pywt.wavedec / wavedec2
# order: [approx_J, details_J, ..., details_1], where details are one tensor
# [N, C, T_j] (1-D) or a tuple (cH, cV, cD) of [N, C, H_j, W_j] (2-D), with
# pywt's naming (cH: high-pass along H, low-pass along W).

def wavedec(x, name, mode, levels):
    details = []
    a = x
    for _ in range(levels):
        if max(a.shape[2:]) <= _matrix_max_len:
            A = analysis_matrix(name, a.shape[-1], mode, a.device, a.dtype)
            y = a @ A.t()
            w = A.shape[0] // 2
            if a.ndim == 3:
                a, d = y[..., :w], y[..., w:]
            else:
                B = analysis_matrix(name, a.shape[-2], mode, a.device, a.dtype)
                y = B @ y
                h = B.shape[0] // 2
                a, d = y[..., :h, :w], (y[..., h:, :w], y[..., :h, w:], y[..., h:, w:])
        else:
            filters = wavelet_filters(name, a.device, a.dtype)
            if a.ndim == 3:
                y = dwt1(a, filters, mode)
                a, d = y[:, :, 0], y[:, :, 1]
            else:
                y = dwt2(a, filters, mode)
                a, d = y[:, :, 0], (y[:, :, 2], y[:, :, 1], y[:, :, 3])
        details.append(d)
    return [a] + details[::-1]

#----------------------------------------------------------------------------
# Number of decomposition levels actually used for a signal of the given
# spatial shape: the requested count, capped at pywt.dwt_max_level (at least 1).

_levels_cache = dict()

def effective_levels(levels, shape, name):
    key = (levels, tuple(shape), name)
    if key not in _levels_cache:
        import pywt # Lazy: stock EDM environments need not have it.
        max_level = pywt.dwt_max_level(min(shape), pywt.Wavelet(name).dec_len)
        _levels_cache[key] = max(1, min(levels, max_level))
    return _levels_cache[key]

#----------------------------------------------------------------------------
# The paper's spectral regularizers L_S(x0_hat, x0) -> per-sample loss [N].
# Inputs are [N, C, T] (1-D, transform over T) or [N, C, H, W] (2-D, over
# H and W), per channel; the term is computed in float32 (float64 stays
# float64) with autocast disabled, whatever the input dtype.

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
        ddim_steps      = 1,            # DDPMLoss only: DDIM steps for the x0 estimate.
    ):
        if kind not in _kinds:
            raise ValueError(f'Unknown spectral loss kind {kind!r}; choose from {", ".join(_kinds)}')
        if isinstance(weight, str):
            if weight != 'weighted':
                raise ValueError(f"Spectral weight must be 'weighted' or a number, got {weight!r}")
        else:
            weight = float(weight)
            if not np.isfinite(weight) or weight < 0:
                raise ValueError(f'Spectral weight must be a finite number >= 0, got {weight}')
        if reduction not in _reductions:
            raise ValueError(f'Unknown reduction {reduction!r}; choose from {", ".join(_reductions)}')
        if fft_norm not in _fft_norms:
            raise ValueError(f'Unknown FFT normalisation {fft_norm!r}; choose from {", ".join(_fft_norms)}')
        if ap_form not in _ap_forms:
            raise ValueError(f'Unknown amplitude-phase form {ap_form!r}; choose from {", ".join(_ap_forms)}')
        if wavelet_mode not in _wavelet_modes:
            raise ValueError(f'Unsupported wavelet boundary mode {wavelet_mode!r}; choose from {", ".join(_wavelet_modes)}')
        levels = int(levels)
        if levels < 1:
            raise ValueError(f'Wavelet levels must be >= 1, got {levels}')
        if level_weights is not None:
            level_weights = [[float(v) for v in w] if isinstance(w, (list, tuple)) else float(w) for w in level_weights]
            level_weights = [w[0] if isinstance(w, list) and len(w) == 1 else w for w in level_weights]
            if len(level_weights) != levels + 1:
                raise ValueError(f'level_weights needs {levels + 1} entries (approximation, then levels {levels}..1), got {len(level_weights)}')
        if kind == 'wavelet':
            wavelet_filters(wavelet, 'cpu', torch.float64) # Fail early on an unknown wavelet name.
        warmup_kimg = float(warmup_kimg)
        if warmup_kimg < 0:
            raise ValueError(f'warmup_kimg must be >= 0, got {warmup_kimg}')
        if sigma_max is not None:
            sigma_max = float(sigma_max)
            if not sigma_max > 0:
                raise ValueError(f'sigma_max must be > 0, got {sigma_max}')
        ddim_steps = int(ddim_steps)
        if ddim_steps < 1:
            raise ValueError(f'ddim_steps must be >= 1, got {ddim_steps}')

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
        sigma = torch.as_tensor(sigma, dtype=torch.float32)
        sigma = sigma.reshape(sigma.shape[0], -1)[:, 0] if sigma.ndim > 0 else sigma.reshape(1)
        if self.weight == 'weighted':
            lam = torch.as_tensor(base_weight, dtype=torch.float32, device=sigma.device)
            lam = lam.reshape(lam.shape[0], -1)[:, 0] if lam.ndim > 0 else lam.reshape(1)
            lam = lam.expand(sigma.shape)
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
    # (level, band), LL included.
    def _wavelet(self, x0_hat, x0):
        N = x0.shape[0]
        spatial = x0.shape[2:]
        J = effective_levels(self.levels, spatial, self.wavelet)
        gammas = [1.0] * (J + 1) if self.level_weights is None else [self.level_weights[0]] + self.level_weights[len(self.level_weights) - J:]
        diff = wavedec(x0_hat - x0, self.wavelet, self.wavelet_mode, J) # The DWT is linear: transform the difference once.
        total = 0
        for j, (coeffs, gamma) in enumerate(zip(diff, gammas)):
            bands = [coeffs] if (j == 0 or x0.ndim == 3) else list(coeffs)
            gamma = list(gamma) if isinstance(gamma, list) else [gamma] * len(bands)
            if len(gamma) != len(bands):
                raise ValueError(f'level_weights entry {j} has {len(gamma)} band weights; this level has {len(bands)} bands')
            for band, g in zip(bands, gamma):
                norm = band.abs().reshape(N, -1)
                norm = norm.mean(dim=1) if self.reduction == 'mean' else norm.sum(dim=1)
                total = total + g * norm
        return total

    def __repr__(self):
        args = ', '.join(f'{k}={v!r}' for k, v in self.__dict__.items() if not k.startswith('_'))
        return f'SpectralLoss({args})'

#----------------------------------------------------------------------------
