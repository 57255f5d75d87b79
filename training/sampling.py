"""The samplers of "Elucidating the Design Space of Diffusion-Based Generative Models" (Karras et
al., 2022) and the per-seed machinery around them: noise level discretizations, the EDM and the
generalized ablation sampler, per-seed random streams, seed batching and EDM's uint8 quantisation.
generate.py is the command line on top of this module."""

import functools
import inspect
import re
from typing import Callable, NamedTuple

import numpy as np
import torch
import tqdm

#----------------------------------------------------------------------------
# Noise levels of the EDM discretization (Eq. 5): equal steps in sigma^(1/rho) from sigma_max
# down to sigma_min, in float64.

def edm_sigma_steps(num_steps, sigma_min, sigma_max, rho, device=None):
    i = torch.arange(num_steps, dtype=torch.float64, device=device)
    first, last = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return (first + i / (num_steps - 1) * (last - first)) ** rho

def _check_num_steps(num_steps):
    if int(num_steps) != num_steps or num_steps < 2:
        raise ValueError(f'num_steps must be an integer >= 2 (the step size is 1/(num_steps-1)), got {num_steps}')

#----------------------------------------------------------------------------
# The EDM sampler (Algorithm 2 of the paper): Heun's 2nd order method on the probability
# flow ODE with optional stochastic churn. Runs in float64 outside the network.

def edm_sampler(
    net, latents, class_labels=None, randn_like=torch.randn_like,
    num_steps=18, sigma_min=0.002, sigma_max=80, rho=7,
    S_churn=0, S_min=0, S_max=float('inf'), S_noise=1,
):
    _check_num_steps(num_steps)

    # Stay inside the noise range the network supports.
    sigma_min = max(sigma_min, net.sigma_min)
    sigma_max = min(sigma_max, net.sigma_max)

    # t_0 > ... > t_{N-1} snapped to the network's grid, then t_N = 0.
    t_steps = net.round_sigma(edm_sigma_steps(num_steps, sigma_min, sigma_max, rho, device=latents.device))
    t_steps = torch.cat([t_steps, t_steps.new_zeros([1])])
    gamma_churn = min(S_churn / num_steps, np.sqrt(2) - 1)

    x_next = latents.to(torch.float64) * t_steps[0]
    for i in range(num_steps):
        x_cur, t_cur, t_next = x_next, t_steps[i], t_steps[i + 1]

        # Raise the noise level to t_hat. The noise is drawn on every step, churn or not, so
        # that each seed's random stream advances exactly as in the reference.
        gamma = gamma_churn if S_min <= t_cur <= S_max else 0
        t_hat = net.round_sigma(t_cur + gamma * t_cur)
        x_hat = x_cur + (t_hat ** 2 - t_cur ** 2).sqrt() * S_noise * randn_like(x_cur)

        # Euler step from t_hat to t_next.
        d_cur = (x_hat - net(x_hat, t_hat, class_labels).to(torch.float64)) / t_hat
        x_next = x_hat + (t_next - t_hat) * d_cur

        # Heun correction: average the slopes at both ends (not possible at t_N = 0).
        if i < num_steps - 1:
            d_prime = (x_next - net(x_next, t_next, class_labels).to(torch.float64)) / t_next
            x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)

    return x_next

#----------------------------------------------------------------------------
# VP noise level sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1), its time derivative and
# its inverse. Works on python floats and float64 tensors.

def _vp_sigma(t, beta_d, beta_min):
    return (np.e ** (0.5 * beta_d * (t ** 2) + beta_min * t) - 1) ** 0.5

def _vp_sigma_deriv(t, beta_d, beta_min):
    sigma = _vp_sigma(t, beta_d, beta_min)
    return 0.5 * (beta_min + beta_d * t) * (sigma + 1 / sigma)

def _vp_sigma_inv(sigma, beta_d, beta_min):
    return ((beta_min ** 2 + 2 * beta_d * (sigma ** 2 + 1).log()).sqrt() - beta_min) / beta_d

