"""The samplers of "Elucidating the Design Space of Diffusion-Based Generative Models" (Karras et
al., 2022) and the per-seed machinery around them: noise level discretizations, the EDM and the
generalized ablation sampler, per-seed random streams, seed batching and EDM's uint8 quantisation.
generate.py is the command line on top of this module."""

import re

import numpy as np
import torch
import tqdm

ABLATION_OPTIONS = ('solver', 'discretization', 'schedule', 'scaling', 'epsilon_s', 'C_1', 'C_2', 'M', 'alpha')

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
# bit for bit on every device.

def iddpm_sigma_levels(M=1000, C_1=0.001, C_2=0.008, device=None):
    def alpha_bar(j):
        return (0.5 * np.pi * j / M / (C_2 + 1)).sin() ** 2
    u = torch.zeros(M + 1, dtype=torch.float64, device=device)
    for j in torch.arange(M, 0, -1, device=device):
        u[j - 1] = ((u[j] ** 2 + 1) / (alpha_bar(j - 1) / alpha_bar(j)).clip(min=C_1) - 1).sqrt()
    return u

#----------------------------------------------------------------------------
# The generalized sampler of Section 3 of the paper, covering every combination of ODE solver,
# time step discretization, noise schedule sigma(t) and signal scaling s(t) it ablates.
# The EDM sampler is solver='heun', discretization='edm', schedule='linear', scaling='none'.

def ablation_sampler(
    net, latents, class_labels=None, randn_like=torch.randn_like,
    num_steps=18, sigma_min=None, sigma_max=None, rho=7,
    solver='heun', discretization='edm', schedule='linear', scaling='none',
    epsilon_s=1e-3, C_1=0.001, C_2=0.008, M=1000, alpha=1,
    S_churn=0, S_min=0, S_max=float('inf'), S_noise=1,
):
    for name, value, allowed in [('solver', solver, ['euler', 'heun']), ('discretization', discretization, ['vp', 've', 'iddpm', 'edm']),
            ('schedule', schedule, ['vp', 've', 'linear']), ('scaling', scaling, ['vp', 'none'])]:
        if value not in allowed:
            raise ValueError(f'{name} must be one of {"|".join(allowed)}, got {value!r}')
    _check_num_steps(num_steps)
    if not alpha > 0:
        raise ValueError(f'alpha must be positive, got {alpha}')

    # Default noise range of each discretization, clamped to the network's range.
    if sigma_min is None:
        sigma_min = {'vp': _vp_sigma(epsilon_s, 19.9, 0.1), 've': 0.02, 'iddpm': 0.002, 'edm': 0.002}[discretization]
    if sigma_max is None:
        sigma_max = {'vp': _vp_sigma(1, 19.9, 0.1), 've': 100, 'iddpm': 81, 'edm': 80}[discretization]
    sigma_min = max(sigma_min, net.sigma_min)
    sigma_max = min(sigma_max, net.sigma_max)

    # VP betas such that sigma(epsilon_s) = sigma_min and sigma(1) = sigma_max.
    if 'vp' in (discretization, schedule):
        beta_d = 2 * (np.log(sigma_min ** 2 + 1) / epsilon_s - np.log(sigma_max ** 2 + 1)) / (epsilon_s - 1)
        beta_min = np.log(sigma_max ** 2 + 1) - 0.5 * beta_d

    # Noise levels sigma_0 > ... > sigma_{N-1} of the chosen discretization.
    step_indices = torch.arange(num_steps, dtype=torch.float64, device=latents.device)
    if discretization == 'vp':
        sigma_steps = _vp_sigma(1 + step_indices / (num_steps - 1) * (epsilon_s - 1), beta_d, beta_min)
    elif discretization == 've':
        sigma_steps = ((sigma_max ** 2) * ((sigma_min ** 2 / sigma_max ** 2) ** (step_indices / (num_steps - 1)))).sqrt()
    elif discretization == 'iddpm':
        u = iddpm_sigma_levels(M=M, C_1=C_1, C_2=C_2, device=latents.device)
        u = u[(u >= sigma_min) & (u <= sigma_max)]
        if len(u) == 0:
            raise ValueError(f'no iDDPM noise level lies in [{sigma_min}, {sigma_max}]')
        sigma_steps = u[((len(u) - 1) / (num_steps - 1) * step_indices).round().to(torch.int64)]
    else:
        sigma_steps = edm_sigma_steps(num_steps, sigma_min, sigma_max, rho, device=latents.device)

    # sigma(t), sigma'(t) and t(sigma) of the chosen schedule.
    if schedule == 'vp':
        sigma = lambda t: _vp_sigma(t, beta_d, beta_min)
        sigma_deriv = lambda t: _vp_sigma_deriv(t, beta_d, beta_min)
        sigma_inv = lambda s: _vp_sigma_inv(s, beta_d, beta_min)
    elif schedule == 've':
        sigma = lambda t: t.sqrt()
        sigma_deriv = lambda t: 0.5 / t.sqrt()
        sigma_inv = lambda s: s ** 2
    else:
        sigma = lambda t: t
        sigma_deriv = lambda t: 1
        sigma_inv = lambda s: s

    # s(t) and s'(t) of the chosen scaling.
    if scaling == 'vp':
        s = lambda t: 1 / (1 + sigma(t) ** 2).sqrt()
        s_deriv = lambda t: -sigma(t) * sigma_deriv(t) * (s(t) ** 3)
    else:
        s = lambda t: 1
        s_deriv = lambda t: 0

    # dx/dt of the probability flow ODE with the scaled state x = s(t) * x_unscaled.
    def ode_deriv(x, t):
        denoised = net(x / s(t), sigma(t), class_labels).to(torch.float64)
        return (sigma_deriv(t) / sigma(t) + s_deriv(t) / s(t)) * x - sigma_deriv(t) * s(t) / sigma(t) * denoised

    # Time steps from the network-snapped noise levels, then t_N = 0.
    t_steps = sigma_inv(net.round_sigma(sigma_steps))
    t_steps = torch.cat([t_steps, t_steps.new_zeros([1])])
    gamma_churn = min(S_churn / num_steps, np.sqrt(2) - 1)

    x_next = latents.to(torch.float64) * (sigma(t_steps[0]) * s(t_steps[0]))
    for i in range(num_steps):
        x_cur, t_cur, t_next = x_next, t_steps[i], t_steps[i + 1]

        # Raise the noise level to sigma(t_hat); the draw happens on every step (see edm_sampler).
        gamma = gamma_churn if S_min <= sigma(t_cur) <= S_max else 0
        t_hat = sigma_inv(net.round_sigma(sigma(t_cur) + gamma * sigma(t_cur)))
        noise_std = (sigma(t_hat) ** 2 - sigma(t_cur) ** 2).clip(min=0).sqrt() * s(t_hat) * S_noise
        x_hat = s(t_hat) / s(t_cur) * x_cur + noise_std * randn_like(x_cur)

        # Euler step, or the 2nd order step through an intermediate point at t_hat + alpha * h.
        h = t_next - t_hat
        d_cur = ode_deriv(x_hat, t_hat)
        if solver == 'euler' or i == num_steps - 1:
            x_next = x_hat + h * d_cur
        else:
            x_prime, t_prime = x_hat + alpha * h * d_cur, t_hat + alpha * h
            d_prime = ode_deriv(x_prime, t_prime)
            x_next = x_hat + h * ((1 - 1 / (2 * alpha)) * d_cur + 1 / (2 * alpha) * d_prime)

    return x_next

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
            raise ValueError(f'"{part}" in "{s}" is not a non-negative integer or a range like 0-63')
    return values

