"""Image datasets in the layout written by dataset_tool.py: a folder or zip
of PNGs plus an optional dataset.json with labels."""

import io
import json
import os
import zipfile

import numpy as np
import PIL.Image
import PIL.ImageMode
import torch

import dnnlib

try:
    import pyspng
except ImportError:
    pyspng = None

#----------------------------------------------------------------------------
# Which raw image each item shows, and whether mirrored. The subset is the one
# EDM picks for the same seed (a RandomState shuffle, the first max_size,
# sorted); xflip then appends a mirrored copy of the whole list.

def _item_plan(num_raw, max_size, xflip, random_seed):
    order = np.arange(num_raw, dtype=np.int64)
    if max_size is not None:
        keep = int(max_size)
        if keep < 1:
            raise ValueError(f'max_size must be at least 1, got {max_size}')
        if num_raw > keep:
            np.random.RandomState(random_seed % (1 << 31)).shuffle(order)
            order = np.sort(order[:keep])
    mirrored = np.zeros(order.size, dtype=np.uint8)
    if xflip:
        order = np.concatenate([order, order])
        mirrored = np.concatenate([mirrored, np.ones_like(mirrored)])
    return order, mirrored

#----------------------------------------------------------------------------
# Raw labels come in two kinds: int64 class indices [N] (served one-hot) or
# float32 vectors [N, D] (served as they are).

def _checked_labels(labels, num_images, dataset_name):
    where = f'Dataset {dataset_name!r}'
    if not isinstance(labels, np.ndarray) or labels.shape[:1] != (num_images,):
        raise ValueError(f'{where}: expected {num_images} labels, got shape {np.shape(labels)}')
    if labels.dtype == np.int64:
        if labels.ndim != 1 or (labels.size > 0 and labels.min() < 0):
            raise ValueError(f'{where}: class labels must be non-negative integers, one per image')
    elif labels.dtype != np.float32:
        raise ValueError(f'{where}: labels must be int64 class indices or float32 vectors, got {labels.dtype}')
    return labels

def _label_shape(labels):
    if labels.dtype == np.int64:
        return [int(labels.max()) + 1 if labels.size > 0 else 0]
    return list(labels.shape[1:])

#----------------------------------------------------------------------------
# Base class: items (uint8 CHW image, float32 label) over N raw images, with
# an optional seeded subset, mirrored copies and an in-RAM cache. Subclasses
# provide _load_raw_image(raw_idx) and _load_raw_labels() (None = no labels);
# the hook names are EDM's, so subclasses written for it keep working.
#
#   name         shown in messages and in run folder names
#   raw_shape    [N, C, H, W] of the raw images
#   max_size     keep at most this many images; None = all
#   use_labels   read the labels; otherwise every label is empty (label_dim 0)
#   xflip        append an x-mirrored copy of every image (doubles the length)
#   random_seed  seed of the max_size subset
#   cache        keep decoded images in RAM

class Dataset(torch.utils.data.Dataset):
    def __init__(self, name, raw_shape, max_size=None, use_labels=False, xflip=False, random_seed=0, cache=False):
        self._name = name
        self._raw_shape = list(raw_shape)
        self._raw_idx, self._xflip = _item_plan(self._raw_shape[0], max_size, xflip, random_seed)
        self._cache = {} if cache else None

        # Labels are read now, so that a missing or malformed dataset.json
        # fails here rather than in a loader worker.
        num_raw = self._raw_shape[0]
        if use_labels:
            labels = self._load_raw_labels()
            if labels is None:
                raise ValueError(f'Dataset {name!r}: use_labels=True, but the dataset has no labels (no dataset.json, or "labels": null)')
        else:
            labels = np.zeros([num_raw, 0], dtype=np.float32)
        self._raw_labels = _checked_labels(labels, num_raw, name)
        self._label_shape = _label_shape(self._raw_labels)

    def _load_raw_image(self, raw_idx):
        raise NotImplementedError(f'{type(self).__name__} does not implement _load_raw_image')

    def _load_raw_labels(self):
        raise NotImplementedError(f'{type(self).__name__} does not implement _load_raw_labels')

    def close(self):
        pass # Subclasses release their files here.

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __len__(self):
        return int(self._raw_idx.size)

    def _raw_image(self, raw_idx):
        image = self._cache.get(raw_idx) if self._cache is not None else None
        if image is None:
            image = self._load_raw_image(raw_idx)
            if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or list(image.shape) != self.image_shape:
                raise ValueError(f'Dataset {self._name!r}: image {raw_idx} has shape {getattr(image, "shape", None)} and dtype '
                    f'{getattr(image, "dtype", None)}, expected uint8 {self.image_shape} like the first image')
            if self._cache is not None:
                self._cache[raw_idx] = image
        return image

    def __getitem__(self, idx):
        image = self._raw_image(self._raw_idx[idx])
        if self._xflip[idx]:
            image = image[:, :, ::-1]
        return image.copy(), self.get_label(idx) # The copy keeps the cache intact and the array contiguous.

    def get_label(self, idx):
        raw_label = self._raw_labels[self._raw_idx[idx]]
        if self._raw_labels.dtype != np.int64:
            return raw_label.copy()
        onehot = np.zeros(self._label_shape, dtype=np.float32)
        onehot[raw_label] = 1
        return onehot

    def get_details(self, idx):
        raw_idx = int(self._raw_idx[idx])
        return dnnlib.EasyDict(raw_idx=raw_idx, xflip=bool(self._xflip[idx]), raw_label=self._raw_labels[raw_idx].copy())

    @property
    def name(self):
        return self._name

    @property
    def image_shape(self): # [C, H, W]
        return self._raw_shape[1:]

    @property
    def num_channels(self):
        return self._chw()[0]

    @property
    def resolution(self):
        _c, h, w = self._chw()
        if h != w:
            raise ValueError(f'Dataset {self._name!r}: images are {w}x{h}, not square')
        return h

    def _chw(self):
        if len(self.image_shape) != 3:
            raise ValueError(f'Dataset {self._name!r}: expected CHW images, got shape {self.image_shape}')
        return self.image_shape

    @property
    def label_shape(self):
        return list(self._label_shape)

    @property
    def label_dim(self):
        if len(self._label_shape) != 1:
            raise ValueError(f'Dataset {self._name!r}: labels of shape {self._label_shape} have no single label_dim')
        return self._label_shape[0]

    @property
    def has_labels(self):
        return any(size != 0 for size in self._label_shape)

    @property
    def has_onehot_labels(self):
        return self._raw_labels.dtype == np.int64

