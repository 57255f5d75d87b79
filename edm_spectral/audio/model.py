"""DiffWave (Kong et al. 2021), mel-conditioned, with parameter names and shapes identical to
the public LMNT implementation, so that LMNT checkpoints load strictly here and ours load there.

Also holds the hyper-parameter dict (`params`, the keys LMNT stores in its checkpoints) and the
checkpoint reader/writer in LMNT's format: a torch.save dict {'step', 'model', 'optimizer',
'params', ...}."""

import math
import os

import numpy as np
import torch
import torch.nn.functional as F

#----------------------------------------------------------------------------
# LMNT's hyper-parameters for the LJSpeech 22.05 kHz release (the paper's setting). The keys are
# the ones LMNT writes into `checkpoint['params']`; `upsample_factors`, `mel_fmin`, `mel_fmax`
# are ours (LMNT hard-codes them) and default to LMNT's values.

LJSPEECH_PARAMS = dict(
    # Training.
    batch_size              = 16,
    learning_rate           = 2e-4,
    max_grad_norm           = None,
    # Data.
    sample_rate             = 22050,
    n_mels                  = 80,
    n_fft                   = 1024,
    hop_samples             = 256,
    crop_mel_frames         = 62,
    mel_fmin                = 20.0,
    mel_fmax                = None,     # None = sample_rate / 2, as LMNT.
    # Model.
    residual_layers         = 30,
    residual_channels       = 64,
    dilation_cycle_length   = 10,
    unconditional           = False,
    upsample_factors        = [16, 16],
    noise_schedule          = np.linspace(1e-4, 0.05, 50).tolist(),
    inference_noise_schedule= [0.0001, 0.001, 0.01, 0.05, 0.2, 0.5],
)

#----------------------------------------------------------------------------
# Build a full params dict: LMNT defaults, then the given overrides. Unknown keys are rejected
# so that a typo does not silently fall back to a default.

def make_params(base=None, **overrides):
    params = dict(LJSPEECH_PARAMS)
    for src in [base or {}, overrides]:
        for key, value in src.items():
            if key not in LJSPEECH_PARAMS and key not in ('audio_len',):
                raise ValueError(f'Unknown DiffWave parameter "{key}"')
            params[key] = value
    params['noise_schedule'] = [float(b) for b in params['noise_schedule']]
    params['inference_noise_schedule'] = [float(b) for b in params['inference_noise_schedule']]
    params['upsample_factors'] = [int(f) for f in params['upsample_factors']]
    if int(np.prod(params['upsample_factors'])) != params['hop_samples']:
        raise ValueError(f'upsample_factors {params["upsample_factors"]} must multiply to hop_samples={params["hop_samples"]}')
    for f in params['upsample_factors']:
        if f < 2 or f % 2:
            raise ValueError(f'upsample factors must be even and >= 2, got {params["upsample_factors"]}')
    for name in ['residual_layers', 'residual_channels', 'dilation_cycle_length', 'n_mels', 'hop_samples', 'n_fft']:
        if int(params[name]) < 1:
            raise ValueError(f'{name} must be positive, got {params[name]}')
    betas = np.asarray(params['noise_schedule'])
    if betas.ndim != 1 or len(betas) < 2 or not np.all((betas > 0) & (betas < 1)):
        raise ValueError('noise_schedule must be a list of at least two betas in (0, 1)')
    return params

#----------------------------------------------------------------------------
# Layers initialised as LMNT does: Kaiming-normal 1-D convolutions, default Linear.

def _conv1d(*args, **kwargs):
    layer = torch.nn.Conv1d(*args, **kwargs)
    torch.nn.init.kaiming_normal_(layer.weight)
    return layer

#----------------------------------------------------------------------------
# Sinusoidal embedding of the diffusion step (64 frequencies 10^(4k/63), sin then cos), then two
# SiLU MLP layers. A fractional step (fast sampling) interpolates the table linearly. The table
# is a non-persistent buffer, so it is not part of the state dict (as in LMNT).

class DiffusionEmbedding(torch.nn.Module):
    def __init__(self, max_steps):
        super().__init__()
        steps = torch.arange(max_steps, dtype=torch.float32)[:, None]
        freqs = 10.0 ** (torch.arange(64, dtype=torch.float32)[None, :] * 4.0 / 63.0)
        table = steps * freqs
        self.register_buffer('embedding', torch.cat([table.sin(), table.cos()], dim=1), persistent=False)
        self.projection1 = torch.nn.Linear(128, 512)
        self.projection2 = torch.nn.Linear(512, 512)

    def forward(self, diffusion_step):
        if diffusion_step.dtype in (torch.int32, torch.int64):
            x = self.embedding[diffusion_step]
        else:
            t = diffusion_step.to(torch.float32)
            lo = t.floor().long()
            hi = t.ceil().long()
            x = self.embedding[lo] + (self.embedding[hi] - self.embedding[lo]) * (t - lo)[:, None]
        x = self.projection1(x)
        x = x * torch.sigmoid(x) # SiLU written out as LMNT does: F.silu rounds differently (~5e-7).
        x = self.projection2(x)
        return x * torch.sigmoid(x)

