"""Convert an image folder, a zip of images or the CIFAR-10/MNIST archives
into the dataset layout read by training/dataset.py (EDM-compatible)."""

import functools
import gzip
import io
import json
import os
import pickle
import re
import tarfile
import zipfile
from typing import Callable, Iterator, Optional, Tuple

import click
import numpy as np
import PIL.Image
from tqdm import tqdm

import dnnlib

#----------------------------------------------------------------------------
# Parse '--resolution=WxH' (or 'W,H') into a pair of positive ints.

def parse_resolution(ctx, param, value: Optional[str]) -> Optional[Tuple[int, int]]:
    if value is None:
        return None
    m = re.fullmatch(r'\s*(\d+)\s*[x,]\s*(\d+)\s*', value)
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise click.BadParameter(f'expected WxH with positive integers, e.g. 64x64, got {value!r}', ctx=ctx, param=param)
    return int(m.group(1)), int(m.group(2))

#----------------------------------------------------------------------------
# Helpers shared by the sources.

def _is_image_ext(fname: str) -> bool:
    PIL.Image.init()
    return f'.{fname.rsplit(".", 1)[-1]}'.lower() in PIL.Image.EXTENSION

def _decode_image(f, name: str) -> np.ndarray:
    # Decode to HW or HWC uint8; palette images are expanded, not read as indices.
    try:
        with PIL.Image.open(f) as image:
            if image.mode == 'P':
                image = image.convert('RGBA' if 'transparency' in image.info else 'RGB')
            img = np.array(image)
    except (OSError, ValueError, SyntaxError, zipfile.BadZipFile) as err:
        raise click.ClickException(f'Cannot read image {name}: {err}')
    if img.dtype != np.uint8:
        raise click.ClickException(f'Image {name} has {img.dtype} pixels (mode {image.mode}); only 8-bit grayscale or RGB is supported')
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    return img

def _read_labels_json(f, name: str) -> dict:
    try:
        labels = json.load(f)['labels']
        return {} if labels is None else {str(x[0]): x[1] for x in labels}
    except (ValueError, KeyError, TypeError, IndexError) as err:
        raise click.ClickException(f'Invalid {name}: expected {{"labels": [[filename, label], ...]}} or {{"labels": null}} ({err!r})')

def _count(total: int, max_images: Optional[int]) -> int:
    return total if max_images is None else min(total, max_images)

#----------------------------------------------------------------------------
# Sources. Each returns (number of images, iterator of dicts with the HW[C]
# uint8 image 'img', its 'label' (or None) and a 'name' for messages).

def open_image_folder(source_dir: str, *, max_images: Optional[int]):
    # Same order as sorting pathlib paths: compare component by component.
    paths = [os.path.join(root, fname) for root, _dirs, files in os.walk(source_dir) for fname in files]
    rel = {p: os.path.relpath(p, source_dir).replace('\\', '/') for p in paths}
    input_images = sorted((p for p in paths if _is_image_ext(p)), key=lambda p: rel[p].split('/'))
    if len(input_images) == 0:
        raise click.ClickException(f'No image files found in {source_dir}')

    # Labels: dataset.json if present, else one class per top-level subfolder.
    labels = {}
    meta_fname = os.path.join(source_dir, 'dataset.json')
    if os.path.isfile(meta_fname):
        with open(meta_fname, 'r') as f:
            labels = _read_labels_json(f, meta_fname)
    else:
        top = {rel[p]: rel[p].split('/')[0] if '/' in rel[p] else '' for p in input_images}
        classes = {name: idx for idx, name in enumerate(sorted(set(top.values())))}
        if len(classes) > 1:
            labels = {fname: classes[name] for fname, name in top.items()}

    max_idx = _count(len(input_images), max_images)
    def iterate_images():
        for p in input_images[:max_idx]:
            with open(p, 'rb') as f:
                img = _decode_image(f, p)
            yield dict(img=img, label=labels.get(rel[p]), name=p)
    return max_idx, iterate_images()

