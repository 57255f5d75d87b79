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
# Build the SpectralLoss for spectral_kwargs (None or kind 'none': no term).

def _make_spectral(spectral_kwargs, loss_name, allow_ddim=False):
    if spectral_kwargs is None or spectral_kwargs.get('kind', 'none') in (None, 'none'):
        return None
    from training.spectral_loss import SpectralLoss # Lazy, see above.
    spectral = SpectralLoss(**spectral_kwargs)
    if spectral.ddim_steps > 1 and not allow_ddim:
        raise ValueError(f'ddim_steps={spectral.ddim_steps} applies to DDPMLoss only, not {loss_name}')
    return spectral

#----------------------------------------------------------------------------
# Noise level shape for a batch: [N, 1, 1, 1] for images, [N, 1, 1] for 1-D.

def _sigma_shape(images):
    return [images.shape[0]] + [1] * (images.ndim - 1)

#----------------------------------------------------------------------------
# Report the base loss and, if enabled, add lambda_i * L_S,i spread evenly over
# the elements of sample i, so that loss.sum() gains sum_i lambda_i L_S,i.

def _finish(loss, spectral, x0_hat, x0, weight, sigma, cur_kimg):
    from torch_utils import training_stats # Lazy: only needed while training.
    training_stats.report('Loss/base', loss)
    if spectral is None:
        return loss
    L_S = spectral(x0_hat, x0)
    training_stats.report('Loss/spectral', L_S)
    lam = spectral.multiplier(weight, sigma, cur_kimg).to(L_S.device)
    extra = (lam * L_S) / loss[0].numel()
    return loss + extra.to(loss.dtype).reshape(_sigma_shape(loss))

#----------------------------------------------------------------------------
# Loss function corresponding to the variance preserving (VP) formulation
# from "Score-Based Generative Modeling through Stochastic Differential
# Equations".

@persistence.persistent_class
class VPLoss:
    def __init__(self, beta_d=19.9, beta_min=0.1, epsilon_t=1e-5, spectral_kwargs=None):
        self.beta_d = beta_d
        self.beta_min = beta_min
        self.epsilon_t = epsilon_t
        self.spectral = _make_spectral(spectral_kwargs, 'VPLoss')
        self.cur_kimg = 0.0

    def __call__(self, net, images, labels=None, augment_pipe=None):
        rnd_uniform = torch.rand(_sigma_shape(images), device=images.device)
        sigma = self.sigma(1 + rnd_uniform * (self.epsilon_t - 1))
        weight = 1 / sigma ** 2
        y, augment_labels = augment_pipe(images) if augment_pipe is not None else (images, None)
        n = torch.randn_like(y) * sigma
        D_yn = net(y + n, sigma, labels, augment_labels=augment_labels)
        loss = weight * ((D_yn - y) ** 2)
        return _finish(loss, self.spectral, D_yn, y, weight, sigma, self.cur_kimg)

    def sigma(self, t):
        t = torch.as_tensor(t)
        return ((0.5 * self.beta_d * (t ** 2) + self.beta_min * t).exp() - 1).sqrt()

#----------------------------------------------------------------------------
# Loss function corresponding to the variance exploding (VE) formulation
# from "Score-Based Generative Modeling through Stochastic Differential
# Equations".

@persistence.persistent_class
class VELoss:
    def __init__(self, sigma_min=0.02, sigma_max=100, spectral_kwargs=None):
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.spectral = _make_spectral(spectral_kwargs, 'VELoss')
        self.cur_kimg = 0.0

    def __call__(self, net, images, labels=None, augment_pipe=None):
        rnd_uniform = torch.rand(_sigma_shape(images), device=images.device)
        sigma = self.sigma_min * ((self.sigma_max / self.sigma_min) ** rnd_uniform)
        weight = 1 / sigma ** 2
        y, augment_labels = augment_pipe(images) if augment_pipe is not None else (images, None)
        n = torch.randn_like(y) * sigma
        D_yn = net(y + n, sigma, labels, augment_labels=augment_labels)
        loss = weight * ((D_yn - y) ** 2)
        return _finish(loss, self.spectral, D_yn, y, weight, sigma, self.cur_kimg)

