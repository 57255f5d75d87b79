"""Denoiser networks and preconditioners of EDM (Karras et al., NeurIPS 2022), written to be
checkpoint-compatible with the released NVlabs/edm pickles: same class names, constructor
arguments, attributes, state_dict keys and shapes, and numerics."""

# Snapshots embed this file and stock EDM executes it when loading them, so the
# module-level imports stay within what a stock EDM environment has.
import numpy as np
import torch
from torch_utils import persistence
from torch.nn.functional import silu

_functional = torch.nn.functional

#----------------------------------------------------------------------------
# Initial weights for one of the four standard init schemes.

# mode -> (scale as a function of the fans, True to scale U(-1, 1) or False to scale N(0, 1)).
_INIT_SCHEMES = {
    'xavier_uniform':  (lambda fan_in, fan_out: np.sqrt(6 / (fan_in + fan_out)), True),
    'xavier_normal':   (lambda fan_in, fan_out: np.sqrt(2 / (fan_in + fan_out)), False),
    'kaiming_uniform': (lambda fan_in, fan_out: np.sqrt(3 / fan_in), True),
    'kaiming_normal':  (lambda fan_in, fan_out: np.sqrt(1 / fan_in), False),
}

def weight_init(shape, mode, fan_in, fan_out):
    if mode not in _INIT_SCHEMES:
        raise ValueError(f'weight_init: unknown mode {mode!r} (expected one of {", ".join(_INIT_SCHEMES)})')
    scale, uniform = _INIT_SCHEMES[mode]
    # U(-1, 1) as rand * 2 - 1: the exact expression fixes the RNG calls and the rounding.
    unit = torch.rand(*shape) * 2 - 1 if uniform else torch.randn(*shape)
    return scale(fan_in, fan_out) * unit

def _drawn_parameter(shape, gain, mode, fan_in, fan_out):
    # Drawn even when gain is 0, so that seeded construction consumes the RNG like EDM.
    return torch.nn.Parameter(weight_init(shape, mode, fan_in, fan_out) * gain)

#----------------------------------------------------------------------------
# Dense layer y = x W^T + b. Parameters stay fp32 and follow the input dtype.

@persistence.persistent_class
class Linear(torch.nn.Module):
    def __init__(self, in_features, out_features, bias=True, init_mode='kaiming_normal', init_weight=1, init_bias=0):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        fans = (init_mode, in_features, out_features)
        self.weight = _drawn_parameter([out_features, in_features], init_weight, *fans)
        self.bias = _drawn_parameter([out_features], init_bias, *fans) if bias else None

    def forward(self, x):
        y = x @ self.weight.to(x.dtype).t()
        return y if self.bias is None else y.add_(self.bias.to(x.dtype))

#----------------------------------------------------------------------------
# Square convolution with optional 2x FIR up/downsampling (kernel=0: resampling only).

def _fir_filter(taps):
    # Outer product of the 1-D taps with unit DC gain, as one [1, 1, len, len] kernel.
    f = torch.as_tensor(taps, dtype=torch.float32)
    return (torch.outer(f, f) / f.sum().square())[None, None]

def _resample(x, f, up, padding):
    # Depthwise stride-2 filtering; the transposed (up) one has gain 4 for the zeros it inserts.
    channels = x.shape[1]
    if up:
        return _functional.conv_transpose2d(x, f.mul(4).tile([channels, 1, 1, 1]), groups=channels, stride=2, padding=padding)
    return _functional.conv2d(x, f.tile([channels, 1, 1, 1]), groups=channels, stride=2, padding=padding)