#----------------------------------------------------------------------------
# Zip of images: names sorted as plain strings, labels from its dataset.json.

def open_image_zip(source: str, *, max_images: Optional[int]):
    try:
        with zipfile.ZipFile(source, mode='r') as z:
            names = z.namelist()
            input_images = sorted(f for f in names if _is_image_ext(f) and not f.endswith('/'))
            labels = {}
            if 'dataset.json' in names:
                with z.open('dataset.json', 'r') as f:
                    labels = _read_labels_json(f, f'{source}:dataset.json')
    except zipfile.BadZipFile as err:
        raise click.ClickException(f'Corrupt or invalid zip file {source}: {err}')
    if len(input_images) == 0:
        raise click.ClickException(f'No image files found in {source}')

    max_idx = _count(len(input_images), max_images)
    def iterate_images():
        with zipfile.ZipFile(source, mode='r') as z:
            for fname in input_images[:max_idx]:
                try:
                    with z.open(fname, 'r') as f:
                        data = f.read()
                except (zipfile.BadZipFile, OSError, EOFError) as err:
                    raise click.ClickException(f'Cannot read {fname} from {source}: {err}')
                img = _decode_image(io.BytesIO(data), f'{source}:{fname}')
                yield dict(img=img, label=labels.get(fname), name=f'{source}:{fname}')
    return max_idx, iterate_images()

#----------------------------------------------------------------------------
# CIFAR-10 batches are pickles; only plain containers and numpy arrays may be
# built from them, so a crafted tarball cannot run code.

class _ArrayOnlyUnpickler(pickle.Unpickler):
    _allowed = {
        ('numpy.core.multiarray', '_reconstruct'), ('numpy._core.multiarray', '_reconstruct'),
        ('numpy.core.multiarray', 'scalar'), ('numpy._core.multiarray', 'scalar'),
        ('numpy.core.numeric', '_frombuffer'), ('numpy._core.numeric', '_frombuffer'),
        ('numpy', 'ndarray'), ('numpy', 'dtype'), ('_codecs', 'encode'), # Protocol-2 pickles from Python 3 store bytes via _codecs.encode.
    }

    def find_class(self, module, name):
        if (module, name) not in self._allowed:
            raise pickle.UnpicklingError(f'unexpected object {module}.{name}')
        return super().find_class(module, name)

def open_cifar10(tarball: str, *, max_images: Optional[int]):
    images, labels = [], []
    try:
        with tarfile.open(tarball, 'r:gz') as tar:
            for batch in range(1, 6):
                member = f'cifar-10-batches-py/data_batch_{batch}'
                try:
                    f = tar.extractfile(tar.getmember(member))
                except KeyError:
                    raise click.ClickException(f'{tarball} is not the CIFAR-10 python archive: {member} is missing')
                with f:
                    data = _ArrayOnlyUnpickler(f, encoding='latin1').load()
                batch_images = np.asarray(data['data'])
                if batch_images.dtype != np.uint8 or batch_images.ndim != 2 or batch_images.shape[1] != 3 * 32 * 32:
                    raise click.ClickException(f'{tarball}:{member}: expected uint8 data of shape [N, 3072], got {batch_images.dtype} {batch_images.shape}')
                batch_labels = np.asarray(data['labels'], dtype=np.int64)
                if batch_labels.shape != batch_images.shape[:1]:
                    raise click.ClickException(f'{tarball}:{member}: {batch_images.shape[0]} images but {batch_labels.size} labels')
                images.append(batch_images.reshape(-1, 3, 32, 32))
                labels.append(batch_labels)
    except (tarfile.TarError, EOFError, OSError, pickle.UnpicklingError, KeyError, TypeError, ValueError) as err:
        raise click.ClickException(f'Cannot read CIFAR-10 archive {tarball}: {err}')
    images = np.concatenate(images).transpose([0, 2, 3, 1]) # NCHW => NHWC
    labels = np.concatenate(labels)
    if images.shape[0] == 0:
        raise click.ClickException(f'No images in {tarball}')

    max_idx = _count(images.shape[0], max_images)
    def iterate_images():
        for idx in range(max_idx):
            yield dict(img=images[idx], label=int(labels[idx]), name=f'{tarball}[{idx}]')
    return max_idx, iterate_images()

