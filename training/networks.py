"""Denoiser networks and preconditioners of EDM (Karras et al., NeurIPS 2022), written to be
checkpoint-compatible with the released NVlabs/edm pickles: same class names, constructor
arguments, attributes, state_dict keys and shapes, and numerics."""

# Snapshots embed this file and stock EDM executes it when loading them, so the
# module-level imports stay within what a stock EDM environment has.
import numpy as np
import torch
from torch_utils import persistence
from torch.nn.functional import silu

#----------------------------------------------------------------------------
# Initial weights for one of the four standard init schemes.

def weight_init(shape, mode, fan_in, fan_out):
    # Uniform modes scale U(-1, 1); the exact expressions fix the RNG calls and rounding.
    if mode == 'xavier_uniform':  return np.sqrt(6 / (fan_in + fan_out)) * (torch.rand(*shape) * 2 - 1)
    if mode == 'xavier_normal':   return np.sqrt(2 / (fan_in + fan_out)) * torch.randn(*shape)
    if mode == 'kaiming_uniform': return np.sqrt(3 / fan_in) * (torch.rand(*shape) * 2 - 1)
    if mode == 'kaiming_normal':  return np.sqrt(1 / fan_in) * torch.randn(*shape)
    raise ValueError(f'weight_init: unknown mode {mode!r} (expected xavier_uniform, xavier_normal, kaiming_uniform or kaiming_normal)')

#----------------------------------------------------------------------------
# Dense layer y = x W^T + b. Parameters stay fp32 and follow the input dtype.

@persistence.persistent_class
class Linear(torch.nn.Module):
    def __init__(self, in_features, out_features, bias=True, init_mode='kaiming_normal', init_weight=1, init_bias=0):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        fans = dict(mode=init_mode, fan_in=in_features, fan_out=out_features)
        self.weight = torch.nn.Parameter(weight_init([out_features, in_features], **fans) * init_weight)
        # Drawn even when init_bias is 0, so that seeded construction consumes the RNG like EDM.
        self.bias = torch.nn.Parameter(weight_init([out_features], **fans) * init_bias) if bias else None

    def forward(self, x):
        x = x @ self.weight.to(x.dtype).t()
        if self.bias is not None:
            x = x.add_(self.bias.to(x.dtype))
        return x

#----------------------------------------------------------------------------
# Square convolution with optional 2x FIR up/downsampling (kernel=0: resampling only).

@persistence.persistent_class
class Conv2d(torch.nn.Module):
    def __init__(self,
        in_channels, out_channels, kernel, bias=True, up=False, down=False,
        resample_filter=[1,1], fused_resample=False, init_mode='kaiming_normal', init_weight=1, init_bias=0,
    ):
        if up and down:
            raise ValueError('Conv2d: up=True and down=True cannot be combined')
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.up = up
        self.down = down
        self.fused_resample = fused_resample
        k2 = kernel * kernel
        fans = dict(mode=init_mode, fan_in=in_channels*k2, fan_out=out_channels*k2)
        self.weight = torch.nn.Parameter(weight_init([out_channels, in_channels, kernel, kernel], **fans) * init_weight) if kernel else None
        self.bias = torch.nn.Parameter(weight_init([out_channels], **fans) * init_bias) if kernel and bias else None
        taps = torch.as_tensor(resample_filter, dtype=torch.float32)
        taps = taps.ger(taps).unsqueeze(0).unsqueeze(1) / taps.sum().square() # 2-D filter with unit DC gain.
        # A None buffer is not part of the state_dict, exactly as in EDM.
        self.register_buffer('resample_filter', taps if up or down else None)

    def forward(self, x):
        w = None if self.weight is None else self.weight.to(x.dtype)
        b = None if self.bias is None else self.bias.to(x.dtype)
        f = None if self.resample_filter is None else self.resample_filter.to(x.dtype)
        w_pad = 0 if w is None else w.shape[-1] // 2
        f_pad = 0 if f is None else (f.shape[-1] - 1) // 2
        conv2d = torch.nn.functional.conv2d
        conv_transpose2d = torch.nn.functional.conv_transpose2d

        if self.fused_resample and self.up and w is not None:
            # Filter at the input resolution first, then convolve; paddings split between the two.
            x = conv_transpose2d(x, f.mul(4).tile([self.in_channels, 1, 1, 1]), groups=self.in_channels, stride=2, padding=max(f_pad - w_pad, 0))
            x = conv2d(x, w, padding=max(w_pad - f_pad, 0))
        elif self.fused_resample and self.down and w is not None:
            # Convolve at full resolution with both paddings, then filter and decimate.
            x = conv2d(x, w, padding=w_pad+f_pad)
            x = conv2d(x, f.tile([self.out_channels, 1, 1, 1]), groups=self.out_channels, stride=2)
        else:
            if self.up: # The gain of 4 compensates for the zeros inserted by the stride-2 transpose.
                x = conv_transpose2d(x, f.mul(4).tile([self.in_channels, 1, 1, 1]), groups=self.in_channels, stride=2, padding=f_pad)
            if self.down:
                x = conv2d(x, f.tile([self.in_channels, 1, 1, 1]), groups=self.in_channels, stride=2, padding=f_pad)
            if w is not None:
                x = conv2d(x, w, padding=w_pad)
        if b is not None:
            x = x.add_(b.reshape(1, -1, 1, 1))
        return x

