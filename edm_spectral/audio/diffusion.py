"""DiffWave's discrete diffusion: the training objective (LMNT's L1 on epsilon, plus the
paper's spectral term on the clean-audio estimate) and the two samplers (full 50-step ancestral
schedule, and LMNT's 6-step fast schedule with fractional diffusion steps)."""

import numpy as np
import torch

from training.loss import ddim_rollout

#----------------------------------------------------------------------------
# alpha_bar_t = prod_{s<=t} (1 - beta_s) of a beta schedule, as float64 numpy.

def alpha_bars(betas):
    return np.cumprod(1.0 - np.asarray(betas, dtype=np.float64))

#----------------------------------------------------------------------------
# Clean-audio estimate from x_t. One step: x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t),
# the paper's DDIM formula. With rollout_steps = k > 1: k deterministic DDIM steps from t down
# to the clean signal (levels round(t (k - j) / k), j = 0..k-1), gradients through every call:
# the images' DDPM roll-out (training.loss.ddim_rollout) on the unscaled x_t / sqrt(abar_t).

def estimate_x0(model, x_t, t, mel, abar, eps_hat=None, rollout_steps=1):
    ab = abar[t][:, None]
    if eps_hat is None:
        eps_hat = model(x_t, t, mel).squeeze(1)
    x0_hat = (x_t - (1 - ab).sqrt() * eps_hat) / ab.sqrt()
    k = max(int(rollout_steps), 1)
    if k == 1:
        return x0_hat
    sigmas = (1 / abar - 1).sqrt()
    def denoise(x, step): # x = x_t / sqrt(abar) -> x - sigma * eps_hat(x_t)
        eps = model(x * abar[step].sqrt(), step[:, 0], mel).squeeze(1).to(x.dtype)
        return x - sigmas[step] * eps
    return ddim_rollout(denoise, x_t / ab.sqrt(), x0_hat, t[:, None], sigmas, k)

#----------------------------------------------------------------------------
# The training loss for a batch: audio [N, T] in [-1, 1], mel [N, n_mels, T / hop]. Returns
# (total, base, spectral_per_sample or None): base is LMNT's mean L1 between epsilon and its
# prediction; with a SpectralLoss (constant weight lambda) the total adds
# mean_i lambda_i L_S(x0_hat_i, x0_i) on [N, 1, T] waveforms. lambda_i comes from
# spectral.multiplier() with sigma_t = sqrt(1 / abar_t - 1), so its warm-up (cur_kimg) and
# sigma_max cut-off act as for images; spectral.ddim_steps > 1 selects the DDIM roll-out.

def diffwave_loss(model, audio, mel, betas, spectral=None, cur_kimg=0.0, generator=None):
    abar = torch.as_tensor(alpha_bars(betas), dtype=torch.float32, device=audio.device)
    n = audio.shape[0]
    t = torch.randint(0, len(abar), [n], device=audio.device, generator=generator)
    noise = torch.randn(audio.shape, device=audio.device, generator=generator)
    ab = abar[t][:, None]
    x_t = ab.sqrt() * audio + (1 - ab).sqrt() * noise
    eps_hat = model(x_t, t, mel).squeeze(1)
    base = (eps_hat.float() - noise).abs().mean()
    if spectral is None:
        return base, base, None
    if spectral.weight == 'weighted':
        raise ValueError("DiffWave uses a constant spectral weight (e.g. 1e-4), not 'weighted'")
    x0_hat = estimate_x0(model, x_t, t, mel, abar, eps_hat=eps_hat.float(), rollout_steps=spectral.ddim_steps)
    ls = spectral(x0_hat.float()[:, None, :], audio.float()[:, None, :])
    lam = spectral.multiplier(1.0, (1.0 / abar[t] - 1.0).sqrt(), cur_kimg=cur_kimg).to(ls.device)
    return base + (lam * ls).mean(), base, ls

#----------------------------------------------------------------------------
# Continuous diffusion steps for an inference schedule (LMNT's fast sampling): the position of
# each inference alpha_bar between two training steps, interpolated linearly in sqrt(alpha_bar).
# For the training schedule itself this gives exactly 0, 1, ..., T-1.

def inference_steps(train_betas, infer_betas):
    tab = alpha_bars(train_betas)
    iab = alpha_bars(infer_betas)
    steps = []
    for a in iab:
        for t in range(len(tab) - 1):
            if tab[t + 1] <= a <= tab[t]:
                steps.append(t + (tab[t] ** 0.5 - a ** 0.5) / (tab[t] ** 0.5 - tab[t + 1] ** 0.5))
                break
        else:
            raise ValueError(f'Inference schedule reaches alpha_bar={a:.4g}, outside the training schedule '
                f'[{tab[-1]:.4g}, {tab[0]:.4g}]')
    return np.array(steps, dtype=np.float32)

#----------------------------------------------------------------------------
# Ancestral sampling as LMNT's inference: mel [N, n_mels, F] -> audio [N, F * hop] in [-1, 1].
# fast=True uses params['inference_noise_schedule'] (6 steps), else the 50 training steps.

@torch.no_grad()
def sample(model, mel, params, fast=True, generator=None):
    train_betas = np.asarray(params['noise_schedule'], dtype=np.float64)
    betas = np.asarray(params['inference_noise_schedule'], dtype=np.float64) if fast else train_betas
    alphas = 1.0 - betas
    abar = np.cumprod(alphas)
    steps = inference_steps(train_betas, betas)
    device = mel.device
    x = torch.randn([mel.shape[0], mel.shape[-1] * params['hop_samples']], device=device, generator=generator)
    for n in range(len(betas) - 1, -1, -1):
        t = torch.tensor([float(steps[n])], device=device) # one step for the whole batch, as LMNT
        eps = model(x, t, mel).squeeze(1).float()
        x = (1.0 / alphas[n] ** 0.5) * (x - betas[n] / (1.0 - abar[n]) ** 0.5 * eps)
        if n > 0:
            sigma = ((1.0 - abar[n - 1]) / (1.0 - abar[n]) * betas[n]) ** 0.5
            x = x + sigma * torch.randn(x.shape, device=device, generator=generator)
        x = x.clamp(-1.0, 1.0)
    return x

#----------------------------------------------------------------------------
# How much a model uses its conditioning: the noise-prediction L1 (the training loss) on given
# crops, audio [N, T] with mel [N, n_mels, F], at fixed diffusion steps, once with each crop's own
# mel, once with another crop's (the batch rolled by one) and once with an all-zero mel. A model
# that ignores the mel scores the same three times; one that uses it scores lowest on 'own'.

@torch.no_grad()
def mel_reliance(model, audio, mel, betas, steps=(5, 10, 20), seed=0):
    if audio.shape[0] < 2:
        raise ValueError('mel_reliance needs at least two crops (one lends its mel to the other)')
    abar = torch.as_tensor(alpha_bars(betas), dtype=torch.float32, device=audio.device)
    g = torch.Generator(device=audio.device).manual_seed(seed)
    mels = dict(own=mel, other=mel.roll(1, dims=0), zero=torch.zeros_like(mel))
    l1 = {name: 0.0 for name in mels}
    for t in steps:
        tt = torch.full([audio.shape[0]], int(t), device=audio.device)
        noise = torch.randn(audio.shape, device=audio.device, generator=g)
        x_t = abar[t].sqrt() * audio + (1 - abar[t]).sqrt() * noise
        for name, m in mels.items():
            l1[name] += (model(x_t, tt, m).squeeze(1).float() - noise).abs().mean().item() / len(steps)
    return l1

#----------------------------------------------------------------------------