#----------------------------------------------------------------------------
# The noise levels u_0 > ... > u_M = 0 of improved DDPM (cosine schedule). alpha_bar is
# evaluated one 0-d float32 tensor at a time, as the reference does, so the levels match it
# bit for bit on every device. That loop takes ~0.1 s for M=1000; the levels of each (M, C_1,
# C_2, device) are computed once, and every call gets its own copy.

def iddpm_sigma_levels(M=1000, C_1=0.001, C_2=0.008, device=None):
    return _iddpm_sigma_levels(M, C_1, C_2, device).clone()

@functools.lru_cache(maxsize=16, typed=True)
def _iddpm_sigma_levels(M, C_1, C_2, device):
    def alpha_bar(j):
        return (0.5 * np.pi * j / M / (C_2 + 1)).sin() ** 2
    u = torch.zeros(M + 1, dtype=torch.float64, device=device)
    for j in torch.arange(M, 0, -1, device=device):
        u[j - 1] = ((u[j] ** 2 + 1) / (alpha_bar(j - 1) / alpha_bar(j)).clip(min=C_1) - 1).sqrt()
    return u

#----------------------------------------------------------------------------
# The generalized sampler of Section 3 of the paper: any ODE solver, time step discretization,
# noise schedule sigma(t) and signal scaling s(t) of its ablations. Its options, as offered by
# generate.py; the EDM sampler corresponds to heun / edm / linear / none.

ABLATION_CHOICES = dict(
    solver=('euler', 'heun'),
    discretization=('vp', 've', 'iddpm', 'edm'),
    schedule=('vp', 've', 'linear'),
    scaling=('vp', 'none'),
)

# Keyword arguments that only the ablation sampler knows: any of them selects it.
ABLATION_OPTIONS = (*ABLATION_CHOICES, 'epsilon_s', 'C_1', 'C_2', 'M', 'alpha')

# Noise range of a discretization when the caller gives none. VP spans the VP-SDE of the paper
# (beta_d = 19.9, beta_min = 0.1) from t = 1 down to t = epsilon_s.
def _default_sigma_range(discretization, epsilon_s):
    if discretization == 'vp':
        return _vp_sigma(epsilon_s, 19.9, 0.1), _vp_sigma(1, 19.9, 0.1)
    return {'ve': (0.02, 100), 'iddpm': (0.002, 81), 'edm': (0.002, 80)}[discretization]

# The VP-SDE (beta_d, beta_min) that meets the noise range: sigma(1) = sigma_max and
# sigma(epsilon_s) = sigma_min.
def _vp_betas_for_range(sigma_min, sigma_max, epsilon_s):
    log_top = np.log(sigma_max ** 2 + 1)
    beta_d = 2 * (np.log(sigma_min ** 2 + 1) / epsilon_s - log_top) / (epsilon_s - 1)
    return beta_d, log_top - 0.5 * beta_d

# Noise levels sigma_0 > ... > sigma_{N-1} of each discretization, in float64.
def _ablation_sigma_steps(discretization, num_steps, sigma_min, sigma_max, rho, epsilon_s, vp_betas, iddpm_kwargs, device):
    if discretization == 'edm':
        return edm_sigma_steps(num_steps, sigma_min, sigma_max, rho, device=device)
    index = torch.arange(num_steps, dtype=torch.float64, device=device)
    if discretization == 'vp':  # uniform in t from 1 to epsilon_s
        return _vp_sigma(1 + index / (num_steps - 1) * (epsilon_s - 1), *vp_betas)
    if discretization == 've':  # geometric in sigma^2
        return ((sigma_max ** 2) * ((sigma_min ** 2 / sigma_max ** 2) ** (index / (num_steps - 1)))).sqrt()
    levels = iddpm_sigma_levels(**iddpm_kwargs, device=device)
    levels = levels[(levels >= sigma_min) & (levels <= sigma_max)]
    if len(levels) == 0:
        raise ValueError(f'no iDDPM noise level lies in [{sigma_min}, {sigma_max}]')
    return levels[((len(levels) - 1) / (num_steps - 1) * index).round().to(torch.int64)]