@persistence.persistent_class
class Conv2d(torch.nn.Module):
    def __init__(self,
        in_channels, out_channels, kernel, bias=True, up=False, down=False,
        resample_filter=[1,1], fused_resample=False, init_mode='kaiming_normal', init_weight=1, init_bias=0,
    ):
        if up and down:
            raise ValueError('Conv2d: up=True and down=True cannot be combined')
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.up, self.down, self.fused_resample = up, down, fused_resample
        fans = (init_mode, in_channels * kernel * kernel, out_channels * kernel * kernel)
        self.weight = _drawn_parameter([out_channels, in_channels, kernel, kernel], init_weight, *fans) if kernel else None
        self.bias = _drawn_parameter([out_channels], init_bias, *fans) if kernel and bias else None
        # Without resampling the buffer is None, which keeps it out of the state_dict as in EDM.
        self.register_buffer('resample_filter', _fir_filter(resample_filter) if up or down else None)

    def forward(self, x):
        w, b, f = (None if t is None else t.to(x.dtype) for t in (self.weight, self.bias, self.resample_filter))
        w_pad = 0 if w is None else w.shape[-1] // 2
        f_pad = 0 if f is None else (f.shape[-1] - 1) // 2
        if w is not None and self.fused_resample and self.up:
            # Filter at the input resolution first; the two paddings share what the pair needs.
            x = _resample(x, f, up=True, padding=max(f_pad - w_pad, 0))
            x = _functional.conv2d(x, w, padding=max(w_pad - f_pad, 0))
        elif w is not None and self.fused_resample and self.down:
            # Convolve at full resolution with both paddings, then filter and decimate.
            x = _functional.conv2d(x, w, padding=w_pad + f_pad)
            x = _resample(x, f, up=False, padding=0)
        else:
            if self.up or self.down:
                x = _resample(x, f, up=self.up, padding=f_pad)
            if w is not None:
                x = _functional.conv2d(x, w, padding=w_pad)
        return x if b is None else x.add_(b.reshape(1, -1, 1, 1))

#----------------------------------------------------------------------------
# Group normalization with at least min_channels_per_group channels per group.