#----------------------------------------------------------------------------
# The files of a dataset: a folder, or a zip archive. The archive is opened
# lazily and again in every process: a handle inherited through fork shares
# its file offset with the parent, so concurrent reads would interleave.

def _ext(fname):
    return os.path.splitext(fname)[1].lower()

class _FolderFiles:
    def __init__(self, root):
        self.root = root

    def names(self):
        return [os.path.relpath(os.path.join(folder, fname), self.root) for folder, _subdirs, fnames in os.walk(self.root) for fname in fnames]

    def open(self, name):
        return open(os.path.join(self.root, name), 'rb')

    def close(self):
        pass

class _ZipFiles:
    def __init__(self, path):
        self.path = path
        self._archive = None
        self._owner_pid = None

    def _opened(self):
        if self._archive is None or self._owner_pid != os.getpid():
            try:
                self._archive = zipfile.ZipFile(self.path)
            except zipfile.BadZipFile as err:
                raise ValueError(f'Corrupt or invalid zip file: {self.path} ({err})') from None
            self._owner_pid = os.getpid()
        return self._archive

    def names(self):
        return self._opened().namelist()

    def open(self, name):
        return self._opened().open(name, 'r')

    def close(self):
        if self._archive is not None and self._owner_pid == os.getpid():
            self._archive.close()
        self._archive = None

    def __getstate__(self):
        return dict(self.__dict__, _archive=None, _owner_pid=None)

def _dataset_files(path):
    if os.path.isdir(path):
        return _FolderFiles(path)
    if _ext(path) == '.zip':
        if not os.path.isfile(path):
            raise FileNotFoundError(f'Dataset zip not found: {path}')
        return _ZipFiles(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f'Dataset path not found: {path}')
    raise ValueError(f'Dataset path must be a folder or a .zip file: {path}')

#----------------------------------------------------------------------------
# Cheap per-file checks, run on every image when a dataset is opened: the
# header (size and pixel layout, without decoding) and, for PNGs, that the
# file ends with the IEND chunk, which a file cut short lacks.

# What reading a broken file raises (PIL.UnidentifiedImageError is an OSError;
# a damaged zip member fails its CRC with BadZipFile).
_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile)

_PNG_END = b'\x00\x00\x00\x00IEND\xaeB`\x82' # Length 0, type IEND, its CRC.

def _pixel_layout(mode):
    # What decoding gives per pixel: channel count and numpy type (e.g. L and
    # P both decode to one uint8 channel, I;16 to one uint16 channel).
    try:
        desc = PIL.ImageMode.getmode(mode)
    except KeyError:
        return mode
    return len(desc.bands), getattr(desc, 'typestr', mode)

_READ_WHOLE_BYTES = 1 << 20 # Smaller files are read in one go: cheaper than seeking in a zip member.