# A noise schedule: sigma(t), its derivative in t, and the t of a given sigma.
class _NoiseSchedule(NamedTuple):
    sigma: Callable
    deriv: Callable
    time_of: Callable

def _noise_schedule(name, vp_betas):
    if name == 'vp':
        return _NoiseSchedule(sigma=lambda t: _vp_sigma(t, *vp_betas), deriv=lambda t: _vp_sigma_deriv(t, *vp_betas),
            time_of=lambda sigma: _vp_sigma_inv(sigma, *vp_betas))
    if name == 've':  # sigma^2 = t
        return _NoiseSchedule(sigma=lambda t: t.sqrt(), deriv=lambda t: 0.5 / t.sqrt(), time_of=lambda sigma: sigma ** 2)
    return _NoiseSchedule(sigma=lambda t: t, deriv=lambda t: 1, time_of=lambda sigma: sigma)

# Signal scaling s(t) and its derivative; VP keeps the variance of the scaled state at one.
def _signal_scaling(name, schedule):
    if name == 'none':
        return (lambda t: 1), (lambda t: 0)
    scale = lambda t: 1 / (1 + schedule.sigma(t) ** 2).sqrt()
    return scale, (lambda t: -schedule.sigma(t) * schedule.deriv(t) * (scale(t) ** 3))

def ablation_sampler(net, latents, class_labels=None, randn_like=torch.randn_like,
        num_steps=18, sigma_min=None, sigma_max=None, rho=7,                            # time steps
        solver='heun', discretization='edm', schedule='linear', scaling='none',         # the ablated choices
        epsilon_s=1e-3, C_1=0.001, C_2=0.008, M=1000, alpha=1,                          # their constants
        S_churn=0, S_min=0, S_max=float('inf'), S_noise=1):                             # stochasticity
    chosen = dict(solver=solver, discretization=discretization, schedule=schedule, scaling=scaling)
    for option, value in chosen.items():
        if value not in ABLATION_CHOICES[option]:
            raise ValueError(f'{option} must be one of {"|".join(ABLATION_CHOICES[option])}, got {value!r}')
    _check_num_steps(num_steps)
    if not alpha > 0:
        raise ValueError(f'alpha must be positive, got {alpha}')

    # The noise range, within what the network supports, and the VP-SDE that spans it.
    default_min, default_max = _default_sigma_range(discretization, epsilon_s)
    sigma_min = max(default_min if sigma_min is None else sigma_min, net.sigma_min)
    sigma_max = min(default_max if sigma_max is None else sigma_max, net.sigma_max)
    vp_betas = _vp_betas_for_range(sigma_min, sigma_max, epsilon_s) if 'vp' in (discretization, schedule) else None

    sched = _noise_schedule(schedule, vp_betas)
    sigma = sched.sigma
    scale, scale_deriv = _signal_scaling(scaling, sched)

    # Right-hand side of the probability flow ODE for the scaled state x = s(t) * x_unscaled.
    def velocity(x, t):
        denoised = net(x / scale(t), sigma(t), class_labels).to(torch.float64)
        return (sched.deriv(t) / sigma(t) + scale_deriv(t) / scale(t)) * x - sched.deriv(t) * scale(t) / sigma(t) * denoised

    # Times of the network-rounded noise levels, closed by t_N = 0.
    levels = _ablation_sigma_steps(discretization, num_steps, sigma_min, sigma_max, rho, epsilon_s, vp_betas,
        dict(M=M, C_1=C_1, C_2=C_2), latents.device)
    times = sched.time_of(net.round_sigma(levels))
    times = torch.cat([times, times.new_zeros([1])])
    churn = min(S_churn / num_steps, np.sqrt(2) - 1)
    heun_weight = 1 / (2 * alpha)  # weight of the second slope

    x = latents.to(torch.float64) * (sigma(times[0]) * scale(times[0]))
    for step in range(num_steps):
        t_from, t_to = times[step], times[step + 1]

        # Churn: move up to sigma(t_hat), rescaling the state to s(t_hat). Noise is drawn on
        # every step, churn or not (see edm_sampler).
        sigma_from = sigma(t_from)
        boost = churn if S_min <= sigma_from <= S_max else 0
        t_hat = sched.time_of(net.round_sigma(sigma_from + boost * sigma_from))
        added_std = (sigma(t_hat) ** 2 - sigma_from ** 2).clip(min=0).sqrt() * scale(t_hat) * S_noise
        x_hat = scale(t_hat) / scale(t_from) * x + added_std * randn_like(x)

        # First slope; on the last step, or for Euler, a plain Euler step.
        h = t_to - t_hat
        slope = velocity(x_hat, t_hat)
        if solver == 'euler' or step == num_steps - 1:
            x = x_hat + h * slope
            continue

        # Second order: a second slope at t_hat + alpha * h, then the weighted mix of both.
        slope_ahead = velocity(x_hat + alpha * h * slope, t_hat + alpha * h)
        x = x_hat + h * ((1 - heun_weight) * slope + heun_weight * slope_ahead)

    return x

