"""Non-leaking augmentation pipeline in the style of StyleGAN2-ADA, as used by
EDM: every transform is drawn per image and reported as an augmentation label
that the network is conditioned on."""

import numpy as np
import torch
from torch_utils import persistence
from torch_utils import misc

#----------------------------------------------------------------------------
# Decomposition lowpass taps of the sym6 wavelet (12 taps, sum sqrt(2)).

def _sym6_taps():
    import pywt # Lazy: this module's source is embedded in snapshots.
    return [float(x) for x in pywt.Wavelet('sym6').dec_lo]

#----------------------------------------------------------------------------
# Batched 3x3 / 4x4 homogeneous matrices. Each entry is a Python number or a
# tensor of shape [N]; the result is [N, D, D] (or [D, D] if all are numbers).

def _matrix(rows, device):
    entries = [x for row in rows for x in row]
    ref = next((x for x in entries if isinstance(x, torch.Tensor)), None)
    if ref is None:
        return misc.constant(np.asarray(rows, dtype=np.float32), device=device)
    entries = [x if isinstance(x, torch.Tensor) else misc.constant(x, shape=ref.shape, device=ref.device) for x in entries]
    d = len(rows)
    return torch.stack(entries, dim=-1).reshape(ref.shape + (d, d))

def _translate2d(tx, ty, device):
    return _matrix([[1, 0, tx], [0, 1, ty], [0, 0, 1]], device)

def _scale2d(sx, sy, device):
    return _matrix([[sx, 0, 0], [0, sy, 0], [0, 0, 1]], device)

def _rotate2d(theta, device):
    c, s = torch.cos(theta), torch.sin(theta)
    return _matrix([[c, -s, 0], [s, c, 0], [0, 0, 1]], device)

def _translate3d(tx, ty, tz, device):
    return _matrix([[1, 0, 0, tx], [0, 1, 0, ty], [0, 0, 1, tz], [0, 0, 0, 1]], device)

def _scale3d(sx, sy, sz, device):
    return _matrix([[sx, 0, 0, 0], [0, sy, 0, 0], [0, 0, sz, 0], [0, 0, 0, 1]], device)

def _rotate3d(axis, theta, device):
    # Rodrigues: cos(t) I + sin(t) [axis]_x + (1 - cos(t)) axis axis^T, in homogeneous form.
    # The axis entries stay float32 tensors: EDM rounds the products in float32.
    x, y, z = axis[0], axis[1], axis[2]
    c, s = torch.cos(theta), torch.sin(theta)
    k = 1 - c
    return _matrix([
        [x * x * k + c,     x * y * k - z * s, x * z * k + y * s, 0],
        [y * x * k + z * s, y * y * k + c,     y * z * k - x * s, 0],
        [z * x * k - y * s, z * y * k + x * s, z * z * k + c,     0],
        [0, 0, 0, 1]], device)

#----------------------------------------------------------------------------
# Keep a drawn parameter only where a fresh uniform draw falls below prob;
# elsewhere the transform is the identity (parameter 0).

def _gate(w, prob, shape):
    keep = torch.rand(shape, device=w.device) < prob
    return torch.where(keep, w, torch.zeros_like(w))

#----------------------------------------------------------------------------
# Mirror-reflect integer coordinates into [0, size) without repeating the
# edge pixel (period 2 * size - 2).

def _reflect_index(idx, size):
    return (size - 1) - ((size - 1) - idx % (2 * size - 2)).abs()

#----------------------------------------------------------------------------
# 2x up- and downsampling of every channel with a 1-D wavelet lowpass filter,
# applied separably: size L -> 2L and 2L -> L. The filter is orthogonal to
# its even shifts, so down(up(x)) == x away from the borders.

def _upsample2x(x, f):
    # Interleave zeros, then correlate with the reversed taps (a transposed
    # convolution written out). EDM sums in this order; conv_transpose2d gives
    # the same values only up to float32 round-off, which breaks bit-exactness.
    N, C, H, W = x.shape
    pad = (len(f) + 1) // 2
    w = misc.constant(np.asarray(f, dtype=np.float32)[::-1].copy(), dtype=x.dtype, device=x.device)
    x = torch.stack([x, torch.zeros_like(x)], dim=4).reshape(N, C, H, 2 * W)[:, :, :, :-1]
    x = torch.nn.functional.conv2d(x, w.reshape(1, 1, 1, -1).repeat(C, 1, 1, 1), padding=[0, pad], groups=C)
    x = torch.stack([x, torch.zeros_like(x)], dim=3).reshape(N, C, 2 * H, x.shape[3])[:, :, :-1, :]
    x = torch.nn.functional.conv2d(x, w.reshape(1, 1, -1, 1).repeat(C, 1, 1, 1), padding=[pad, 0], groups=C)
    return x