#----------------------------------------------------------------------------
# Split the seeds into batches over all ranks as the reference does: the same number of
# batches on every rank, and rank r takes every W-th batch starting at r.

def split_seeds(seeds, max_batch_size, rank=0, world_size=1):
    num_batches = ((len(seeds) - 1) // (max_batch_size * world_size) + 1) * world_size
    all_batches = torch.as_tensor(seeds, dtype=torch.int64).tensor_split(num_batches)
    return all_batches[rank :: world_size]

#----------------------------------------------------------------------------
# Sample one batch in EDM's draw order: latents, then random labels (conditional nets only),
# then the sampler's churn noise, all from the per-seed generators. Returns float64 [B, C, H, W].

def sample_batch(net, batch_seeds, device, class_idx=None, **sampler_kwargs):
    device = torch.device(device)
    if class_idx is not None and not (0 <= class_idx < net.label_dim):
        raise ValueError(f'class index {class_idx} needs a class-conditional network with more than {class_idx} '
            f'classes; this network has label_dim={net.label_dim}' + (' (unconditional)' if not net.label_dim else ''))
    batch_size = len(batch_seeds)
    rnd = StackedRandomGenerator(device, batch_seeds)
    latents = rnd.randn([batch_size, net.img_channels, net.img_resolution, net.img_resolution], device=device)
    class_labels = None
    if net.label_dim:
        class_labels = torch.eye(net.label_dim, device=device)[rnd.randint(net.label_dim, size=[batch_size], device=device)]
    if class_idx is not None:
        class_labels[:, :] = 0  # the random draw above still happened, as in the reference
        class_labels[:, class_idx] = 1

    sampler_kwargs = {key: value for key, value in sampler_kwargs.items() if value is not None}
    sampler_fn = ablation_sampler if any(key in sampler_kwargs for key in ABLATION_OPTIONS) else edm_sampler
    return sampler_fn(net, latents, class_labels, randn_like=rnd.randn_like, **sampler_kwargs)

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
