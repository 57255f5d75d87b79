"""Captioned sample grids for people to read (the toy demos). Plain PNGs and EDM-style grids are
written by training.images."""

import math

import numpy as np
import PIL.Image

from training.images import as_uint8_nchw

#----------------------------------------------------------------------------
# A grid for people to read: every image enlarged `zoom` times (nearest neighbour, so pixels
# stay sharp), a `gutter` px line of `gutter_value` between and around the cells (unused
# cells take it too), and an optional caption line under the grid. Returns a PIL image:
# mode 'L' for 1 channel, 'RGB' for 3.

def make_captioned_grid(images, grid_w=None, zoom=1, gutter=2, gutter_value=128, caption=None):
    import PIL.ImageDraw
    import PIL.ImageFont
    images = as_uint8_nchw(images)
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