#----------------------------------------------------------------------------
# Mel upsampler: transposed 2-D convolutions over (mel, time), each stretching time by its
# factor f (kernel [3, 2f], stride [1, f], padding [1, f/2]), with leaky ReLU(0.4). LMNT's
# 22 kHz model is factors [16, 16] = hop 256, named conv1, conv2.
#
# init='lmnt' keeps PyTorch's default initialisation (LMNT's): each stage then scales the mel
# by ~0.1, so the network sees its variation ~100-fold attenuated and learns to use it slowly.
# init='interp' starts each stage as linear interpolation in time (triangle kernel, centre mel
# row only, zero bias): the mel reaches the residual layers at full scale. Initialisation is
# not stored in checkpoints, so both give LMNT-compatible weights.

UPSAMPLER_INITS = ('lmnt', 'interp')

class SpectrogramUpsampler(torch.nn.Module):
    def __init__(self, upsample_factors=(16, 16), init='lmnt'):
        super().__init__()
        if init not in UPSAMPLER_INITS:
            raise ValueError(f'Unknown mel upsampler init "{init}"; choose from {", ".join(UPSAMPLER_INITS)}')
        self.num_convs = len(upsample_factors)
        for idx, f in enumerate(upsample_factors):
            conv = torch.nn.ConvTranspose2d(1, 1, [3, 2 * f], stride=[1, f], padding=[1, f // 2])
            if init == 'interp':
                j = torch.arange(2 * f, dtype=torch.float32)
                tri = torch.where(j < f, (j + 0.5) / f, (2 * f - j - 0.5) / f) # Overlapping pairs sum to 1.
                with torch.no_grad():
                    conv.weight.zero_()
                    conv.weight[0, 0, 1] = tri
                    conv.bias.zero_()
            setattr(self, f'conv{idx + 1}', conv)

    def forward(self, x):
        x = x.unsqueeze(1)
        for idx in range(self.num_convs):
            x = F.leaky_relu(getattr(self, f'conv{idx + 1}')(x), 0.4)
        return x.squeeze(1)

#----------------------------------------------------------------------------
# One residual layer: dilated conv + step projection + mel projection, gated tanh, 1x1 output
# split into residual and skip.

class ResidualBlock(torch.nn.Module):
    def __init__(self, n_mels, residual_channels, dilation, unconditional=False):
        super().__init__()
        self.dilated_conv = _conv1d(residual_channels, 2 * residual_channels, 3, padding=dilation, dilation=dilation)
        self.diffusion_projection = torch.nn.Linear(512, residual_channels)
        self.conditioner_projection = None if unconditional else _conv1d(n_mels, 2 * residual_channels, 1)
        self.output_projection = _conv1d(residual_channels, 2 * residual_channels, 1)

    def forward(self, x, step_emb, cond=None):
        y = self.dilated_conv(x + self.diffusion_projection(step_emb)[:, :, None])
        if self.conditioner_projection is not None:
            y = y + self.conditioner_projection(cond)
        gate, filt = y.chunk(2, dim=1)
        y = self.output_projection(torch.sigmoid(gate) * torch.tanh(filt))
        residual, skip = y.chunk(2, dim=1)
        return (x + residual) / math.sqrt(2.0), skip

#----------------------------------------------------------------------------
# The network: predicts epsilon [N, 1, T] from noisy audio [N, T] (or [N, 1, T]), the diffusion
# step [N] (int, or float for fast sampling) and the mel spectrogram [N, n_mels, T / hop].
# `upsampler_init` only changes the starting weights (see SpectrogramUpsampler).

class DiffWave(torch.nn.Module):
    def __init__(self, params, upsampler_init='lmnt'):
        super().__init__()
        self.params = make_params(params)
        p = self.params
        self.input_projection = _conv1d(1, p['residual_channels'], 1)
        self.diffusion_embedding = DiffusionEmbedding(len(p['noise_schedule']))
        self.spectrogram_upsampler = None if p['unconditional'] else SpectrogramUpsampler(p['upsample_factors'], init=upsampler_init)
        self.residual_layers = torch.nn.ModuleList([
            ResidualBlock(p['n_mels'], p['residual_channels'], 2 ** (i % p['dilation_cycle_length']), unconditional=p['unconditional'])
            for i in range(p['residual_layers'])])
        self.skip_projection = _conv1d(p['residual_channels'], p['residual_channels'], 1)
        self.output_projection = _conv1d(p['residual_channels'], 1, 1)
        torch.nn.init.zeros_(self.output_projection.weight)

    def forward(self, audio, diffusion_step, spectrogram=None):
        if audio.ndim == 3:
            audio = audio.squeeze(1)
        if diffusion_step.ndim == 0:
            diffusion_step = diffusion_step.reshape(1)
        # A single step [1] is embedded once and broadcast over the batch in the residual layers.
        x = F.relu(self.input_projection(audio[:, None, :]))
        emb = self.diffusion_embedding(diffusion_step)
        cond = None
        if self.spectrogram_upsampler is not None:
            if spectrogram is None:
                raise ValueError('This DiffWave is mel-conditioned: a spectrogram is required')
            if spectrogram.shape[1] != self.params['n_mels'] or spectrogram.shape[2] * self.params['hop_samples'] != audio.shape[-1]:
                raise ValueError(f'Spectrogram {list(spectrogram.shape)} does not match audio {list(audio.shape)} '
                    f'(n_mels={self.params["n_mels"]}, hop={self.params["hop_samples"]})')
            cond = self.spectrogram_upsampler(spectrogram.to(x.dtype))
        skip = 0
        for layer in self.residual_layers:
            x, s = layer(x, emb, cond)
            skip = skip + s
        x = skip / math.sqrt(len(self.residual_layers))
        x = F.relu(self.skip_projection(x))
        return self.output_projection(x)

#----------------------------------------------------------------------------
# Checkpoints in LMNT's format. The model state is what LMNT's DiffWave.state_dict() gives; the
# extras ('format', 'spectral_kwargs', 'ema', ...) are ignored by LMNT's loader.

CHECKPOINT_FORMAT = 'edm-spectral-diffwave-1'

def save_checkpoint(path, model, params, step=0, optimizer=None, scaler=None, **extras):
    model = model.module if hasattr(model, 'module') else model
    to_cpu = lambda d: {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in d.items()}
    if optimizer is None: # LMNT's loader always restores an optimizer: give it a fresh Adam's state.
        optimizer = torch.optim.Adam(model.parameters(), lr=params.get('learning_rate', LJSPEECH_PARAMS['learning_rate']))
    # A disabled scaler (fp32) has an empty state, which an fp16 LMNT learner refuses to load:
    # write a fresh enabled scaler's state instead (the CPU one needs no GPU to exist).
    scaler_state = (scaler.state_dict() if scaler is not None else {}) or torch.amp.GradScaler('cpu').state_dict()
    data = dict(step=int(step), model=to_cpu(model.state_dict()), optimizer=optimizer.state_dict(),
        params=dict(params), scaler=scaler_state,
        format=CHECKPOINT_FORMAT, **extras)
    tmp = path + '.tmp'
    torch.save(data, tmp)
    os.replace(tmp, path)

def read_checkpoint(path):
    if os.path.isdir(path):
        path = os.path.join(path, 'weights.pt')
    if not os.path.isfile(path):
        raise FileNotFoundError(f'DiffWave checkpoint not found: {path}')
    try:
        data = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        raise ValueError(f'Cannot read {path} as a DiffWave checkpoint (a torch.save dict in LMNT format, '
            f'loaded weights-only): {e}') from e
    if not isinstance(data, dict) or 'model' not in data:
        raise ValueError(f'{path} is not a DiffWave checkpoint: expected a dict with a "model" state dict')
    return data

# Build the model a checkpoint describes and load its weights strictly. Checkpoints without
# 'params' (or with partial ones) fall back to the LMNT 22 kHz defaults for the missing keys.
def load_checkpoint(path, device='cpu'):
    data = read_checkpoint(path)
    saved = {k: v for k, v in dict(data.get('params') or {}).items() if k in LJSPEECH_PARAMS}
    params = make_params(saved)
    model = DiffWave(params)
    state = dict(data['model'])
    table = state.pop('diffusion_embedding.embedding', None) # Persistent in some forks; recomputed here.
    if table is not None and tuple(table.shape) != tuple(model.diffusion_embedding.embedding.shape):
        raise ValueError(f'{path}: diffusion embedding table has shape {list(table.shape)}, '
            f'but noise_schedule has {len(params["noise_schedule"])} steps')
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f'{path}: weights do not match a DiffWave with params '
            f'residual_layers={params["residual_layers"]}, residual_channels={params["residual_channels"]}, '
            f'n_mels={params["n_mels"]}: {e}') from e
    return model.to(device), params, data

#----------------------------------------------------------------------------