#----------------------------------------------------------------------------
# The noise range sample_batch() asks for with these keyword arguments (the given bounds, else
# the defaults of the sampler they select), checked before any work: a finite range with
# 0 < sigma_min < sigma_max. The network may narrow it further to its own range.

def check_sigma_range(sigma_min=None, sigma_max=None, **sampler_kwargs):
    if {name for name, value in sampler_kwargs.items() if value is not None} & set(ABLATION_OPTIONS):
        defaults = inspect.signature(ablation_sampler).parameters
        discretization, epsilon_s = [defaults[name].default if sampler_kwargs.get(name) is None else sampler_kwargs[name]
            for name in ('discretization', 'epsilon_s')]
        if discretization not in ABLATION_CHOICES['discretization']:
            raise ValueError(f'discretization must be one of {"|".join(ABLATION_CHOICES["discretization"])}, got {discretization!r}')
        default_min, default_max = _default_sigma_range(discretization, epsilon_s)
        sampler = f'the {discretization} discretization'
    else:
        defaults = inspect.signature(edm_sampler).parameters
        default_min, default_max = defaults['sigma_min'].default, defaults['sigma_max'].default
        sampler = 'the EDM sampler'
    lo = default_min if sigma_min is None else sigma_min
    hi = default_max if sigma_max is None else sigma_max
    for name, value in [('sigma_min', sigma_min), ('sigma_max', sigma_max)]:
        if value is not None and not 0 < value < float('inf'):
            raise ValueError(f'{name} must be a finite number > 0, got {value}')
    if not lo < hi:
        describe = lambda name, value, given: f'{name}={value:g}' + ('' if given else f' (the default of {sampler})')
        raise ValueError(f'the noise range is empty: {describe("sigma_min", lo, sigma_min is not None)} '
            f'must be smaller than {describe("sigma_max", hi, sigma_max is not None)}')
    return float(lo), float(hi)

#----------------------------------------------------------------------------
# Per-sample random streams: image i of a batch always draws from its own generator seeded with
# its seed, so an image depends only on its seed, never on the batch it lands in.

class StackedRandomGenerator:
    def __init__(self, device, seeds):
        self.generators = [torch.Generator(device).manual_seed(int(seed) % (1 << 32)) for seed in seeds]

    def _check(self, size):
        if size[0] != len(self.generators):
            raise ValueError(f'batch dimension {size[0]} does not match the number of seeds ({len(self.generators)})')

    def randn(self, size, **kwargs):
        self._check(size)
        return torch.stack([torch.randn(size[1:], generator=g, **kwargs) for g in self.generators])

    def randn_like(self, input):
        return self.randn(input.shape, dtype=input.dtype, layout=input.layout, device=input.device)

    def randint(self, *args, size, **kwargs):
        self._check(size)
        return torch.stack([torch.randint(*args, size=size[1:], generator=g, **kwargs) for g in self.generators])

#----------------------------------------------------------------------------
# Parse a comma separated list of integers and inclusive ranges: '0-3,10' -> [0, 1, 2, 3, 10].