def _downsample2x(x, f):
    N, C, H, W = x.shape
    pad = (len(f) - 1) // 2
    w = misc.constant(np.asarray(f, dtype=np.float32), dtype=x.dtype, device=x.device)
    x = torch.nn.functional.conv2d(x, w.reshape(1, 1, 1, -1).repeat(C, 1, 1, 1), stride=[1, 2], padding=[0, pad], groups=C)
    x = torch.nn.functional.conv2d(x, w.reshape(1, 1, -1, 1).repeat(C, 1, 1, 1), stride=[2, 1], padding=[pad, 0], groups=C)
    return x

#----------------------------------------------------------------------------
# Resample a batch through the inverse affine maps G_inv [N, 3, 3], which take
# output pixel coordinates to input pixel coordinates, both measured from the
# image centre. Reflect padding fills what the transform pulls in from outside,
# and the warp runs at 2x resolution between sym6 up- and downsampling so that
# bilinear sampling does not alias.

def _warp(images, G_inv, f):
    N, C, H, W = images.shape
    device = images.device
    f_pad = len(f) // 4 # Extra output margin (per side, at 1x) eaten by the downsampling filter.

    # How far the source region reaches outside the image: transform the
    # output corners, take the extremes over the batch, add the filter margin.
    cx, cy = (W - 1) / 2, (H - 1) / 2
    corners = misc.constant([[-cx, -cy, 1], [cx, -cy, 1], [cx, cy, 1], [-cx, cy, 1]], device=device)
    src = (G_inv @ corners.t())[:, :2, :] # [N, xy, corner]
    src = src.permute(1, 0, 2).flatten(1) # [xy, N * corner]
    reach = torch.cat([-src, src]).max(dim=1).values # [left, top, right, bottom]
    reach = reach + misc.constant([f_pad * 2 - cx, f_pad * 2 - cy] * 2, device=device)
    reach = reach.clamp(min=0).minimum(misc.constant([W - 1, H - 1] * 2, device=device)) # Reflect padding needs pad < size.
    px0, py0, px1, py1 = [int(v) for v in reach.ceil().to(torch.int32)]

    # Pad; the centre of the padded image moves by half the asymmetry.
    images = torch.nn.functional.pad(images, [px0, px1, py0, py1], mode='reflect')
    G_inv = _translate2d((px0 - px1) / 2, (py0 - py1) / 2, device) @ G_inv

    # Upsample 2x: centred coordinates double, and the half-pixel offset of
    # the even-length filter moves the sample grid by half a pixel.
    images = _upsample2x(images, f)
    G_inv = _scale2d(2, 2, device) @ G_inv @ _scale2d(0.5, 0.5, device)
    G_inv = _translate2d(-0.5, -0.5, device) @ G_inv @ _translate2d(0.5, 0.5, device)

    # Warp into a 2x canvas with the filter margin, in affine_grid's [-1, 1] units.
    out_h, out_w = (H + f_pad * 2) * 2, (W + f_pad * 2) * 2
    G_inv = _scale2d(2 / images.shape[3], 2 / images.shape[2], device) @ G_inv @ _scale2d(out_w / 2, out_h / 2, device)
    grid = torch.nn.functional.affine_grid(theta=G_inv[:, :2, :].to(images.dtype), size=[N, C, out_h, out_w], align_corners=False)
    images = torch.nn.functional.grid_sample(images, grid, mode='bilinear', padding_mode='zeros', align_corners=False)

    # Downsample 2x and drop the margin.
    images = _downsample2x(images, f)
    return images[:, :, f_pad : f_pad + H, f_pad : f_pad + W]