#----------------------------------------------------------------------------
# Group normalization with at least min_channels_per_group channels per group.

@persistence.persistent_class
class GroupNorm(torch.nn.Module):
    def __init__(self, num_channels, num_groups=32, min_channels_per_group=4, eps=1e-5):
        super().__init__()
        self.num_groups = min(num_groups, num_channels // min_channels_per_group)
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(num_channels))
        self.bias = torch.nn.Parameter(torch.zeros(num_channels))

    def forward(self, x):
        gamma = self.weight.to(x.dtype)
        beta = self.bias.to(x.dtype)
        return torch.nn.functional.group_norm(x, num_groups=self.num_groups, weight=gamma, bias=beta, eps=self.eps)

#----------------------------------------------------------------------------
# Backward of the softmax over dim 2, i.e. w * (dw - <dw, w>).

def _softmax_backward(dw, w):
    # torch's kernel gives EDM's exact bits; the formula covers torch versions without it.
    try:
        return torch._softmax_backward_data(dw, w, 2, w.dtype)
    except (AttributeError, TypeError, RuntimeError):
        return w * (dw - (dw * w).sum(dim=2, keepdim=True))

#----------------------------------------------------------------------------
# Attention weights softmax(q^T k / sqrt(C)) over keys, computed in fp32.

class AttentionOp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k):
        # q, k: [N, C, L]. fp16 logits could overflow, so the math is fp32; storage keeps q's dtype.
        logits = torch.einsum('ncq,nck->nqk', q.to(torch.float32), (k / np.sqrt(k.shape[1])).to(torch.float32))
        w = logits.softmax(dim=2).to(q.dtype)
        ctx.save_for_backward(q, k, w)
        return w

    @staticmethod
    def backward(ctx, dw):
        q, k, w = ctx.saved_tensors
        dlogits = _softmax_backward(dw.to(torch.float32), w.to(torch.float32))
        dq = torch.einsum('nck,nqk->ncq', k.to(torch.float32), dlogits).to(q.dtype) / np.sqrt(k.shape[1])
        dk = torch.einsum('ncq,nqk->nck', q.to(torch.float32), dlogits).to(k.dtype) / np.sqrt(k.shape[1])
        return dq, dk

#----------------------------------------------------------------------------
# Residual U-Net block with embedding injection, resampling and attention (DDPM++, NCSN++, ADM).