#----------------------------------------------------------------------------
# MNIST: train-images-idx3-ubyte.gz plus train-labels-idx1-ubyte.gz beside it,
# zero-padded from 28x28 to 32x32.

def open_mnist(images_gz: str, *, max_images: Optional[int]):
    labels_gz = os.path.join(os.path.dirname(images_gz), 'train-labels-idx1-ubyte.gz')
    if not os.path.isfile(labels_gz):
        raise click.ClickException(f'MNIST labels not found: {labels_gz} must sit next to {images_gz}')
    try:
        with gzip.open(images_gz, 'rb') as f:
            images = np.frombuffer(f.read(), np.uint8, offset=16)
        with gzip.open(labels_gz, 'rb') as f:
            labels = np.frombuffer(f.read(), np.uint8, offset=8)
    except (OSError, EOFError, ValueError) as err:
        raise click.ClickException(f'Cannot read MNIST files: {err}')
    if images.size % (28 * 28) != 0 or images.size // (28 * 28) != labels.size:
        raise click.ClickException(f'MNIST files do not match: {images.size} pixel bytes, {labels.size} labels')
    images = np.pad(images.reshape(-1, 28, 28), [(0, 0), (2, 2), (2, 2)], 'constant', constant_values=0)

    max_idx = _count(images.shape[0], max_images)
    def iterate_images():
        for idx in range(max_idx):
            yield dict(img=images[idx], label=int(labels[idx]), name=f'{images_gz}[{idx}]')
    return max_idx, iterate_images()

#----------------------------------------------------------------------------
# Pick the reader from the source path.

def open_dataset(source: str, *, max_images: Optional[int]):
    if not os.path.exists(source):
        raise click.ClickException(f'--source does not exist: {source}')
    if os.path.isdir(source):
        if source.rstrip('/\\').endswith('_lmdb'):
            raise click.ClickException('LSUN LMDB sources are not supported; export the images to a folder first')
        return open_image_folder(source, max_images=max_images)
    if os.path.basename(source) == 'cifar-10-python.tar.gz':
        return open_cifar10(source, max_images=max_images)
    if os.path.basename(source) == 'train-images-idx3-ubyte.gz':
        return open_mnist(source, max_images=max_images)
    if source.lower().endswith('.zip'):
        return open_image_zip(source, max_images=max_images)
    raise click.ClickException(f'Unknown --source type: {source} (expected a folder, a .zip, cifar-10-python.tar.gz or train-images-idx3-ubyte.gz)')

#----------------------------------------------------------------------------
# Image transforms. Each maps an HW[C] uint8 array to the output array, or to
# None when the image is to be skipped.

