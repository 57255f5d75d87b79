"""Loss functions of "Elucidating the Design Space of Diffusion-Based
Generative Models" (VP, VE, EDM) plus discrete DDPM, each with an optional
spectral regularizer on the predicted clean sample."""

import torch
from torch_utils import persistence

# This file is pickled into snapshots and exec'd by stock EDM when they are
# loaded: module-level imports are limited to torch and torch_utils.
# training.spectral_loss is imported inside __init__, so unpickling never
# needs it (the SpectralLoss object embeds its own source).

#----------------------------------------------------------------------------
# Build the SpectralLoss for spectral_kwargs (None or kind 'none': no term). `owner` names the
# objective in messages; only discrete objectives (allow_ddim) can roll DDIM out. Also the audio
# trainer's builder.

def make_spectral_loss(spectral_kwargs, owner, allow_ddim=False):
    if spectral_kwargs is None or spectral_kwargs.get('kind', 'none') in (None, 'none'):
        return None
    from training.spectral_loss import SpectralLoss # Lazy, see above.
    spectral = SpectralLoss(**spectral_kwargs)
    if spectral.ddim_steps > 1 and not allow_ddim:
        raise ValueError(f'ddim_steps={spectral.ddim_steps} applies to DDPMLoss only, not {owner}')
    return spectral

#----------------------------------------------------------------------------
# Deterministic DDIM (eta = 0) from discrete step `step` to the clean sample in K steps,
# through the steps round(step * k / K), k = K-1..1. It runs in the unscaled variable
# x = x_t / sqrt(abar), where sigma = sqrt(1 / abar - 1) and DDIM is an Euler step in sigma;
# the last step lands on the clean estimate. denoise(x, step) is the clean estimate at a step
# (shaped like `step`, which broadcasts against x); gradients flow through every call. Also
# the audio trainer's roll-out (edm_spectral/audio/diffusion.py).

def ddim_rollout(denoise, x, denoised, step, sigmas, K):
    sigma_cur = sigmas[step]
    for k in range(K - 1, 0, -1):
        step_next = torch.round(step.to(torch.float64) * k / K).to(step.dtype)
        sigma_next = sigmas[step_next]
        x = x + (sigma_next - sigma_cur) * ((x - denoised) / sigma_cur)
        denoised = denoise(x, step_next)
        sigma_cur = sigma_next
    return denoised

#----------------------------------------------------------------------------
# Shape of per-sample quantities (sigma, weight): [N, 1, 1, 1] for images,
# [N, 1, 1] for 1-D signals.

def _per_sample(images):
    return [images.shape[0]] + [1] * (images.ndim - 1)

#----------------------------------------------------------------------------
# What the loss classes share: the optional spectral term, the training
# progress its warm-up reads (the loop sets cur_kimg: EDM's loss call has no
# argument for it), and the objective once the noise levels are drawn.

class _DenoisingLoss:
    def _setup_spectral(self, spectral_kwargs, allow_ddim=False):
        self.spectral = make_spectral_loss(spectral_kwargs, type(self).__name__, allow_ddim)
        self.cur_kimg = 0.0

    # The objective at noise levels sigma (drawn first) with per-sample
    # weights lambda(sigma): augment (the pipe's draws), add noise (the next
    # draw), denoise, weighted squared error per element. Reports the base
    # loss and, with a spectral term, adds lambda_i * L_S,i spread evenly over
    # the elements of sample i, so that loss.sum() gains sum_i lambda_i L_S,i.
    # x0_hat is the denoiser output unless clean_estimate(noisy, denoised,
    # augment_labels) is given.
    def _objective(self, net, images, labels, augment_pipe, sigma, weight, clean_estimate=None):
        from torch_utils import training_stats # Lazy: only needed while training.
        clean, augment_labels = (images, None) if augment_pipe is None else augment_pipe(images)
        noisy = clean + torch.randn_like(clean) * sigma
        denoised = net(noisy, sigma, labels, augment_labels=augment_labels)
        loss = weight * ((denoised - clean) ** 2)
        training_stats.report('Loss/base', loss)
        if self.spectral is None:
            return loss
        x0_hat = denoised if clean_estimate is None else clean_estimate(noisy, denoised, augment_labels)
        L_S = self.spectral(x0_hat, clean)
        training_stats.report('Loss/spectral', L_S)
        lam = self.spectral.multiplier(weight, sigma, self.cur_kimg).to(L_S.device)
        extra = (lam * L_S) / loss[0].numel()
        return loss + extra.to(loss.dtype).reshape(_per_sample(loss))

#----------------------------------------------------------------------------
# Loss function corresponding to the variance preserving (VP) formulation
# from "Score-Based Generative Modeling through Stochastic Differential
# Equations": t uniform in [epsilon_t, 1], weight 1 / sigma(t)^2.

