"""Writing images: one PNG per image and sample grids, from uint8 batches (training.sampling.to_uint8
quantises as EDM). Plain PIL, so that the training loop's grids and the CLIs share it; images are
read back with training.dataset.ImageFolderDataset."""

import math
import os

import numpy as np
import PIL.Image
import torch

#----------------------------------------------------------------------------
# Bring a batch of images to a numpy uint8 array [N, C, H, W] with 1 or 3 channels.

def as_uint8_nchw(images):
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f'expected uint8 images (see to_uint8), got dtype {images.dtype}')
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f'expected a non-empty batch of shape [N, C, H, W], got shape {list(images.shape)}')
    if images.shape[1] not in (1, 3):
        raise ValueError(f'expected 1 (grayscale) or 3 (RGB) channels, got {images.shape[1]}')
    return images

#----------------------------------------------------------------------------
# Write one uint8 image [C, H, W] as PNG: mode 'L' for 1 channel, 'RGB' for 3.

def save_image(image, path):
    image = as_uint8_nchw(image[None])[0]
    _save_hwc(image.transpose(1, 2, 0), path)

def _save_hwc(image_hwc, path):
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    if image_hwc.shape[2] == 1:
        PIL.Image.fromarray(image_hwc[:, :, 0], 'L').save(path)
    else:
        PIL.Image.fromarray(np.ascontiguousarray(image_hwc), 'RGB').save(path)

#----------------------------------------------------------------------------
# Tile a batch [N, C, H, W] into one array [gh * H, gw * W, C], row by row. The grid is as
# close to square as possible unless grid_w is given; unused cells stay black.

def make_image_grid(images, grid_w=None):
    images = as_uint8_nchw(images)
    n, c, h, w = images.shape
    if grid_w is None:
        grid_w = math.ceil(math.sqrt(n))
    if int(grid_w) < 1:
        raise ValueError(f'grid_w must be at least 1, got {grid_w}')
    grid_w = min(int(grid_w), n)
    grid_h = math.ceil(n / grid_w)
    padded = np.zeros([grid_h * grid_w, c, h, w], dtype=np.uint8)
    padded[:n] = images
    grid = padded.reshape(grid_h, grid_w, c, h, w).transpose(0, 3, 1, 4, 2)
    return grid.reshape(grid_h * h, grid_w * w, c)

#----------------------------------------------------------------------------
# Save a batch of uint8 images [N, C, H, W] (torch or numpy) as one PNG grid.

def save_image_grid(images, path, grid_w=None):
    _save_hwc(make_image_grid(images, grid_w=grid_w), path)

#----------------------------------------------------------------------------