def _probe(f):
    """(width, height), PIL mode and last bytes of an open image file, without decoding pixels."""
    data = f.read(_READ_WHOLE_BYTES + 1)
    whole = len(data) <= _READ_WHOLE_BYTES
    if not whole:
        f.seek(0)
    with PIL.Image.open(io.BytesIO(data) if whole else f) as header:
        size, mode = header.size, header.mode
    if not whole:
        end = f.seek(0, os.SEEK_END)
        f.seek(end - len(_PNG_END))
        data = f.read()
    return size, mode, data[-len(_PNG_END):]

#----------------------------------------------------------------------------
# Dataset over a folder or a zip of images (any format PIL reads), sorted by
# name; labels from dataset.json, keyed by '/'-separated names.
#
#   path         folder or .zip file
#   resolution   require this resolution; None = take it from the data
#   use_pyspng   decode PNGs with pyspng when it is installed

class ImageFolderDataset(Dataset):
    def __init__(self, path, resolution=None, use_pyspng=False, **super_kwargs):
        self._path = os.fspath(path)
        self._use_pyspng = use_pyspng
        self._files = _dataset_files(self._path)
        names = set(self._files.names())
        self._has_label_file = 'dataset.json' in names
        PIL.Image.init()
        self._image_fnames = sorted(fname for fname in names if _ext(fname) in PIL.Image.EXTENSION)
        if not self._image_fnames:
            raise ValueError(f'No image files found in {self._path}')

        self._check_files()
        first = self._load_raw_image(0)
        channels, height, width = first.shape
        if height != width:
            raise ValueError(f'Images in {self._path} must be square, but {self._image_fnames[0]} is {width}x{height} (WxH)')
        if resolution is not None and height != resolution:
            raise ValueError(f'Images in {self._path} do not match the requested resolution: '
                f'asked for {resolution}x{resolution}, found {width}x{height} ({self._image_fnames[0]})')
        name = os.path.splitext(os.path.basename(self._path.rstrip('/\\')))[0]
        super().__init__(name=name, raw_shape=[len(self._image_fnames), channels, height, width], **super_kwargs)

    def _check_files(self):
        # Fails on the first image that is unreadable or unlike the first one.
        reference = None
        for fname in self._image_fnames:
            try:
                with self._files.open(fname) as f:
                    (width, height), mode, last_bytes = _probe(f)
            except _READ_ERRORS as err:
                raise ValueError(f'{self._path}: {fname} is corrupt or not an image ({err})') from None
            if _ext(fname) == '.png' and last_bytes != _PNG_END: # Cut short, or data after IEND that decoders ignore: a full decode tells.
                try:
                    self._decode(fname)
                except _READ_ERRORS as err:
                    raise ValueError(f'{self._path}: {fname} is corrupt ({err})') from None
            found = (width, height, _pixel_layout(mode))
            if reference is None:
                reference, reference_desc = found, f'{width}x{height} {mode}'
            elif found != reference:
                raise ValueError(f'{self._path}: {fname} is {width}x{height} {mode}, expected {reference_desc} like the first image')

    def _decode(self, fname):
        with self._files.open(fname) as f:
            if self._use_pyspng and pyspng is not None and _ext(fname) == '.png':
                return pyspng.load(f.read())
            return np.array(PIL.Image.open(f))

    def _load_raw_image(self, raw_idx):
        fname = self._image_fnames[raw_idx]
        try:
            pixels = self._decode(fname)
        except _READ_ERRORS as err:
            raise OSError(f'Cannot read image {fname} in {self._path}: {err}') from None
        if pixels.dtype != np.uint8:
            raise ValueError(f'Image {fname} in {self._path} is {pixels.dtype}, expected 8 bits per channel')
        if pixels.ndim == 2:
            pixels = pixels[:, :, np.newaxis] # Grayscale: one channel.
        return pixels.transpose(2, 0, 1) # HWC -> CHW

    def _load_raw_labels(self):
        if not self._has_label_file:
            return None
        try:
            with self._files.open('dataset.json') as f:
                table = json.load(f)['labels']
            if table is None:
                return None
            by_name = dict(table)
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f'Invalid dataset.json in {self._path}: {err!r}') from None
        keys = [fname.replace('\\', '/') for fname in self._image_fnames]
        unlabelled = [key for key in keys if key not in by_name]
        if unlabelled:
            raise ValueError(f'dataset.json in {self._path} has no label for {unlabelled[0]} ({len(unlabelled)} images without labels)')
        try:
            labels = np.array([by_name[key] for key in keys])
        except ValueError as err: # Vectors of different lengths.
            raise ValueError(f'dataset.json in {self._path}: labels must be class indices or equal-length vectors ({err})') from None
        kind = {1: np.int64, 2: np.float32}.get(labels.ndim)
        if kind is None:
            raise ValueError(f'dataset.json in {self._path}: labels must be class indices or equal-length vectors')
        return labels.astype(kind)

    def close(self):
        files = getattr(self, '_files', None) # Absent if __init__ failed early.
        if files is not None:
            files.close()

#----------------------------------------------------------------------------