@persistence.persistent_class
class VPLoss(_DenoisingLoss):
    def __init__(self, beta_d=19.9, beta_min=0.1, epsilon_t=1e-5, spectral_kwargs=None):
        self.beta_d = beta_d
        self.beta_min = beta_min
        self.epsilon_t = epsilon_t
        self._setup_spectral(spectral_kwargs)

    def __call__(self, net, images, labels=None, augment_pipe=None):
        u = torch.rand(_per_sample(images), device=images.device)
        sigma = self.sigma(1 + u * (self.epsilon_t - 1)) # u = 0 gives t = 1, u = 1 gives t = epsilon_t.
        return self._objective(net, images, labels, augment_pipe, sigma, 1 / sigma ** 2)

    def sigma(self, t):
        t = torch.as_tensor(t)
        return ((0.5 * self.beta_d * (t ** 2) + self.beta_min * t).exp() - 1).sqrt()

#----------------------------------------------------------------------------
# Loss function corresponding to the variance exploding (VE) formulation
# from "Score-Based Generative Modeling through Stochastic Differential
# Equations": sigma log-uniform in [sigma_min, sigma_max], weight 1 / sigma^2.

@persistence.persistent_class
class VELoss(_DenoisingLoss):
    def __init__(self, sigma_min=0.02, sigma_max=100, spectral_kwargs=None):
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self._setup_spectral(spectral_kwargs)

    def __call__(self, net, images, labels=None, augment_pipe=None):
        u = torch.rand(_per_sample(images), device=images.device)
        sigma = self.sigma_min * ((self.sigma_max / self.sigma_min) ** u)
        return self._objective(net, images, labels, augment_pipe, sigma, 1 / sigma ** 2)

#----------------------------------------------------------------------------
# Improved loss function proposed in the paper "Elucidating the Design Space
# of Diffusion-Based Generative Models" (EDM): ln(sigma) normal with mean
# P_mean and deviation P_std, weight (sigma^2 + sigma_data^2) / (sigma sigma_data)^2.

@persistence.persistent_class
class EDMLoss(_DenoisingLoss):
    def __init__(self, P_mean=-1.2, P_std=1.2, sigma_data=0.5, spectral_kwargs=None):
        self.P_mean = P_mean
        self.P_std = P_std
        self.sigma_data = sigma_data
        self._setup_spectral(spectral_kwargs)

    def __call__(self, net, images, labels=None, augment_pipe=None):
        sigma = (torch.randn(_per_sample(images), device=images.device) * self.P_std + self.P_mean).exp()
        lam = (sigma ** 2 + self.sigma_data ** 2) / (sigma * self.sigma_data) ** 2
        return self._objective(net, images, labels, augment_pipe, sigma, lam)

#----------------------------------------------------------------------------
# Discrete DDPM (Ho et al., linear betas) inside the EDM framework: step i
# has sigma_i = sqrt(1/abar_i - 1), and with a VPPrecond network
# D = x - sigma * eps_hat, so (D - y)^2 / sigma^2 is exactly the epsilon MSE
# and D is the one-step estimate (x_t - sqrt(1 - abar) eps_hat) / sqrt(abar).

_ddpm_sigma_cache = dict()

@persistence.persistent_class
class DDPMLoss(_DenoisingLoss):
    def __init__(self, beta_start=1e-4, beta_end=0.02, num_steps=1000, spectral_kwargs=None):
        if not 0 < beta_start <= beta_end < 1:
            raise ValueError(f'DDPMLoss needs 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}')
        if int(num_steps) < 1:
            raise ValueError(f'DDPMLoss needs num_steps >= 1, got {num_steps}')
        self.beta_start = beta_start
        self.beta_end = beta_end
        self.num_steps = int(num_steps)
        self._setup_spectral(spectral_kwargs, allow_ddim=True)

    # Noise levels sigma_0 .. sigma_{T-1} of the discrete steps (Ho et al.'s
    # t = 1..T), computed in float64, cached per device outside the pickled state.
    def sigmas(self, device=None):
        key = (self.beta_start, self.beta_end, self.num_steps, str(device))
        if key not in _ddpm_sigma_cache:
            betas = torch.linspace(self.beta_start, self.beta_end, self.num_steps, dtype=torch.float64)
            alpha_bar = torch.cumprod(1 - betas, dim=0)
            _ddpm_sigma_cache[key] = (1 / alpha_bar - 1).sqrt().to(torch.float32).to(device)
        return _ddpm_sigma_cache[key]

    def __call__(self, net, images, labels=None, augment_pipe=None):
        sigmas = self.sigmas(images.device)
        step = torch.randint(self.num_steps, _per_sample(images), device=images.device)
        sigma = sigmas[step]
        K = 1 if self.spectral is None else self.spectral.ddim_steps
        rollout = None if K == 1 else lambda noisy, denoised, augment_labels: self.ddim_rollout(net, noisy, denoised, step, sigmas, labels, augment_labels, K)
        return self._objective(net, images, labels, augment_pipe, sigma, 1 / sigma ** 2, rollout)

    # The clean estimate after K DDIM steps from the noisy x (estimate D) at `step`.
    def ddim_rollout(self, net, x, D, step, sigmas, labels, augment_labels, K):
        denoise = lambda x, s: net(x, sigmas[s], labels, augment_labels=augment_labels)
        return ddim_rollout(denoise, x, D, step, sigmas, K)

#----------------------------------------------------------------------------