#----------------------------------------------------------------------------
# Improved loss function proposed in the paper "Elucidating the Design Space
# of Diffusion-Based Generative Models" (EDM).

@persistence.persistent_class
class EDMLoss:
    def __init__(self, P_mean=-1.2, P_std=1.2, sigma_data=0.5, spectral_kwargs=None):
        self.P_mean = P_mean
        self.P_std = P_std
        self.sigma_data = sigma_data
        self.spectral = _make_spectral(spectral_kwargs, 'EDMLoss')
        self.cur_kimg = 0.0

    def __call__(self, net, images, labels=None, augment_pipe=None):
        rnd_normal = torch.randn(_sigma_shape(images), device=images.device)
        sigma = (rnd_normal * self.P_std + self.P_mean).exp()
        weight = (sigma ** 2 + self.sigma_data ** 2) / (sigma * self.sigma_data) ** 2
        y, augment_labels = augment_pipe(images) if augment_pipe is not None else (images, None)
        n = torch.randn_like(y) * sigma
        D_yn = net(y + n, sigma, labels, augment_labels=augment_labels)
        loss = weight * ((D_yn - y) ** 2)
        return _finish(loss, self.spectral, D_yn, y, weight, sigma, self.cur_kimg)

#----------------------------------------------------------------------------
# Discrete DDPM (Ho et al., linear betas) inside the EDM framework: step i
# has sigma_i = sqrt(1/abar_i - 1), and with a VPPrecond network
# D = x - sigma * eps_hat, so (D - y)^2 / sigma^2 is exactly the epsilon MSE
# and D is the one-step estimate (x_t - sqrt(1 - abar) eps_hat) / sqrt(abar).

_ddpm_sigma_cache = dict()

@persistence.persistent_class
class DDPMLoss:
    def __init__(self, beta_start=1e-4, beta_end=0.02, num_steps=1000, spectral_kwargs=None):
        if not 0 < beta_start <= beta_end < 1:
            raise ValueError(f'DDPMLoss needs 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}')
        if int(num_steps) < 1:
            raise ValueError(f'DDPMLoss needs num_steps >= 1, got {num_steps}')
        self.beta_start = beta_start
        self.beta_end = beta_end
        self.num_steps = int(num_steps)
        self.spectral = _make_spectral(spectral_kwargs, 'DDPMLoss', allow_ddim=True)
        self.cur_kimg = 0.0

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
        step = torch.randint(self.num_steps, _sigma_shape(images), device=images.device)
        sigma = sigmas[step]
        weight = 1 / sigma ** 2
        y, augment_labels = augment_pipe(images) if augment_pipe is not None else (images, None)
        n = torch.randn_like(y) * sigma
        D_yn = net(y + n, sigma, labels, augment_labels=augment_labels)
        loss = weight * ((D_yn - y) ** 2)
        x0_hat = D_yn
        if self.spectral is not None and self.spectral.ddim_steps > 1:
            x0_hat = self.ddim_rollout(net, y + n, D_yn, step, sigmas, labels, augment_labels, self.spectral.ddim_steps)
        return _finish(loss, self.spectral, x0_hat, y, weight, sigma, self.cur_kimg)

    # Deterministic DDIM (eta = 0) from step i to the clean sample in K steps
    # through the steps round(i*k/K), k = K-1..1. In the unscaled variable
    # x = x_t / sqrt(abar) DDIM is an Euler step in sigma; the last step lands
    # on D. Gradients flow through every network evaluation.
    def ddim_rollout(self, net, x, D, step, sigmas, labels, augment_labels, K):
        sigma_cur = sigmas[step]
        for k in range(K - 1, 0, -1):
            step_next = torch.round(step.to(torch.float64) * k / K).to(step.dtype)
            sigma_next = sigmas[step_next]
            x = x + (sigma_next - sigma_cur) * ((x - D) / sigma_cur)
            D = net(x, sigma_next, labels, augment_labels=augment_labels)
            sigma_cur = sigma_next
        return D

#----------------------------------------------------------------------------