@persistence.persistent_class
class GroupNorm(torch.nn.Module):
    def __init__(self, num_channels, num_groups=32, min_channels_per_group=4, eps=1e-5):
        super().__init__()
        # Narrow layers get fewer groups rather than groups below the minimum width.
        self.num_groups, self.eps = min(num_groups, num_channels // min_channels_per_group), eps
        self.weight, self.bias = torch.nn.Parameter(torch.ones(num_channels)), torch.nn.Parameter(torch.zeros(num_channels))

    def forward(self, x):
        return _functional.group_norm(x, num_groups=self.num_groups, weight=self.weight.to(x.dtype), bias=self.bias.to(x.dtype), eps=self.eps)

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
    # q, k: [N, C, L]. fp16 logits could overflow, so the math is fp32; storage keeps q's dtype.

    @staticmethod
    def forward(ctx, q, k):
        root_c = np.sqrt(k.shape[1])
        logits = torch.einsum('ncq,nck->nqk', q.to(torch.float32), (k / root_c).to(torch.float32))
        weights = logits.softmax(dim=2).to(q.dtype)
        ctx.save_for_backward(q, k, weights)
        return weights

    @staticmethod
    def backward(ctx, grad_weights):
        q, k, weights = ctx.saved_tensors
        grad_logits = _softmax_backward(grad_weights.to(torch.float32), weights.to(torch.float32))
        root_c = np.sqrt(k.shape[1])
        # Each input's gradient contracts grad_logits with the other input, back in its own dtype.
        return tuple(torch.einsum(spec, other.to(torch.float32), grad_logits).to(own.dtype) / root_c
            for spec, own, other in [('nck,nqk->ncq', q, k), ('ncq,nqk->nck', k, q)])

#----------------------------------------------------------------------------
# Residual U-Net block with embedding injection, resampling and attention (DDPM++, NCSN++, ADM).

@persistence.persistent_class
class UNetBlock(torch.nn.Module):
    # Opt-in (set_fused_attention): attention through torch's scaled_dot_product_attention,
    # which rounds differently (and accumulates fp16 in fp16). Not a constructor argument, so
    # checkpoints and the default numerics do not change.
    fused_attention = False

    def __init__(self, in_channels, out_channels, emb_channels,
        up=False, down=False, attention=False, num_heads=None, channels_per_head=64,
        dropout=0, skip_scale=1, eps=1e-5, resample_filter=[1,1], resample_proj=False, adaptive_scale=True,
        init=dict(), init_zero=dict(init_weight=0), init_attn=None, # Init of most layers, of the branch ends, of qkv.
    ):
        super().__init__()
        self.in_channels, self.out_channels, self.emb_channels = in_channels, out_channels, emb_channels
        self.num_heads = 0 if not attention else (out_channels // channels_per_head if num_heads is None else num_heads)
        self.dropout, self.skip_scale, self.adaptive_scale = dropout, skip_scale, adaptive_scale
        resampling = dict(up=up, down=down, resample_filter=resample_filter)
        widens = in_channels != out_channels

        # Registration order is the state_dict order of released checkpoints.
        self.norm0 = GroupNorm(in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels, out_channels, 3, **resampling, **init)
        # Additive injection needs one value per channel, adaptive a scale and a shift.
        self.affine = Linear(emb_channels, out_channels * 2 if adaptive_scale else out_channels, **init)
        self.norm1 = GroupNorm(out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, 3, **init_zero)
        # Same width: the shortcut only resamples (kernel 0, no weights) unless a projection is requested.
        needs_shortcut = widens or up or down
        self.skip = Conv2d(in_channels, out_channels, 1 if widens or resample_proj else 0, **resampling, **init) if needs_shortcut else None
        if self.num_heads:
            self.norm2 = GroupNorm(out_channels, eps=eps)
            self.qkv = Conv2d(out_channels, 3 * out_channels, 1, **(init if init_attn is None else init_attn))
            self.proj = Conv2d(out_channels, out_channels, 1, **init_zero)

    def forward(self, x, emb):
        h = self.conv0(silu(self.norm0(x)))
        injected = self.affine(emb).unsqueeze(2).unsqueeze(3).to(h.dtype)
        if self.adaptive_scale:
            scale, shift = injected.chunk(chunks=2, dim=1)
            h = silu(torch.addcmul(shift, self.norm1(h), scale + 1))
        else:
            h = silu(self.norm1(h.add_(injected)))
        h = self.conv1(_functional.dropout(h, p=self.dropout, training=self.training))
        shortcut = x if self.skip is None else self.skip(x)
        out = h.add_(shortcut) * self.skip_scale
        return self._attend(out) if self.num_heads else out

    def _attend(self, x):
        # qkv channels are read as (head, channel, 3): q, k, v interleave with stride 3.
        rows, per_head = x.shape[0] * self.num_heads, x.shape[1] // self.num_heads
        q, k, v = self.qkv(self.norm2(x)).reshape(rows, per_head, 3, -1).unbind(2)
        if self.fused_attention:
            mixed = _functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
        else:
            mixed = torch.einsum('nqk,nck->ncq', AttentionOp.apply(q, k), v)
        return self.proj(mixed.reshape(*x.shape)).add_(x) * self.skip_scale

# Switch every UNetBlock of module to (or back from) the fused attention above.
def set_fused_attention(module, enabled=True):
    for block in module.modules():
        if isinstance(block, UNetBlock):
            if enabled:
                block.fused_attention = True
            else:
                vars(block).pop('fused_attention', None)
    return module

#----------------------------------------------------------------------------
# Embeddings of a scalar per sample as [cos | sin] features.

def _cos_sin(x, freqs):
    angles = torch.outer(x, freqs.to(x.dtype))
    return torch.cat([angles.cos(), angles.sin()], dim=1)

# Sinusoidal: frequencies (1/max_positions)^(i/(C/2 - endpoint)) for i < C/2.
@persistence.persistent_class
class PositionalEmbedding(torch.nn.Module):
    def __init__(self, num_channels, max_positions=10000, endpoint=False):
        super().__init__()
        self.num_channels, self.max_positions, self.endpoint = num_channels, max_positions, endpoint

    def forward(self, x):
        half = self.num_channels // 2
        exponents = torch.arange(start=0, end=half, dtype=torch.float32, device=x.device) / (half - int(self.endpoint))
        return _cos_sin(x, (1 / self.max_positions) ** exponents)

# Random Fourier features (NCSN++): frequencies drawn once into the buffer `freqs`.
@persistence.persistent_class
class FourierEmbedding(torch.nn.Module):
    def __init__(self, num_channels, scale=16):
        super().__init__()
        self.register_buffer('freqs', scale * torch.randn(num_channels // 2)) # A buffer: fixed, but saved.

    def forward(self, x):
        return _cos_sin(x, 2 * np.pi * self.freqs)

#----------------------------------------------------------------------------
# Pieces shared by the two U-Nets. Module names are '{res}x{res}_{role}', in forward order.

def _levels(img_resolution, model_channels, channel_mult):
    # (level, tag, resolution, width) per resolution level, finest first.
    return [(level, f'{res}x{res}', res, model_channels * mult)
        for level, mult in enumerate(channel_mult) for res in [img_resolution >> level]]

def _add_mapping_mlp(net, in_width, width, init):
    net.map_layer0 = Linear(in_width, width, **init)
    net.map_layer1 = Linear(width, width, **init)

def _add_encoder_entry(enc, tag, finest, width, stem_width, block, init):
    # A level opens with the stem convolution (finest level) or a downsampling block; returns the new width.
    if finest:
        enc[f'{tag}_conv'] = Conv2d(width, stem_width, kernel=3, **init)
        return stem_width
    enc[f'{tag}_down'] = block(width, width, down=True)
    return width

def _add_decoder_entry(dec, tag, coarsest, width, block):
    # The bottleneck has two blocks (the first with attention); other levels open with an upsampling block.
    if coarsest:
        dec[f'{tag}_in0'] = block(width, width, attention=True)
        dec[f'{tag}_in1'] = block(width, width)
    else:
        dec[f'{tag}_up'] = block(width, width, up=True)

def _add_level_blocks(modules, tag, width, level_width, attention, block, skip_widths=None):
    # One block per attention flag. Decoder blocks (skip_widths given) also take the
    # most recent encoder skip; returns the width after the level.
    for idx, attends in enumerate(attention):
        in_width = width + skip_widths.pop() if skip_widths is not None else width
        modules[f'{tag}_block{idx}'] = block(in_width, level_width, attention=attends)
        width = level_width
    return width

def _drop_labels(net, labels, x):
    # Classifier-free guidance training: zero whole label rows with probability label_dropout.
    if not (net.training and net.label_dropout):
        return labels
    keep = torch.rand([x.shape[0], 1], device=x.device) >= net.label_dropout
    return labels * keep.to(labels.dtype)

def _add_augment(net, emb, augment_labels):
    return emb if net.map_augment is None or augment_labels is None else emb + net.map_augment(augment_labels)

def _run(module, x, emb):
    return module(x, emb) if isinstance(module, UNetBlock) else module(x)

def _run_decoder_block(module, x, emb, skips):
    # A block that expects more channels than x has takes the next skip connection.
    if x.shape[1] != module.in_channels:
        x = torch.cat([x, skips.pop()], dim=1)
    return module(x, emb)

#----------------------------------------------------------------------------
# DDPM++ / NCSN++ U-Net of Song et al. (score_sde) in EDM's configurable form.

_SONG_VARIANTS = dict(
    embedding_type=('positional', 'fourier'),
    encoder_type=('standard', 'skip', 'residual'),
    decoder_type=('standard', 'skip'),
)

@persistence.persistent_class
class SongUNet(torch.nn.Module):
    """img_resolution, in_channels, out_channels: image size and channels in and out.
    label_dim, augment_dim: sizes of the one-hot class and augmentation vectors (0 = none).
    model_channels * channel_mult[level]: width per level, finest first; the embedding is
    model_channels * channel_mult_emb wide, the noise features model_channels * channel_mult_noise.
    num_blocks per encoder level (decoder: one more); attention at attn_resolutions.
    label_dropout: probability of zeroing a sample's label in training (for guidance).
    DDPM++: positional embedding, standard encoder and decoder, [1,1] filter.
    NCSN++: fourier embedding, channel_mult_noise=2, residual encoder, [1,3,3,1] filter."""

    def __init__(self,
        img_resolution, in_channels, out_channels, label_dim=0, augment_dim=0,
        model_channels=128, channel_mult=[1,2,2,2], channel_mult_emb=4, num_blocks=4, attn_resolutions=[16],
        dropout=0.10, label_dropout=0,
        embedding_type='positional', channel_mult_noise=1, encoder_type='standard', decoder_type='standard',
        resample_filter=[1,1],
    ):
        chosen = dict(embedding_type=embedding_type, encoder_type=encoder_type, decoder_type=decoder_type)
        for arg, allowed in _SONG_VARIANTS.items():
            if chosen[arg] not in allowed:
                raise ValueError(f'SongUNet: {arg} must be one of {", ".join(allowed)}, got {chosen[arg]!r}')
        super().__init__()
        self.label_dropout = label_dropout
        emb_width, noise_width = model_channels * channel_mult_emb, model_channels * channel_mult_noise
        init = dict(init_mode='xavier_uniform')
        init_zero = dict(init, init_weight=1e-5) # Tiny rather than exactly zero.
        init_attn = dict(init, init_weight=np.sqrt(0.2))
        block = lambda cin, cout, **role: UNetBlock(cin, cout, emb_width, num_heads=1, dropout=dropout,
            skip_scale=np.sqrt(0.5), eps=1e-6, resample_filter=resample_filter, resample_proj=True,
            adaptive_scale=False, init=init, init_zero=init_zero, init_attn=init_attn, **role)

        # Mapping network; the FourierEmbedding draws its frequencies first.
        self.map_noise = PositionalEmbedding(noise_width, endpoint=True) if embedding_type == 'positional' else FourierEmbedding(noise_width)
        self.map_label = Linear(label_dim, noise_width, **init) if label_dim else None
        self.map_augment = Linear(augment_dim, noise_width, bias=False, **init) if augment_dim else None
        _add_mapping_mlp(self, noise_width, emb_width, init)

        # Encoder. `pyramid` is the width of the downsampled input that skip/residual encoders carry along.
        levels = _levels(img_resolution, model_channels, channel_mult)
        self.enc = torch.nn.ModuleDict()
        width = pyramid = in_channels
        for level, tag, res, level_width in levels:
            width = _add_encoder_entry(self.enc, tag, level == 0, width, model_channels, block, init)
            if level > 0 and encoder_type == 'skip':
                self.enc[f'{tag}_aux_down'] = Conv2d(pyramid, pyramid, kernel=0, down=True, resample_filter=resample_filter)
                self.enc[f'{tag}_aux_skip'] = Conv2d(pyramid, width, kernel=1, **init)
            if level > 0 and encoder_type == 'residual':
                self.enc[f'{tag}_aux_residual'] = Conv2d(pyramid, width, kernel=3, down=True, resample_filter=resample_filter, fused_resample=True, **init)
                pyramid = width
            width = _add_level_blocks(self.enc, tag, width, level_width, [res in attn_resolutions] * num_blocks, block)
        # The aux modules replace a skip rather than adding one.
        skip_widths = [module.out_channels for name, module in self.enc.items() if '_aux_' not in name]

        # Decoder. Unlike ADM, attention sits only on the last block of a level. Output heads
        # (aux_norm, aux_conv) sit at the finest level, or at every level for the skip decoder.
        self.dec = torch.nn.ModuleDict()
        for level, tag, res, level_width in reversed(levels):
            coarsest = level == len(levels) - 1
            _add_decoder_entry(self.dec, tag, coarsest, width, block)
            attention = [res in attn_resolutions and idx == num_blocks for idx in range(num_blocks + 1)]
            width = _add_level_blocks(self.dec, tag, width, level_width, attention, block, skip_widths)
            if decoder_type == 'skip' or level == 0:
                if decoder_type == 'skip' and not coarsest:
                    self.dec[f'{tag}_aux_up'] = Conv2d(out_channels, out_channels, kernel=0, up=True, resample_filter=resample_filter)
                self.dec[f'{tag}_aux_norm'] = GroupNorm(width, eps=1e-6)
                self.dec[f'{tag}_aux_conv'] = Conv2d(width, out_channels, kernel=3, **init_zero)

    def _embedding(self, x, noise_labels, class_labels, augment_labels):
        features = self.map_noise(noise_labels)
        emb = torch.cat(features.chunk(2, dim=1)[::-1], dim=1) # score_sde orders them [sin | cos].
        if self.map_label is not None:
            labels = _drop_labels(self, class_labels, x)
            emb = emb + self.map_label(labels * np.sqrt(self.map_label.in_features))
        emb = _add_augment(self, emb, augment_labels)
        return silu(self.map_layer1(silu(self.map_layer0(emb))))

    def forward(self, x, noise_labels, class_labels, augment_labels=None):
        emb = self._embedding(x, noise_labels, class_labels, augment_labels)

        # Encoder. The aux modules fold the input pyramid into the newest skip.
        skips, pyramid = [], x
        for name, module in self.enc.items():
            role = name.partition('_')[2]
            if role == 'aux_down':
                pyramid = module(pyramid)
            elif role == 'aux_skip':
                x = skips[-1] = x + module(pyramid)
            elif role == 'aux_residual':
                x = skips[-1] = pyramid = (x + module(pyramid)) / np.sqrt(2)
            else:
                x = _run(module, x, emb)
                skips.append(x)

        # Decoder. The image is the sum of the heads, each previous one upsampled (skip decoder).
        image = None
        for name, module in self.dec.items():
            tag, _, role = name.partition('_')
            if role == 'aux_up':
                image = module(image)
            elif role == 'aux_conv':
                head = module(silu(self.dec[f'{tag}_aux_norm'](x)))
                image = head if image is None else head + image
            elif role != 'aux_norm':
                x = _run_decoder_block(module, x, emb, skips)
        return image

#----------------------------------------------------------------------------
# ADM U-Net of Dhariwal and Nichol (guided-diffusion) as used by EDM.

@persistence.persistent_class
class DhariwalUNet(torch.nn.Module):
    """Arguments as for SongUNet (no variants): level widths model_channels * channel_mult,
    num_blocks per encoder level (decoder: one more), attention on every block at attn_resolutions."""

    def __init__(self,
        img_resolution, in_channels, out_channels, label_dim=0, augment_dim=0,
        model_channels=192, channel_mult=[1,2,3,4], channel_mult_emb=4, num_blocks=3, attn_resolutions=[32,16,8],
        dropout=0.10, label_dropout=0,
    ):
        super().__init__()
        self.label_dropout = label_dropout
        emb_width = model_channels * channel_mult_emb
        init = dict(init_mode='kaiming_uniform', init_weight=np.sqrt(1/3), init_bias=np.sqrt(1/3)) # = torch.nn defaults.
        init_zero = dict(init, init_weight=0, init_bias=0)
        block = lambda cin, cout, **role: UNetBlock(cin, cout, emb_width, channels_per_head=64, dropout=dropout,
            init=init, init_zero=init_zero, **role)

        # Mapping network, registered in EDM's order: the class map comes last.
        self.map_noise = PositionalEmbedding(model_channels)
        self.map_augment = Linear(augment_dim, model_channels, bias=False, **init_zero) if augment_dim else None
        _add_mapping_mlp(self, model_channels, emb_width, init)
        self.map_label = Linear(label_dim, emb_width, bias=False, init_mode='kaiming_normal', init_weight=np.sqrt(label_dim)) if label_dim else None

        levels = _levels(img_resolution, model_channels, channel_mult)
        self.enc = torch.nn.ModuleDict()
        width = in_channels
        for level, tag, res, level_width in levels:
            width = _add_encoder_entry(self.enc, tag, level == 0, width, level_width, block, init)
            width = _add_level_blocks(self.enc, tag, width, level_width, [res in attn_resolutions] * num_blocks, block)
        skip_widths = [module.out_channels for module in self.enc.values()]

        self.dec = torch.nn.ModuleDict()
        for level, tag, res, level_width in reversed(levels):
            _add_decoder_entry(self.dec, tag, level == len(levels) - 1, width, block)
            width = _add_level_blocks(self.dec, tag, width, level_width, [res in attn_resolutions] * (num_blocks + 1), block, skip_widths)
        self.out_norm = GroupNorm(width)
        self.out_conv = Conv2d(width, out_channels, kernel=3, **init_zero)

    def _embedding(self, x, noise_labels, class_labels, augment_labels):
        # No sin/cos swap here, and the class enters after map_layer1.
        emb = _add_augment(self, self.map_noise(noise_labels), augment_labels)
        emb = self.map_layer1(silu(self.map_layer0(emb)))
        if self.map_label is not None:
            emb = emb + self.map_label(_drop_labels(self, class_labels, x))
        return silu(emb)

    def forward(self, x, noise_labels, class_labels, augment_labels=None):
        emb = self._embedding(x, noise_labels, class_labels, augment_labels)
        skips = []
        for module in self.enc.values(): # Every encoder output is a skip connection.
            x = _run(module, x, emb)
            skips.append(x)
        for module in self.dec.values():
            x = _run_decoder_block(module, x, emb, skips)
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
# D(x; sigma) = c_skip x + c_out F(c_in x; c_noise) (EDM Table 1). Each preconditioner
# below sets up its noise schedule and defines _coefficients(sigma) -> (c_skip, c_out, c_in, c_noise).

def _tensor(value):
    # Unlike torch.as_tensor, leaves a tensor where it is under a default-device context (meta builds).
    return value if isinstance(value, torch.Tensor) else torch.as_tensor(value)

class _Preconditioner(torch.nn.Module):
    def _wrap_model(self, model_type, img_resolution, img_channels, label_dim, use_fp16, model_kwargs, out_channels):
        self.img_resolution, self.img_channels, self.label_dim, self.use_fp16 = img_resolution, img_channels, label_dim, use_fp16
        self.model = _build_model(model_type, img_resolution=img_resolution, in_channels=img_channels,
            out_channels=out_channels, label_dim=label_dim, **model_kwargs)

    def forward(self, x, sigma, class_labels=None, force_fp32=False, **model_kwargs):
        x, sigma, class_labels, dtype = _prepare_inputs(self, x, sigma, class_labels, force_fp32)
        c_skip, c_out, c_in, c_noise = self._coefficients(sigma)
        F_x = self.model((c_in * x).to(dtype), c_noise.flatten(), class_labels=class_labels, **model_kwargs)
        if F_x.dtype != dtype and not torch.is_autocast_enabled(x.device.type): # autocast picks its own dtypes
            raise RuntimeError(f'{type(self).__name__}: the network returned {F_x.dtype}, expected {dtype}')
        # Channels past img_channels (iDDPM's learned variance) are not part of the denoiser.
        return c_skip * x + c_out * F_x[:, :self.img_channels].to(torch.float32)

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)

# Variance preserving (VP): sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1).
@persistence.persistent_class
class VPPrecond(_Preconditioner):
    def __init__(self,
        img_resolution, img_channels, label_dim=0, use_fp16=False, # Image size and channels, class count (0: none), fp16 on CUDA.
        beta_d=19.9, beta_min=0.1, M=1000, epsilon_t=1e-5,         # beta(t) = beta_min + beta_d t; M steps; t from epsilon_t to 1.
        model_type='SongUNet', **model_kwargs,                     # The network and its arguments.
    ):
        super().__init__()
        self.beta_d, self.beta_min, self.M, self.epsilon_t = beta_d, beta_min, M, epsilon_t
        # CPU tensors, so that building under a meta (or CUDA) default device works too.
        self.sigma_min = float(self.sigma(torch.as_tensor(epsilon_t, device='cpu')))
        self.sigma_max = float(self.sigma(torch.as_tensor(1, device='cpu')))
        self._wrap_model(model_type, img_resolution, img_channels, label_dim, use_fp16, model_kwargs, out_channels=img_channels)

    def _coefficients(self, sigma):
        return 1, -sigma, 1 / (sigma ** 2 + 1).sqrt(), (self.M - 1) * self.sigma_inv(sigma)

    def sigma(self, t):
        t = _tensor(t)
        integral = 0.5 * self.beta_d * (t ** 2) + self.beta_min * t # Of beta(s) from 0 to t.
        return (integral.exp() - 1).sqrt()

    def sigma_inv(self, sigma):
        # Root of beta_d t^2 / 2 + beta_min t = log(1 + sigma^2).
        integral = (1 + _tensor(sigma) ** 2).log()
        return ((self.beta_min ** 2 + 2 * self.beta_d * integral).sqrt() - self.beta_min) / self.beta_d

# Variance exploding (VE) of Song et al. (score SDE).
@persistence.persistent_class
class VEPrecond(_Preconditioner):
    def __init__(self,
        img_resolution, img_channels, label_dim=0, use_fp16=False, # Image size and channels, class count (0: none), fp16 on CUDA.
        sigma_min=0.02, sigma_max=100,                             # Noise levels the model supports.
        model_type='SongUNet', **model_kwargs,                     # The network and its arguments.
    ):
        super().__init__()
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self._wrap_model(model_type, img_resolution, img_channels, label_dim, use_fp16, model_kwargs, out_channels=img_channels)

    def _coefficients(self, sigma):
        return 1, sigma, 1, (0.5 * sigma).log()

# Improved DDPM (Nichol & Dhariwal) over the discrete noise levels in the buffer u.
def _iddpm_noise_levels(alpha_bar, M, C_1):
    # u[M] = 0 < ... < u[0] = sigma_max, by the backward recursion from u[M], one float32
    # scalar step at a time on the CPU (also under a meta default device).
    levels = torch.zeros(M + 1, device='cpu')
    for j in range(M, 0, -1):
        step_ratio = alpha_bar(torch.as_tensor(j - 1, device='cpu')) / alpha_bar(torch.as_tensor(j, device='cpu'))
        levels[j - 1] = ((levels[j] ** 2 + 1) / step_ratio.clip(min=C_1) - 1).sqrt()
    return levels

@persistence.persistent_class
class iDDPMPrecond(_Preconditioner):
    def __init__(self,
        img_resolution, img_channels, label_dim=0, use_fp16=False, # Image size and channels, class count (0: none), fp16 on CUDA.
        C_1=0.001, C_2=0.008, M=1000,                              # Clip of alpha_bar(j-1)/alpha_bar(j), cosine offset, steps.
        model_type='DhariwalUNet', **model_kwargs,                 # The network and its arguments.
    ):
        super().__init__()
        self.C_1, self.C_2, self.M = C_1, C_2, M
        # The network also predicts the variance, hence twice the channels.
        self._wrap_model(model_type, img_resolution, img_channels, label_dim, use_fp16, model_kwargs, out_channels=img_channels * 2)
        self.register_buffer('u', _iddpm_noise_levels(self.alpha_bar, M, C_1))
        self.sigma_min, self.sigma_max = float(self.u[M - 1]), float(self.u[0])

    def _coefficients(self, sigma):
        # The network sees the index of the nearest level, counted from the low-noise end.
        c_noise = self.M - 1 - self.round_sigma(sigma, return_index=True).to(torch.float32)
        return 1, -sigma, 1 / (sigma ** 2 + 1).sqrt(), c_noise

    def alpha_bar(self, j):
        return (0.5 * np.pi * _tensor(j) / self.M / (self.C_2 + 1)).sin() ** 2

    def round_sigma(self, sigma, return_index=False):
        # Nearest entry of u (or its index), with sigma's shape, device and dtype.
        sigma = torch.as_tensor(sigma)
        points = sigma.to(self.u.device).to(torch.float32).reshape(1, -1, 1)
        nearest = torch.cdist(points, self.u.reshape(1, -1, 1)).argmin(2).reshape(sigma.shape)
        snapped = nearest if return_index else self.u[nearest].to(sigma.dtype)
        return snapped.to(sigma.device)

# EDM (Karras et al. 2022).
@persistence.persistent_class
class EDMPrecond(_Preconditioner):
    def __init__(self,
        img_resolution, img_channels, label_dim=0, use_fp16=False, # Image size and channels, class count (0: none), fp16 on CUDA.
        sigma_min=0, sigma_max=float('inf'), sigma_data=0.5,       # Supported noise levels; standard deviation of the data.
        model_type='DhariwalUNet', **model_kwargs,                 # The network and its arguments.
    ):
        super().__init__()
        self.sigma_min, self.sigma_max, self.sigma_data = sigma_min, sigma_max, sigma_data
        self._wrap_model(model_type, img_resolution, img_channels, label_dim, use_fp16, model_kwargs, out_channels=img_channels)

    def _coefficients(self, sigma):
        data_var = self.sigma_data ** 2
        c_skip = data_var / (sigma ** 2 + data_var)
        c_out = sigma * self.sigma_data / (sigma ** 2 + data_var).sqrt()
        c_in = 1 / (data_var + sigma ** 2).sqrt()
        return c_skip, c_out, c_in, sigma.log() / 4

#----------------------------------------------------------------------------