def parse_int_list(s):
    if not isinstance(s, str):
        return [int(x) for x in s]  # already a sequence (list, range, tensor, ...)
    values = []
    for part in str(s).split(','):
        part = part.strip()
        m = re.fullmatch(r'(\d+)-(\d+)', part)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            if hi < lo:
                raise ValueError(f'empty range "{part}" in "{s}"')
            values.extend(range(lo, hi + 1))
        elif re.fullmatch(r'\d+', part):
            values.append(int(part))
        else:
            raise ValueError(f'"{part}" in "{s}" is not an integer (>= 0) or a range like 0-63')
    return values

#----------------------------------------------------------------------------
# Split the seeds into batches over all ranks as the reference does: the same number of
# batches on every rank, and rank r takes every W-th batch starting at r.

def split_seeds(seeds, max_batch_size, rank=0, world_size=1):
    num_batches = ((len(seeds) - 1) // (max_batch_size * world_size) + 1) * world_size
    all_batches = torch.as_tensor(seeds, dtype=torch.int64).tensor_split(num_batches)
    return all_batches[rank :: world_size]

#----------------------------------------------------------------------------
# Sample one batch, drawing from the per-seed streams in EDM's order: the latents, then a
# random label per image (conditional networks only; the draw happens even when class_idx
# then fixes the label), then whatever noise the sampler asks for. Returns float64 [B, C, H, W].

def _initial_noise_and_labels(net, rnd, batch_size, device, class_idx):
    shape = [batch_size, net.img_channels, net.img_resolution, net.img_resolution]
    noise = rnd.randn(shape, device=device)
    if not net.label_dim:
        return noise, None
    label_index = rnd.randint(net.label_dim, size=[batch_size], device=device)
    if class_idx is not None:
        label_index = torch.full_like(label_index, class_idx)
    return noise, torch.eye(net.label_dim, device=device)[label_index]

def sample_batch(net, batch_seeds, device, class_idx=None, **sampler_kwargs):
    if class_idx is not None and not (0 <= class_idx < net.label_dim):
        raise ValueError(f'class index {class_idx} needs a class-conditional network with more than {class_idx} '
            f'classes; this network has label_dim={net.label_dim}' + (' (unconditional)' if not net.label_dim else ''))
    device = torch.device(device)
    rnd = StackedRandomGenerator(device, batch_seeds)
    noise, labels = _initial_noise_and_labels(net, rnd, len(batch_seeds), device, class_idx)

    given = {name: value for name, value in sampler_kwargs.items() if value is not None}  # None = the sampler's default
    sampler = ablation_sampler if set(given) & set(ABLATION_OPTIONS) else edm_sampler
    return sampler(net, noise, labels, randn_like=rnd.randn_like, **given)

#----------------------------------------------------------------------------
# Library entry point: sample one image per seed in a single process and return them as a
# uint8 tensor [N, C, H, W] on the CPU. Same images as the CLI for the same seeds and options.
# The EDM sampler is used unless an ablation option (solver, discretization, ...) is given.

def generate_images(net, seeds, device=None, max_batch_size=64, class_idx=None, progress=False, **sampler_kwargs):
    seeds = parse_int_list(seeds)
    if len(seeds) == 0:
        raise ValueError('no seeds given')
    if device is None:
        device = next(iter([*net.parameters(), *net.buffers()]), torch.empty(0)).device
    images = []
    with torch.no_grad():
        for batch_seeds in tqdm.tqdm(split_seeds(seeds, max_batch_size), unit='batch', disable=not progress):
            x = sample_batch(net, batch_seeds, device, class_idx=class_idx, **sampler_kwargs)
            images.append(to_uint8(x).cpu())
    return torch.cat(images)

#----------------------------------------------------------------------------
# EDM's output quantisation: [-1, 1] -> x * 127.5 + 128, clipped, cast (truncating) to uint8.

def to_uint8(x):
    if isinstance(x, np.ndarray):
        return np.clip(x * 127.5 + 128, 0, 255).astype(np.uint8)
    return (x * 127.5 + 128).clip(0, 255).to(torch.uint8)

#----------------------------------------------------------------------------