#----------------------------------------------------------------------------
# Augmentation pipeline. Every constructor argument is a float setting, kept
# as an attribute of the same name. The transform names are probability
# multipliers (0 = off), all scaled by the overall strength p; the others
# shape the drawn parameters:
#
#   pixel blitting  xflip, yflip, rotate_int (quarter turns), translate_int
#                   (whole pixels, at most translate_int_max of the size)
#   geometric       scale (log2 std scale_std), rotate_frac (at most
#                   rotate_frac_max of a full turn), aniso (log2 std aniso_std,
#                   along a random axis with probability aniso_rotate_prob),
#                   translate_frac (std translate_frac_std of the size)
#   colour          brightness (std brightness_std), contrast (log2 std
#                   contrast_std), lumaflip, hue (at most hue_max of a full
#                   turn), saturation (log2 std saturation_std)
#
# A call returns the augmented images and the per-image parameters as
# float32 labels [N, D], in the order the transforms are listed.

@persistence.persistent_class
class AugmentPipe:
    def __init__(self, p=1,
        xflip=0, yflip=0, rotate_int=0, translate_int=0,
        translate_int_max=0.125,
        scale=0, rotate_frac=0, aniso=0, translate_frac=0,
        scale_std=0.2, rotate_frac_max=1, aniso_std=0.2,
        aniso_rotate_prob=0.5, translate_frac_std=0.125,
        brightness=0, contrast=0, lumaflip=0, hue=0, saturation=0,
        brightness_std=0.2, contrast_std=0.5, hue_max=1, saturation_std=1,
    ):
        settings = dict(locals())
        del settings['self']
        for name, value in settings.items():
            setattr(self, name, float(value))
        self.filter_sym6 = _sym6_taps() # Lowpass of the 2x resampling around the geometric warp.

    def __call__(self, images):
        if not isinstance(images, torch.Tensor) or images.ndim != 4:
            raise ValueError(f'AugmentPipe expects an NCHW tensor, got {getattr(images, "shape", type(images))}')
        N, C, H, W = images.shape
        device = images.device
        labels = [torch.zeros([N, 0], device=device)]

        # Pixel blitting: exact, lossless moves of whole pixels.
        if self.xflip > 0:
            w = torch.randint(2, [N, 1, 1, 1], device=device)
            w = _gate(w, self.xflip * self.p, [N, 1, 1, 1])
            images = torch.where(w == 1, images.flip(3), images)
            labels.append(w)

        if self.yflip > 0:
            w = torch.randint(2, [N, 1, 1, 1], device=device)
            w = _gate(w, self.yflip * self.p, [N, 1, 1, 1])
            images = torch.where(w == 1, images.flip(2), images)
            labels.append(w)

        if self.rotate_int > 0:
            if H != W:
                raise ValueError(f'rotate_int needs square images, got {W}x{H}')
            w = torch.randint(4, [N, 1, 1, 1], device=device)
            w = _gate(w, self.rotate_int * self.p, [N, 1, 1, 1])
            flip_x = (w == 1) | (w == 2)
            flip_y = (w == 2) | (w == 3)
            images = torch.where(flip_x, images.flip(3), images)
            images = torch.where(flip_y, images.flip(2), images)
            images = torch.where((w == 1) | (w == 3), images.transpose(2, 3), images) # w quarter turns.
            labels += [flip_x, flip_y]

        if self.translate_int > 0:
            w = torch.rand([2, N, 1, 1, 1], device=device) * 2 - 1
            w = _gate(w, self.translate_int * self.p, [1, N, 1, 1, 1])
            tx = (w[0] * (W * self.translate_int_max)).round().to(torch.int64) # [N, 1, 1, 1]
            ty = (w[1] * (H * self.translate_int_max)).round().to(torch.int64)
            xs = _reflect_index(torch.arange(W, device=device).reshape(1, 1, 1, W) - tx, W) # Content moves right by tx...
            ys = _reflect_index(torch.arange(H, device=device).reshape(1, 1, H, 1) + ty, H) # ...and up by ty.
            n = torch.arange(N, device=device).reshape(N, 1, 1, 1)
            c = torch.arange(C, device=device).reshape(1, C, 1, 1)
            images = images[n, c, ys, xs]
            labels += [tx / (W * self.translate_int_max), ty / (H * self.translate_int_max)]

        # Geometric transformations: accumulate the inverse map (output -> input).
        I_3 = torch.eye(3, device=device)
        G_inv = I_3

        if self.scale > 0:
            w = torch.randn([N], device=device)
            w = _gate(w, self.scale * self.p, [N])
            s = torch.exp2(w * self.scale_std)
            G_inv = G_inv @ _scale2d(1 / s, 1 / s, device)
            labels.append(w)

        if self.rotate_frac > 0:
            w = (torch.rand([N], device=device) * 2 - 1) * (np.pi * self.rotate_frac_max)
            w = _gate(w, self.rotate_frac * self.p, [N])
            G_inv = G_inv @ _rotate2d(w, device) # Inverse of a rotation by -w.
            labels += [torch.cos(w) - 1, torch.sin(w)]

        if self.aniso > 0:
            w = torch.randn([N], device=device)
            r = (torch.rand([N], device=device) * 2 - 1) * np.pi
            w = _gate(w, self.aniso * self.p, [N])
            r = _gate(r, self.aniso_rotate_prob, [N])
            s = torch.exp2(w * self.aniso_std)
            G_inv = G_inv @ _rotate2d(-r, device) @ _scale2d(1 / s, 1 / (1 / s), device) @ _rotate2d(r, device)
            labels += [w * torch.cos(r), w * torch.sin(r)]

        if self.translate_frac > 0:
            w = torch.randn([2, N], device=device)
            w = _gate(w, self.translate_frac * self.p, [1, N])
            G_inv = G_inv @ _translate2d(-w[0] * (W * self.translate_frac_std), -w[1] * (H * self.translate_frac_std), device)
            labels += [w[0], w[1]]

        if G_inv is not I_3:
            taps = self.__dict__.get('filter_sym6') or _sym6_taps() # State restored without __init__ may lack it.
            images = _warp(images, G_inv, taps)

        # Color transformations: accumulate one 4x4 affine color matrix per image.
        I_4 = torch.eye(4, device=device)
        M = I_4
        luma_axis = misc.constant(np.asarray([1, 1, 1, 0]) / np.sqrt(3), device=device)
        luma_proj = torch.outer(luma_axis, luma_axis)

        if self.brightness > 0:
            w = torch.randn([N], device=device)
            w = _gate(w, self.brightness * self.p, [N])
            b = w * self.brightness_std
            M = _translate3d(b, b, b, device) @ M
            labels.append(w)

        if self.contrast > 0:
            w = torch.randn([N], device=device)
            w = _gate(w, self.contrast * self.p, [N])
            c = torch.exp2(w * self.contrast_std)
            M = _scale3d(c, c, c, device) @ M
            labels.append(w)

        if self.lumaflip > 0:
            w = torch.randint(2, [N, 1, 1], device=device)
            w = _gate(w, self.lumaflip * self.p, [N, 1, 1])
            M = (I_4 - 2 * luma_proj * w) @ M # Householder reflection of the luma axis.
            labels.append(w)

        if self.hue > 0:
            w = (torch.rand([N], device=device) * 2 - 1) * (np.pi * self.hue_max)
            w = _gate(w, self.hue * self.p, [N])
            M = _rotate3d(luma_axis, w, device) @ M
            labels += [torch.cos(w) - 1, torch.sin(w)]

        if self.saturation > 0:
            w = torch.randn([N, 1, 1], device=device)
            w = _gate(w, self.saturation * self.p, [N, 1, 1])
            M = (luma_proj + (I_4 - luma_proj) * torch.exp2(w * self.saturation_std)) @ M
            labels.append(w)

        if M is not I_4:
            M = M.to(images.dtype)
            flat = images.reshape(N, C, H * W)
            if C == 3:
                flat = M[:, :3, :3] @ flat + M[:, :3, 3:]
            elif C == 1:
                M = M[:, :3, :].mean(dim=1, keepdim=True) # Grayscale: average the RGB rows.
                flat = flat * M[:, :, :3].sum(dim=2, keepdim=True) + M[:, :, 3:]
            else:
                raise ValueError(f'Color augmentations need 1 or 3 channels, got {C}')
            images = flat.reshape(N, C, H, W)

        labels = torch.cat([x.to(torch.float32).reshape(N, -1) for x in labels], dim=1)
        return images, labels

#----------------------------------------------------------------------------
