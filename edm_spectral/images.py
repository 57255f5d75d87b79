"""Image helpers shared by the CLIs: EDM's uint8 quantisation, PNG writing, sample grids and
reading a folder or zip of images back."""

import io
import math
import os
import zipfile

import numpy as np
import PIL.Image
import torch

from training.sampling import to_uint8  # EDM's quantisation; re-exported for the CLIs

_IMAGE_EXTS = ('.png', '.jpg', '.jpeg', '.bmp', '.webp', '.ppm', '.tif', '.tiff')

#----------------------------------------------------------------------------
# Bring a batch of images to a numpy uint8 array [N, C, H, W] with 1 or 3 channels.

def _as_uint8_nchw(images):
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
    image = _as_uint8_nchw(image[None])[0]
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
    images = _as_uint8_nchw(images)
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
# Read every image under a folder (recursively) or inside a zip, in sorted path order, as a
# uint8 tensor [N, C, H, W]. Grayscale stays 1 channel, everything else becomes RGB.

def load_image_folder(path, max_images=None):
    if not os.path.exists(path):
        raise FileNotFoundError(f'image folder or zip not found: {path}')
    if os.path.isdir(path):
        names = sorted(os.path.relpath(os.path.join(root, f), path).replace(os.sep, '/')
            for root, _dirs, files in os.walk(path) for f in files if f.lower().endswith(_IMAGE_EXTS))
        read = lambda name: open(os.path.join(path, name), 'rb').read()
        return _decode_all(path, names, read, max_images)
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise ValueError(f'{path} is neither a folder nor a valid zip archive ({e})') from e
    with zf:
        names = sorted(n for n in zf.namelist() if n.lower().endswith(_IMAGE_EXTS))
        return _decode_all(path, names, zf.read, max_images)

def _decode_all(path, names, read, max_images):
    if max_images is not None:
        names = names[:max_images]
    if len(names) == 0:
        raise ValueError(f'no images found in {path}')
    images = []
    for name in names:
        try:
            img = PIL.Image.open(io.BytesIO(read(name)))
            img = img.convert('L' if img.mode in ('L', '1', 'I;16', 'I', 'F') else 'RGB')
        except Exception as e:
            raise ValueError(f'cannot decode image {name} in {path}: {e}') from e
        arr = np.asarray(img)
        arr = arr[:, :, None] if arr.ndim == 2 else arr
        if images and arr.shape != images[0].shape:
            raise ValueError(f'{name} in {path} has shape {list(arr.shape)} (HWC), but {names[0]} has '
                f'{list(images[0].shape)}; all images must share resolution and channel count')
        images.append(arr)
    return torch.from_numpy(np.stack(images).transpose(0, 3, 1, 2).copy())

#----------------------------------------------------------------------------
# A grid for people to read: every image enlarged `zoom` times (nearest neighbour, so pixels
# stay sharp), a `gutter` px line of `gutter_value` between and around the cells (unused
# cells take it too), and an optional caption line under the grid. Returns a PIL image:
# mode 'L' for 1 channel, 'RGB' for 3.

def make_captioned_grid(images, grid_w=None, zoom=1, gutter=2, gutter_value=128, caption=None):
    import PIL.ImageDraw
    import PIL.ImageFont
    images = _as_uint8_nchw(images)
    if int(zoom) < 1 or int(gutter) < 0:
        raise ValueError(f'need zoom >= 1 and gutter >= 0, got zoom={zoom}, gutter={gutter}')
    zoom, gutter = int(zoom), int(gutter)
    images = images.repeat(zoom, axis=2).repeat(zoom, axis=3)
    n, c, h, w = images.shape
    grid_w = min(math.ceil(math.sqrt(n)) if grid_w is None else int(grid_w), n)
    if grid_w < 1:
        raise ValueError(f'grid_w must be at least 1, got {grid_w}')
    grid_h = math.ceil(n / grid_w)
    step_y, step_x = h + gutter, w + gutter
    grid = np.full([grid_h * step_y + gutter, grid_w * step_x + gutter, c], gutter_value, dtype=np.uint8)
    for i, img in enumerate(images):
        y, x = gutter + (i // grid_w) * step_y, gutter + (i % grid_w) * step_x
        grid[y : y + h, x : x + w] = img.transpose(1, 2, 0)
    mode = 'L' if c == 1 else 'RGB'
    picture = PIL.Image.fromarray(grid[:, :, 0] if c == 1 else grid, mode)
    if not caption:
        return picture
    font = PIL.ImageFont.load_default()
    left, top, right, bottom = PIL.ImageDraw.Draw(picture).textbbox((0, 0), caption, font=font)
    width = max(picture.width, right - left + 2 * gutter + 4)
    canvas = PIL.Image.new(mode, (width, picture.height + bottom - top + 6), 255 if c == 1 else (255, 255, 255))
    canvas.paste(picture, (0, 0))
    PIL.ImageDraw.Draw(canvas).text((gutter + 2 - left, picture.height + 3 - top), caption, fill=0 if c == 1 else (0, 0, 0), font=font)
    return canvas

#----------------------------------------------------------------------------