def _resize(img: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.array(PIL.Image.fromarray(img).resize((width, height), PIL.Image.Resampling.LANCZOS))

def _to_rgb(img: np.ndarray) -> np.ndarray:
    return img[:, :, np.newaxis].repeat(3, axis=2) if img.ndim == 2 else img

def scale(width: Optional[int], height: Optional[int], img: np.ndarray) -> np.ndarray:
    # Only resample when the size actually changes.
    if width is None or (img.shape[1] == width and img.shape[0] == height):
        return img
    return _resize(img, width, height)

def center_crop(width: int, height: int, img: np.ndarray) -> np.ndarray:
    crop = min(img.shape[0], img.shape[1])
    y0, x0 = (img.shape[0] - crop) // 2, (img.shape[1] - crop) // 2
    img = _to_rgb(img[y0 : y0 + crop, x0 : x0 + crop])
    return _resize(img, width, height)

def center_crop_wide(width: int, height: int, img: np.ndarray) -> Optional[np.ndarray]:
    # Crop the height to the W:H aspect, resize, then letterbox onto a WxW black square.
    ch = int(np.round(width * img.shape[0] / img.shape[1]))
    if img.shape[1] < width or ch < height:
        return None
    img = _to_rgb(img[(img.shape[0] - ch) // 2 : (img.shape[0] + ch) // 2])
    img = _resize(img, width, height)
    canvas = np.zeros([width, width, 3], dtype=np.uint8)
    canvas[(width - height) // 2 : (width + height) // 2, :] = img
    return canvas

def make_transform(transform: Optional[str], output_width: Optional[int], output_height: Optional[int]) -> Callable:
    if transform is None:
        return functools.partial(scale, output_width, output_height)
    if output_width is None or output_height is None:
        raise click.ClickException(f'--transform={transform} needs --resolution=WxH')
    if transform == 'center-crop':
        return functools.partial(center_crop, output_width, output_height)
    if transform == 'center-crop-wide':
        return functools.partial(center_crop_wide, output_width, output_height)
    raise click.ClickException(f'Unknown transform: {transform}')

#----------------------------------------------------------------------------
# Destinations: a zip (ZIP_STORED, written to a temp file, then renamed) or a
# new or empty folder. Returns (save_bytes(fname, data), close(ok)).

# Before reading the source: can the zip or folder be made there at all?
def check_dest_writable(dest: str) -> None:
    check = dnnlib.util.check_writable_file if dest.lower().endswith('.zip') else dnnlib.util.check_writable_dir
    try:
        check(dest, '--dest')
    except dnnlib.util.UnwritablePathError as e:
        raise click.ClickException(str(e))

def open_dest(dest: str):
    if not dest:
        raise click.ClickException('--dest must not be empty')
    if dest.lower().endswith('.zip'):
        if os.path.exists(dest):
            raise click.ClickException(f'--dest already exists: {dest} (remove it first)')
        parent = os.path.dirname(dest)
        if parent:
            os.makedirs(parent, exist_ok=True)
        tmp = dest + '.partial'
        zf = zipfile.ZipFile(tmp, mode='w', compression=zipfile.ZIP_STORED)
        def save_bytes(fname, data):
            zf.writestr(fname, data)
        def close(ok):
            zf.close()
            if ok:
                os.replace(tmp, dest)
            else:
                os.remove(tmp)
        return save_bytes, close

    if os.path.exists(dest) and not os.path.isdir(dest):
        raise click.ClickException(f'--dest exists and is not a folder: {dest}')
    if os.path.isdir(dest) and len(os.listdir(dest)) != 0:
        raise click.ClickException(f'--dest folder must be empty: {dest}')
    os.makedirs(dest, exist_ok=True)
    def save_bytes(fname, data):
        path = os.path.join(dest, fname)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, 'wb' if isinstance(data, (bytes, memoryview)) else 'w') as f:
            f.write(data)
    return save_bytes, lambda ok: None

#----------------------------------------------------------------------------
# The conversion itself; main() is a thin click wrapper around it.

def convert_dataset(source: str, dest: str, max_images: Optional[int] = None, transform: Optional[str] = None,
        resolution: Optional[Tuple[int, int]] = None, progress: bool = True) -> int:
    if max_images is not None and max_images < 1:
        raise click.ClickException(f'--max-images must be at least 1, got {max_images}')
    check_dest_writable(dest)
    width, height = resolution if resolution is not None else (None, None)
    transform_image = make_transform(transform, width, height)
    num_files, input_iter = open_dataset(source, max_images=max_images)
    save_bytes, close_dest = open_dest(dest)

    ok = False
    try:
        dataset_attrs = None
        first_name = None
        labels = []
        for idx, image in tqdm(enumerate(input_iter), total=num_files, disable=not progress):
            archive_fname = f'{idx // 1000:05d}/img{idx:08d}.png'
            img = transform_image(image['img'])
            if img is None:
                continue # Skipped by the transform (too small); the index stays used, as in EDM.

            # Validate against the first image.
            channels = img.shape[2] if img.ndim == 3 else 1
            cur_attrs = dict(width=img.shape[1], height=img.shape[0], channels=channels)
            if dataset_attrs is None:
                dataset_attrs, first_name = cur_attrs, image['name']
                w, h = cur_attrs['width'], cur_attrs['height']
                if w != h:
                    raise click.ClickException(f'Images must be square after scaling and cropping, but {image["name"]} is {w}x{h}; '
                        'use --transform=center-crop or --resolution=WxH')
                if channels not in [1, 3]:
                    raise click.ClickException(f'Images must be RGB or grayscale, but {image["name"]} has {channels} channels')
                if w & (w - 1) != 0:
                    raise click.ClickException(f'Image width/height must be a power of two after scaling and cropping, '
                        f'but {image["name"]} is {w}x{h}; use --resolution')
            elif cur_attrs != dataset_attrs:
                diff = ', '.join(f'{k} {cur_attrs[k]} vs {dataset_attrs[k]}' for k in dataset_attrs if cur_attrs[k] != dataset_attrs[k])
                raise click.ClickException(f'Image {image["name"]} differs from the first image {first_name}: {diff}. '
                    'All images must have the same size and channel count; use --resolution and/or --transform')

            # Uncompressed PNG, as in EDM.
            pil = PIL.Image.fromarray(img, {1: 'L', 3: 'RGB'}[channels])
            image_bits = io.BytesIO()
            pil.save(image_bits, format='png', compress_level=0, optimize=False)
            save_bytes(archive_fname, image_bits.getbuffer())
            labels.append([archive_fname, image['label']] if image['label'] is not None else None)

        if dataset_attrs is None:
            raise click.ClickException(f'No images were written: every image in {source} was skipped by --transform={transform}')
        metadata = {'labels': labels if all(x is not None for x in labels) else None}
        save_bytes('dataset.json', json.dumps(metadata))
        ok = True
    finally:
        close_dest(ok)
    return len(labels)

#----------------------------------------------------------------------------
# Command line.

@click.command()
@click.option('--source',     help='Input: image folder, .zip, cifar-10-python.tar.gz or train-images-idx3-ubyte.gz', metavar='PATH', type=str, required=True)
@click.option('--dest',       help='Output: .zip archive or (new or empty) folder', metavar='PATH',  type=str, required=True)
@click.option('--max-images', help='Convert at most this many images', metavar='INT',                 type=click.IntRange(min=1), default=None)
@click.option('--transform',  help='Crop before resizing',                                             type=click.Choice(['center-crop', 'center-crop-wide']), default=None)
@click.option('--resolution', help='Output resolution, e.g. 64x64',  metavar='WxH',                   type=str, callback=parse_resolution, default=None)

def main(source: str, dest: str, max_images: Optional[int], transform: Optional[str], resolution: Optional[Tuple[int, int]]):
    """Convert an image dataset into EDM's format: uncompressed PNGs named
    NNNNN/imgNNNNNNNN.png plus dataset.json with optional class labels.

    \b
    Sources (chosen by --source):
      folder                       every image below it, sorted; labels from its
                                   dataset.json, else one class per top-level subfolder
      *.zip                        images in the zip, labels from its dataset.json
      cifar-10-python.tar.gz       CIFAR-10 training set (50k, 32x32, labelled)
      train-images-idx3-ubyte.gz   MNIST training set (60k, padded to 32x32, labelled;
                                   needs train-labels-idx1-ubyte.gz next to it)

    \b
    Examples:
    python dataset_tool.py --source=downloads/cifar10/cifar-10-python.tar.gz \\
        --dest=datasets/cifar10-32x32.zip
    python dataset_tool.py --source=downloads/afhq/train --dest=datasets/afhqv2-64x64.zip \\
        --resolution=64x64
    python dataset_tool.py --source=downloads/ffhq --dest=datasets/ffhq-64x64.zip \\
        --transform=center-crop --resolution=64x64
    """
    count = convert_dataset(source, dest, max_images=max_images, transform=transform, resolution=resolution)
    click.echo(f'Wrote {count} images to {dest}')

#----------------------------------------------------------------------------

if __name__ == '__main__':
    main()

#----------------------------------------------------------------------------