@persistence.persistent_class
class UNetBlock(torch.nn.Module):
    def __init__(self,
        in_channels, out_channels, emb_channels, up=False, down=False, attention=False,
        num_heads=None, channels_per_head=64, dropout=0, skip_scale=1, eps=1e-5,
        resample_filter=[1,1], resample_proj=False, adaptive_scale=True,
        init=dict(), init_zero=dict(init_weight=0), init_attn=None,
    ):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.emb_channels = emb_channels
        self.num_heads = (out_channels // channels_per_head if num_heads is None else num_heads) if attention else 0
        self.dropout = dropout
        self.skip_scale = skip_scale
        self.adaptive_scale = adaptive_scale

        # The order of these assignments is the state_dict order of released checkpoints.
        self.norm0 = GroupNorm(num_channels=in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels=in_channels, out_channels=out_channels, kernel=3, up=up, down=down, resample_filter=resample_filter, **init)
        self.affine = Linear(in_features=emb_channels, out_features=out_channels * (2 if adaptive_scale else 1), **init)
        self.norm1 = GroupNorm(num_channels=out_channels, eps=eps)
        self.conv1 = Conv2d(in_channels=out_channels, out_channels=out_channels, kernel=3, **init_zero)

        self.skip = None
        if up or down or in_channels != out_channels:
            # Same width: resample only (kernel 0, no weights) unless a projection is requested.
            skip_kernel = 1 if (resample_proj or in_channels != out_channels) else 0
            self.skip = Conv2d(in_channels=in_channels, out_channels=out_channels, kernel=skip_kernel, up=up, down=down, resample_filter=resample_filter, **init)

        if self.num_heads:
            self.norm2 = GroupNorm(num_channels=out_channels, eps=eps)
            self.qkv = Conv2d(in_channels=out_channels, out_channels=out_channels * 3, kernel=1, **(init if init_attn is None else init_attn))
            self.proj = Conv2d(in_channels=out_channels, out_channels=out_channels, kernel=1, **init_zero)

    def forward(self, x, emb):
        residual = x
        x = self.conv0(silu(self.norm0(x)))

        e = self.affine(emb).unsqueeze(2).unsqueeze(3).to(x.dtype)
        if self.adaptive_scale:
            scale, shift = e.chunk(chunks=2, dim=1)
            x = silu(torch.addcmul(shift, self.norm1(x), scale + 1))
        else:
            x = silu(self.norm1(x.add_(e)))

        x = self.conv1(torch.nn.functional.dropout(x, p=self.dropout, training=self.training))
        x = x.add_(residual if self.skip is None else self.skip(residual))
        x = x * self.skip_scale

        if self.num_heads:
            # qkv channels are read as (head, channel, 3): q, k, v interleave with stride 3.
            batch, channels = x.shape[0], x.shape[1]
            qkv = self.qkv(self.norm2(x)).reshape(batch * self.num_heads, channels // self.num_heads, 3, -1)
            q, k, v = qkv.unbind(2)
            w = AttentionOp.apply(q, k)
            a = torch.einsum('nqk,nck->ncq', w, v)
            x = self.proj(a.reshape(*x.shape)).add_(x)
            x = x * self.skip_scale
        return x

#----------------------------------------------------------------------------
# Sinusoidal embedding of a scalar, [cos, sin] at frequencies (1/max_positions)^(i/(C/2 - endpoint)).

@persistence.persistent_class
class PositionalEmbedding(torch.nn.Module):
    def __init__(self, num_channels, max_positions=10000, endpoint=False):
        super().__init__()
        self.num_channels = num_channels
        self.max_positions = max_positions
        self.endpoint = endpoint

    def forward(self, x):
        half = self.num_channels // 2
        freqs = torch.arange(start=0, end=half, dtype=torch.float32, device=x.device)
        freqs = freqs / (half - (1 if self.endpoint else 0))
        freqs = (1 / self.max_positions) ** freqs
        angles = x.ger(freqs.to(x.dtype))
        return torch.cat([angles.cos(), angles.sin()], dim=1)

#----------------------------------------------------------------------------
# Random Fourier feature embedding of a scalar (NCSN++), frequencies in the buffer `freqs`.

@persistence.persistent_class
class FourierEmbedding(torch.nn.Module):
    def __init__(self, num_channels, scale=16):
        super().__init__()
        self.register_buffer('freqs', torch.randn(num_channels // 2) * scale)

    def forward(self, x):
        angles = x.ger((2 * np.pi * self.freqs).to(x.dtype))
        return torch.cat([angles.cos(), angles.sin()], dim=1)

#----------------------------------------------------------------------------
# DDPM++ / NCSN++ U-Net of Song et al. (score_sde) in EDM's configurable form.

@persistence.persistent_class
class SongUNet(torch.nn.Module):
    def __init__(self,
        img_resolution,                     # Height and width of the input and output images.
        in_channels,                        # Channels of the input image.
        out_channels,                       # Channels of the output image.
        label_dim           = 0,            # Size of the one-hot class vector; 0 = unconditional.
        augment_dim         = 0,            # Size of the augmentation label vector; 0 = none.

        model_channels      = 128,          # Base channel count; levels use multiples of it.
        channel_mult        = [1,2,2,2],    # Channel multiplier per level, finest level first.
        channel_mult_emb    = 4,            # Embedding width = model_channels * this.
        num_blocks          = 4,            # Residual blocks per level in the encoder (decoder: one more).
        attn_resolutions    = [16],         # Resolutions whose blocks get self-attention.
        dropout             = 0.10,         # Dropout inside the residual blocks.
        label_dropout       = 0,            # Probability of zeroing a sample's class label in training (for CFG).

        embedding_type      = 'positional', # Noise embedding: 'positional' (DDPM++) or 'fourier' (NCSN++).
        channel_mult_noise  = 1,            # Noise embedding width = model_channels * this (1 DDPM++, 2 NCSN++).
        encoder_type        = 'standard',   # 'standard' (DDPM++), 'residual' (NCSN++) or 'skip' input pyramid.
        decoder_type        = 'standard',   # 'standard' (DDPM++ and NCSN++) or 'skip' output pyramid.
        resample_filter     = [1,1],        # 1-D resampling taps: [1,1] (DDPM++) or [1,3,3,1] (NCSN++).
    ):
        if embedding_type not in ('fourier', 'positional'):
            raise ValueError(f'SongUNet: embedding_type must be "positional" or "fourier", got {embedding_type!r}')
        if encoder_type not in ('standard', 'skip', 'residual'):
            raise ValueError(f'SongUNet: encoder_type must be "standard", "skip" or "residual", got {encoder_type!r}')
        if decoder_type not in ('standard', 'skip'):
            raise ValueError(f'SongUNet: decoder_type must be "standard" or "skip", got {decoder_type!r}')
        super().__init__()
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        noise_channels = model_channels * channel_mult_noise
        init = dict(init_mode='xavier_uniform')
        init_zero = dict(init_mode='xavier_uniform', init_weight=1e-5) # Tiny rather than exactly zero.
        init_attn = dict(init_mode='xavier_uniform', init_weight=np.sqrt(0.2))
        block_kwargs = dict(
            emb_channels=emb_channels, num_heads=1, dropout=dropout, skip_scale=np.sqrt(0.5), eps=1e-6,
            resample_filter=resample_filter, resample_proj=True, adaptive_scale=False,
            init=init, init_zero=init_zero, init_attn=init_attn,
        )

        # Embedding of noise level, class and augmentation.
        if embedding_type == 'positional':
            self.map_noise = PositionalEmbedding(num_channels=noise_channels, endpoint=True)
        else:
            self.map_noise = FourierEmbedding(num_channels=noise_channels)
        self.map_label = Linear(in_features=label_dim, out_features=noise_channels, **init) if label_dim else None
        self.map_augment = Linear(in_features=augment_dim, out_features=noise_channels, bias=False, **init) if augment_dim else None
        self.map_layer0 = Linear(in_features=noise_channels, out_features=emb_channels, **init)
        self.map_layer1 = Linear(in_features=emb_channels, out_features=emb_channels, **init)

        # Encoder, finest level first. Keys are '{res}x{res}_{role}'; forward() dispatches on the role.
        # `ch` is the running width of the main path, `aux_ch` that of the input pyramid.
        self.enc = torch.nn.ModuleDict()
        ch = in_channels
        aux_ch = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            tag = f'{res}x{res}'
            if level == 0:
                self.enc[f'{tag}_conv'] = Conv2d(in_channels=ch, out_channels=model_channels, kernel=3, **init)
                ch = model_channels
            else:
                self.enc[f'{tag}_down'] = UNetBlock(in_channels=ch, out_channels=ch, down=True, **block_kwargs)
                if encoder_type == 'skip':
                    self.enc[f'{tag}_aux_down'] = Conv2d(in_channels=aux_ch, out_channels=aux_ch, kernel=0, down=True, resample_filter=resample_filter)
                    self.enc[f'{tag}_aux_skip'] = Conv2d(in_channels=aux_ch, out_channels=ch, kernel=1, **init)
                if encoder_type == 'residual':
                    self.enc[f'{tag}_aux_residual'] = Conv2d(in_channels=aux_ch, out_channels=ch, kernel=3, down=True, resample_filter=resample_filter, fused_resample=True, **init)
                    aux_ch = ch
            for idx in range(num_blocks):
                self.enc[f'{tag}_block{idx}'] = UNetBlock(in_channels=ch, out_channels=model_channels * mult, attention=(res in attn_resolutions), **block_kwargs)
                ch = model_channels * mult
        # Widths of the tensors the decoder will concatenate, in push order.
        skip_widths = [module.out_channels for name, module in self.enc.items() if 'aux' not in name]

        # Decoder, coarsest level first.
        self.dec = torch.nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            tag = f'{res}x{res}'
            if level == len(channel_mult) - 1:
                self.dec[f'{tag}_in0'] = UNetBlock(in_channels=ch, out_channels=ch, attention=True, **block_kwargs)
                self.dec[f'{tag}_in1'] = UNetBlock(in_channels=ch, out_channels=ch, **block_kwargs)
            else:
                self.dec[f'{tag}_up'] = UNetBlock(in_channels=ch, out_channels=ch, up=True, **block_kwargs)
            for idx in range(num_blocks + 1):
                # Unlike ADM, attention sits only on the last block of a level.
                attn = (idx == num_blocks and res in attn_resolutions)
                self.dec[f'{tag}_block{idx}'] = UNetBlock(in_channels=ch + skip_widths.pop(), out_channels=model_channels * mult, attention=attn, **block_kwargs)
                ch = model_channels * mult
            if decoder_type == 'skip' or level == 0:
                if decoder_type == 'skip' and level < len(channel_mult) - 1:
                    self.dec[f'{tag}_aux_up'] = Conv2d(in_channels=out_channels, out_channels=out_channels, kernel=0, up=True, resample_filter=resample_filter)
                self.dec[f'{tag}_aux_norm'] = GroupNorm(num_channels=ch, eps=1e-6)
                self.dec[f'{tag}_aux_conv'] = Conv2d(in_channels=ch, out_channels=out_channels, kernel=3, **init_zero)

    def forward(self, x, noise_labels, class_labels, augment_labels=None):
        # Embedding. score_sde orders the noise features [sin, cos], so swap the halves.
        emb = self.map_noise(noise_labels)
        emb = emb.reshape(emb.shape[0], 2, -1).flip(1).reshape(*emb.shape)
        if self.map_label is not None:
            labels = class_labels
            if self.training and self.label_dropout:
                keep = torch.rand([x.shape[0], 1], device=x.device) >= self.label_dropout
                labels = labels * keep.to(labels.dtype)
            emb = emb + self.map_label(labels * np.sqrt(self.map_label.in_features))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = silu(self.map_layer0(emb))
        emb = silu(self.map_layer1(emb))

        # Encoder. The aux modules update the input pyramid and the last skip in place.
        skips = []
        aux = x
        for name, module in self.enc.items():
            role = name.split('_', 1)[1]
            if role == 'aux_down':
                aux = module(aux)
            elif role == 'aux_skip':
                x = skips[-1] = x + module(aux)
            elif role == 'aux_residual':
                x = skips[-1] = aux = (x + module(aux)) / np.sqrt(2)
            else:
                x = module(x, emb) if isinstance(module, UNetBlock) else module(x)
                skips.append(x)

        # Decoder. The output accumulates the aux_conv heads (one per level for 'skip').
        out = None
        head = None
        for name, module in self.dec.items():
            role = name.split('_', 1)[1]
            if role == 'aux_up':
                out = module(out)
            elif role == 'aux_norm':
                head = module(x)
            elif role == 'aux_conv':
                head = module(silu(head))
                out = head if out is None else head + out
            else:
                if x.shape[1] != module.in_channels:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = module(x, emb)
        return out

#----------------------------------------------------------------------------
# ADM U-Net of Dhariwal and Nichol (guided-diffusion) as used by EDM.

@persistence.persistent_class
class DhariwalUNet(torch.nn.Module):
    def __init__(self,
        img_resolution,                     # Height and width of the input and output images.
        in_channels,                        # Channels of the input image.
        out_channels,                       # Channels of the output image.
        label_dim           = 0,            # Size of the one-hot class vector; 0 = unconditional.
        augment_dim         = 0,            # Size of the augmentation label vector; 0 = none.

        model_channels      = 192,          # Base channel count; levels use multiples of it.
        channel_mult        = [1,2,3,4],    # Channel multiplier per level, finest level first.
        channel_mult_emb    = 4,            # Embedding width = model_channels * this.
        num_blocks          = 3,            # Residual blocks per level in the encoder (decoder: one more).
        attn_resolutions    = [32,16,8],    # Resolutions whose blocks get self-attention.
        dropout             = 0.10,         # Dropout inside the residual blocks.
        label_dropout       = 0,            # Probability of zeroing a sample's class label in training (for CFG).
    ):
        super().__init__()
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        init = dict(init_mode='kaiming_uniform', init_weight=np.sqrt(1/3), init_bias=np.sqrt(1/3)) # = torch.nn defaults.
        init_zero = dict(init_mode='kaiming_uniform', init_weight=0, init_bias=0)
        block_kwargs = dict(emb_channels=emb_channels, channels_per_head=64, dropout=dropout, init=init, init_zero=init_zero)

        # Embedding of noise level, augmentation and class (registered in this order).
        self.map_noise = PositionalEmbedding(num_channels=model_channels)
        self.map_augment = Linear(in_features=augment_dim, out_features=model_channels, bias=False, **init_zero) if augment_dim else None
        self.map_layer0 = Linear(in_features=model_channels, out_features=emb_channels, **init)
        self.map_layer1 = Linear(in_features=emb_channels, out_features=emb_channels, **init)
        self.map_label = Linear(in_features=label_dim, out_features=emb_channels, bias=False, init_mode='kaiming_normal', init_weight=np.sqrt(label_dim)) if label_dim else None

        # Encoder, finest level first.
        self.enc = torch.nn.ModuleDict()
        ch = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            tag = f'{res}x{res}'
            if level == 0:
                self.enc[f'{tag}_conv'] = Conv2d(in_channels=ch, out_channels=model_channels * mult, kernel=3, **init)
                ch = model_channels * mult
            else:
                self.enc[f'{tag}_down'] = UNetBlock(in_channels=ch, out_channels=ch, down=True, **block_kwargs)
            for idx in range(num_blocks):
                self.enc[f'{tag}_block{idx}'] = UNetBlock(in_channels=ch, out_channels=model_channels * mult, attention=(res in attn_resolutions), **block_kwargs)
                ch = model_channels * mult
        skip_widths = [module.out_channels for module in self.enc.values()]

        # Decoder, coarsest level first.
        self.dec = torch.nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            tag = f'{res}x{res}'
            if level == len(channel_mult) - 1:
                self.dec[f'{tag}_in0'] = UNetBlock(in_channels=ch, out_channels=ch, attention=True, **block_kwargs)
                self.dec[f'{tag}_in1'] = UNetBlock(in_channels=ch, out_channels=ch, **block_kwargs)
            else:
                self.dec[f'{tag}_up'] = UNetBlock(in_channels=ch, out_channels=ch, up=True, **block_kwargs)
            for idx in range(num_blocks + 1):
                self.dec[f'{tag}_block{idx}'] = UNetBlock(in_channels=ch + skip_widths.pop(), out_channels=model_channels * mult, attention=(res in attn_resolutions), **block_kwargs)
                ch = model_channels * mult
        self.out_norm = GroupNorm(num_channels=ch)
        self.out_conv = Conv2d(in_channels=ch, out_channels=out_channels, kernel=3, **init_zero)

    def forward(self, x, noise_labels, class_labels, augment_labels=None):
        # Embedding: no sin/cos swap here, and the class enters after map_layer1.
        emb = self.map_noise(noise_labels)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = silu(self.map_layer0(emb))
        emb = self.map_layer1(emb)
        if self.map_label is not None:
            labels = class_labels
            if self.training and self.label_dropout:
                keep = torch.rand([x.shape[0], 1], device=x.device) >= self.label_dropout
                labels = labels * keep.to(labels.dtype)
            emb = emb + self.map_label(labels)
        emb = silu(emb)

        # Encoder: every output is a skip connection.
        skips = []
        for module in self.enc.values():
            x = module(x, emb) if isinstance(module, UNetBlock) else module(x)
            skips.append(x)

        # Decoder: concatenate a skip whenever the block expects more channels.
        for module in self.dec.values():
            if x.shape[1] != module.in_channels:
                x = torch.cat([x, skips.pop()], dim=1)
            x = module(x, emb)
        return self.out_conv(silu(self.out_norm(x)))

#----------------------------------------------------------------------------
# Shared by the preconditioners: build the wrapped network by class name.

def _build_model(model_type, **kwargs):
    archs = {'SongUNet': SongUNet, 'DhariwalUNet': DhariwalUNet}
    if model_type not in archs:
        raise ValueError(f'Unknown model_type {model_type!r}: expected "SongUNet" or "DhariwalUNet"')
    return archs[model_type](**kwargs)

#----------------------------------------------------------------------------
# Shared by the preconditioners: EDM's input normalization and activation dtype.

def _prepare_inputs(net, x, sigma, class_labels, force_fp32):
    if x.ndim != 4 or x.shape[1] != net.img_channels:
        raise ValueError(f'{type(net).__name__}: expected x of shape [N, {net.img_channels}, H, W], got {list(x.shape)}')
    x = x.to(torch.float32)
    if not isinstance(sigma, torch.Tensor):
        sigma = torch.as_tensor(sigma, device=x.device)
    sigma = sigma.to(torch.float32).reshape(-1, 1, 1, 1) # One sigma per sample; a single one broadcasts.
    if net.label_dim == 0:
        class_labels = None
    elif class_labels is None:
        class_labels = torch.zeros([1, net.label_dim], device=x.device)
    else:
        if class_labels.shape[-1] != net.label_dim:
            raise ValueError(f'{type(net).__name__}: class_labels must be one-hot vectors of size label_dim={net.label_dim}, got shape {list(class_labels.shape)}')
        class_labels = class_labels.to(torch.float32).reshape(-1, net.label_dim)
    # fp16 is manual (each layer casts its fp32 weights) and only used on CUDA.
    dtype = torch.float16 if (net.use_fp16 and not force_fp32 and x.device.type == 'cuda') else torch.float32
    return x, sigma, class_labels, dtype

#----------------------------------------------------------------------------
# Variance preserving (VP) preconditioning, sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1).

@persistence.persistent_class
class VPPrecond(torch.nn.Module):
    def __init__(self,
        img_resolution,                 # Image height and width.
        img_channels,                   # Image channels.
        label_dim       = 0,            # Size of the one-hot class vector; 0 = unconditional.
        use_fp16        = False,        # Run the wrapped network in fp16 (on CUDA only)?
        beta_d          = 19.9,         # beta(t) = beta_min + beta_d * t: slope.
        beta_min        = 0.1,          # beta(t) = beta_min + beta_d * t: intercept.
        M               = 1000,         # Number of discrete DDPM steps; c_noise spans [0, M-1].
        epsilon_t       = 1e-5,         # Smallest t, which fixes sigma_min.
        model_type      = 'SongUNet',   # 'SongUNet' or 'DhariwalUNet'.
        **model_kwargs,                 # Passed on to the network.
    ):
        super().__init__()
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.use_fp16 = use_fp16
        self.beta_d = beta_d
        self.beta_min = beta_min
        self.M = M
        self.epsilon_t = epsilon_t
        # CPU tensors, so that building under a meta (or CUDA) default device works too.
        self.sigma_min = float(self.sigma(torch.as_tensor(epsilon_t, device='cpu')))
        self.sigma_max = float(self.sigma(torch.as_tensor(1, device='cpu')))
        self.model = _build_model(model_type, img_resolution=img_resolution, in_channels=img_channels, out_channels=img_channels, label_dim=label_dim, **model_kwargs)

    def forward(self, x, sigma, class_labels=None, force_fp32=False, **model_kwargs):
        x, sigma, class_labels, dtype = _prepare_inputs(self, x, sigma, class_labels, force_fp32)
        c_skip = 1
        c_out = -sigma
        c_in = 1 / (sigma ** 2 + 1).sqrt()
        c_noise = (self.M - 1) * self.sigma_inv(sigma)
        F_x = self.model((c_in * x).to(dtype), c_noise.flatten(), class_labels=class_labels, **model_kwargs)
        assert F_x.dtype == dtype
        D_x = c_skip * x + c_out * F_x.to(torch.float32)
        return D_x

    def sigma(self, t):
        t = t if isinstance(t, torch.Tensor) else torch.as_tensor(t)
        return ((0.5 * self.beta_d * (t ** 2) + self.beta_min * t).exp() - 1).sqrt()

    def sigma_inv(self, sigma):
        sigma = sigma if isinstance(sigma, torch.Tensor) else torch.as_tensor(sigma)
        return ((self.beta_min ** 2 + 2 * self.beta_d * (1 + sigma ** 2).log()).sqrt() - self.beta_min) / self.beta_d

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)

#----------------------------------------------------------------------------
# Variance exploding (VE) preconditioning of Song et al. (score SDE).

@persistence.persistent_class
class VEPrecond(torch.nn.Module):
    def __init__(self,
        img_resolution,                 # Image height and width.
        img_channels,                   # Image channels.
        label_dim       = 0,            # Size of the one-hot class vector; 0 = unconditional.
        use_fp16        = False,        # Run the wrapped network in fp16 (on CUDA only)?
        sigma_min       = 0.02,         # Lowest noise level the model supports.
        sigma_max       = 100,          # Highest noise level the model supports.
        model_type      = 'SongUNet',   # 'SongUNet' or 'DhariwalUNet'.
        **model_kwargs,                 # Passed on to the network.
    ):
        super().__init__()
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.use_fp16 = use_fp16
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.model = _build_model(model_type, img_resolution=img_resolution, in_channels=img_channels, out_channels=img_channels, label_dim=label_dim, **model_kwargs)

    def forward(self, x, sigma, class_labels=None, force_fp32=False, **model_kwargs):
        x, sigma, class_labels, dtype = _prepare_inputs(self, x, sigma, class_labels, force_fp32)
        c_skip = 1
        c_out = sigma
        c_in = 1
        c_noise = (0.5 * sigma).log()
        F_x = self.model((c_in * x).to(dtype), c_noise.flatten(), class_labels=class_labels, **model_kwargs)
        assert F_x.dtype == dtype
        D_x = c_skip * x + c_out * F_x.to(torch.float32)
        return D_x

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)

#----------------------------------------------------------------------------
# Improved DDPM (Nichol & Dhariwal) preconditioning over the discrete noise levels in buffer u.

@persistence.persistent_class
class iDDPMPrecond(torch.nn.Module):
    def __init__(self,
        img_resolution,                     # Image height and width.
        img_channels,                       # Image channels.
        label_dim       = 0,                # Size of the one-hot class vector; 0 = unconditional.
        use_fp16        = False,            # Run the wrapped network in fp16 (on CUDA only)?
        C_1             = 0.001,            # Lower clip of alpha_bar(j-1)/alpha_bar(j) (low noise end).
        C_2             = 0.008,            # Offset s of the cosine schedule (high noise end).
        M               = 1000,             # Number of discrete steps.
        model_type      = 'DhariwalUNet',   # 'SongUNet' or 'DhariwalUNet'.
        **model_kwargs,                     # Passed on to the network.
    ):
        super().__init__()
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.use_fp16 = use_fp16
        self.C_1 = C_1
        self.C_2 = C_2
        self.M = M
        # The network also predicts the variance, hence 2x channels; forward() uses the first half.
        self.model = _build_model(model_type, img_resolution=img_resolution, in_channels=img_channels, out_channels=img_channels*2, label_dim=label_dim, **model_kwargs)

        # u[M] = 0 < ... < u[0] = sigma_max; the network sees the index of the nearest level.
        # Backward recursion from u[M] = 0, in float32 on the CPU (also under a meta default device).
        u = torch.zeros(M + 1, device='cpu')
        for j in range(M, 0, -1):
            ratio = self.alpha_bar(torch.as_tensor(j - 1, device='cpu')) / self.alpha_bar(torch.as_tensor(j, device='cpu'))
            u[j - 1] = ((u[j] ** 2 + 1) / ratio.clip(min=C_1) - 1).sqrt()
        self.register_buffer('u', u)
        self.sigma_min = float(u[M - 1])
        self.sigma_max = float(u[0])

    def forward(self, x, sigma, class_labels=None, force_fp32=False, **model_kwargs):
        x, sigma, class_labels, dtype = _prepare_inputs(self, x, sigma, class_labels, force_fp32)
        c_skip = 1
        c_out = -sigma
        c_in = 1 / (sigma ** 2 + 1).sqrt()
        c_noise = self.M - 1 - self.round_sigma(sigma, return_index=True).to(torch.float32)
        F_x = self.model((c_in * x).to(dtype), c_noise.flatten(), class_labels=class_labels, **model_kwargs)
        assert F_x.dtype == dtype
        D_x = c_skip * x + c_out * F_x[:, :self.img_channels].to(torch.float32)
        return D_x

    def alpha_bar(self, j):
        j = j if isinstance(j, torch.Tensor) else torch.as_tensor(j)
        return (0.5 * np.pi * j / self.M / (self.C_2 + 1)).sin() ** 2

    def round_sigma(self, sigma, return_index=False):
        # Nearest entry of u (or its index), with sigma's shape, device and dtype.
        sigma = torch.as_tensor(sigma)
        dist = torch.cdist(sigma.to(self.u.device).to(torch.float32).reshape(1, -1, 1), self.u.reshape(1, -1, 1))
        index = dist.argmin(2)
        result = index if return_index else self.u[index.flatten()].to(sigma.dtype)
        return result.reshape(sigma.shape).to(sigma.device)

#----------------------------------------------------------------------------
# EDM preconditioning (Karras et al. 2022, Table 1).

@persistence.persistent_class
class EDMPrecond(torch.nn.Module):
    def __init__(self,
        img_resolution,                     # Image height and width.
        img_channels,                       # Image channels.
        label_dim       = 0,                # Size of the one-hot class vector; 0 = unconditional.
        use_fp16        = False,            # Run the wrapped network in fp16 (on CUDA only)?
        sigma_min       = 0,                # Lowest noise level the model supports.
        sigma_max       = float('inf'),     # Highest noise level the model supports.
        sigma_data      = 0.5,              # Standard deviation of the training data.
        model_type      = 'DhariwalUNet',   # 'SongUNet' or 'DhariwalUNet'.
        **model_kwargs,                     # Passed on to the network.
    ):
        super().__init__()
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.use_fp16 = use_fp16
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.sigma_data = sigma_data
        self.model = _build_model(model_type, img_resolution=img_resolution, in_channels=img_channels, out_channels=img_channels, label_dim=label_dim, **model_kwargs)

    def forward(self, x, sigma, class_labels=None, force_fp32=False, **model_kwargs):
        x, sigma, class_labels, dtype = _prepare_inputs(self, x, sigma, class_labels, force_fp32)
        c_skip = self.sigma_data ** 2 / (sigma ** 2 + self.sigma_data ** 2)
        c_out = sigma * self.sigma_data / (sigma ** 2 + self.sigma_data ** 2).sqrt()
        c_in = 1 / (self.sigma_data ** 2 + sigma ** 2).sqrt()
        c_noise = sigma.log() / 4
        F_x = self.model((c_in * x).to(dtype), c_noise.flatten(), class_labels=class_labels, **model_kwargs)
        assert F_x.dtype == dtype
        D_x = c_skip * x + c_out * F_x.to(torch.float32)
        return D_x

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)

#----------------------------------------------------------------------------
