"""Image datasets in the layout written by dataset_tool.py: a folder or zip
of PNGs plus an optional dataset.json with labels."""

import os
import json
import zipfile
import numpy as np
import PIL.Image
import torch
import dnnlib

try:
    import pyspng
except ImportError:
    pyspng = None

#----------------------------------------------------------------------------
# Abstract base class: subsetting, x-flips, caching and labels on top of
# _load_raw_image() / _load_raw_labels() provided by a subclass.

class Dataset(torch.utils.data.Dataset):
    def __init__(self,
        name,                   # Name of the dataset.
        raw_shape,              # Shape of the raw image data (NCHW).
        max_size    = None,     # Keep at most this many images (seeded random subset, kept in order); None = all.
        use_labels  = False,    # Return labels? False = label_dim 0.
        xflip       = False,    # Append an x-flipped copy of every image (doubles the length).
        random_seed = 0,        # Seed of the max_size subset.
        cache       = False,    # Keep decoded images in RAM?
    ):
        self._name = name
        self._raw_shape = list(raw_shape)
        self._use_labels = use_labels
        self._cache = cache
        self._cached_images = dict() # {raw_idx: np.ndarray, ...}
        self._raw_labels = None
        self._label_shape = None

        # Subset: a seeded random choice of raw indices, in increasing order.
        self._raw_idx = np.arange(self._raw_shape[0], dtype=np.int64)
        if max_size is not None:
            if int(max_size) < 1:
                raise ValueError(f'max_size must be at least 1, got {max_size}')
            if self._raw_idx.size > max_size:
                np.random.RandomState(random_seed % (1 << 31)).shuffle(self._raw_idx)
                self._raw_idx = np.sort(self._raw_idx[:max_size])

        # X-flip: the second half repeats the first half, mirrored.
        self._xflip = np.zeros(self._raw_idx.size, dtype=np.uint8)
        if xflip:
            self._raw_idx = np.tile(self._raw_idx, 2)
            self._xflip = np.concatenate([self._xflip, np.ones_like(self._xflip)])

    def _get_raw_labels(self):
        if self._raw_labels is None:
            self._raw_labels = self._load_raw_labels() if self._use_labels else None
            if self._raw_labels is None:
                if self._use_labels:
                    raise ValueError(f'Dataset {self._name!r}: use_labels=True, but the dataset has no labels (no dataset.json, or "labels": null)')
                self._raw_labels = np.zeros([self._raw_shape[0], 0], dtype=np.float32)
            if not isinstance(self._raw_labels, np.ndarray) or self._raw_labels.shape[0] != self._raw_shape[0]:
                raise ValueError(f'Dataset {self._name!r}: expected {self._raw_shape[0]} labels, got shape {np.shape(self._raw_labels)}')
            if self._raw_labels.dtype not in [np.float32, np.int64]:
                raise ValueError(f'Dataset {self._name!r}: labels must be int64 class indices or float32 vectors, got {self._raw_labels.dtype}')
            if self._raw_labels.dtype == np.int64:
                if self._raw_labels.ndim != 1 or (self._raw_labels.size and self._raw_labels.min() < 0):
                    raise ValueError(f'Dataset {self._name!r}: class labels must be non-negative integers, one per image')
        return self._raw_labels

    def close(self): # To be overridden by subclass.
        pass

    def _load_raw_image(self, raw_idx): # To be overridden by subclass.
        raise NotImplementedError

    def _load_raw_labels(self): # To be overridden by subclass.
        raise NotImplementedError

    def __getstate__(self):
        return dict(self.__dict__, _raw_labels=None)

    def __del__(self):
        try:
            self.close()
        except:
            pass

    def __len__(self):
        return self._raw_idx.size

    def __getitem__(self, idx):
        raw_idx = self._raw_idx[idx]
        image = self._cached_images.get(raw_idx, None)
        if image is None:
            image = self._load_raw_image(raw_idx)
            if self._cache:
                self._cached_images[raw_idx] = image
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or list(image.shape) != self.image_shape:
            raise ValueError(f'Dataset {self._name!r}: image {raw_idx} has shape {getattr(image, "shape", None)} and dtype '
                f'{getattr(image, "dtype", None)}, expected uint8 {self.image_shape} like the first image')
        if self._xflip[idx]:
            assert image.ndim == 3 # CHW
            image = image[:, :, ::-1]
        return image.copy(), self.get_label(idx)

    def get_label(self, idx):
        label = self._get_raw_labels()[self._raw_idx[idx]]
        if label.dtype == np.int64:
            onehot = np.zeros(self.label_shape, dtype=np.float32)
            onehot[label] = 1
            label = onehot
        return label.copy()

    def get_details(self, idx):
        d = dnnlib.EasyDict()
        d.raw_idx = int(self._raw_idx[idx])
        d.xflip = (int(self._xflip[idx]) != 0)
        d.raw_label = self._get_raw_labels()[d.raw_idx].copy()
        return d

    @property
    def name(self):
        return self._name

    @property
    def image_shape(self): # [CHW]
        return list(self._raw_shape[1:])

    @property
    def num_channels(self):
        assert len(self.image_shape) == 3 # CHW
        return self.image_shape[0]

    @property
    def resolution(self):
        assert len(self.image_shape) == 3 # CHW
        assert self.image_shape[1] == self.image_shape[2]
        return self.image_shape[1]

    @property
    def label_shape(self):
        if self._label_shape is None:
            raw_labels = self._get_raw_labels()
            if raw_labels.dtype == np.int64:
                self._label_shape = [int(np.max(raw_labels)) + 1 if raw_labels.size else 0]
            else:
                self._label_shape = list(raw_labels.shape[1:])
        return list(self._label_shape)

    @property
    def label_dim(self):
        assert len(self.label_shape) == 1
        return self.label_shape[0]

    @property
    def has_labels(self):
        return any(x != 0 for x in self.label_shape)

    @property
    def has_onehot_labels(self):
        return self._get_raw_labels().dtype == np.int64

#----------------------------------------------------------------------------
# Dataset over a folder or a zip of images (any format PIL reads).

class ImageFolderDataset(Dataset):
    def __init__(self,
        path,                   # Path to a folder or a .zip file.
        resolution      = None, # Ensure this resolution; None = take it from the data.
        use_pyspng      = False,# Decode PNGs with pyspng when it is installed?
        **super_kwargs,         # Additional arguments for the Dataset base class.
    ):
        self._path = os.fspath(path)
        self._use_pyspng = use_pyspng
        self._zipfile = None

        if os.path.isdir(self._path):
            self._type = 'dir'
            self._all_fnames = {os.path.relpath(os.path.join(root, fname), start=self._path)
                for root, _dirs, files in os.walk(self._path) for fname in files}
        elif self._file_ext(self._path) == '.zip':
            if not os.path.isfile(self._path):
                raise FileNotFoundError(f'Dataset zip not found: {self._path}')
            self._type = 'zip'
            self._all_fnames = set(self._get_zipfile().namelist())
        elif not os.path.exists(self._path):
            raise FileNotFoundError(f'Dataset path not found: {self._path}')
        else:
            raise ValueError(f'Dataset path must be a folder or a .zip file: {self._path}')

        PIL.Image.init()
        self._image_fnames = sorted(fname for fname in self._all_fnames if self._file_ext(fname) in PIL.Image.EXTENSION)
        if len(self._image_fnames) == 0:
            raise ValueError(f'No image files found in {self._path}')

        name = os.path.splitext(os.path.basename(self._path.rstrip('/\\')))[0]
        raw_shape = [len(self._image_fnames)] + list(self._load_raw_image(0).shape)
        if raw_shape[2] != raw_shape[3]:
            raise ValueError(f'Images in {self._path} must be square, but {self._image_fnames[0]} is {raw_shape[3]}x{raw_shape[2]} (WxH)')
        if resolution is not None and (raw_shape[2] != resolution or raw_shape[3] != resolution):
            raise ValueError(f'Images in {self._path} do not match the requested resolution: '
                f'asked for {resolution}x{resolution}, found {raw_shape[3]}x{raw_shape[2]} ({self._image_fnames[0]})')
        super().__init__(name=name, raw_shape=raw_shape, **super_kwargs)
        if self._use_labels:
            self._get_raw_labels() # Fail now, not in a loader worker, if labels are missing or malformed.

    @staticmethod
    def _file_ext(fname):
        return os.path.splitext(fname)[1].lower()

    def _get_zipfile(self):
        assert self._type == 'zip'
        if self._zipfile is None:
            try:
                self._zipfile = zipfile.ZipFile(self._path)
            except zipfile.BadZipFile as err:
                raise ValueError(f'Corrupt or invalid zip file: {self._path} ({err})') from None
        return self._zipfile

    def _open_file(self, fname):
        if self._type == 'dir':
            return open(os.path.join(self._path, fname), 'rb')
        if self._type == 'zip':
            return self._get_zipfile().open(fname, 'r')
        return None

    def close(self):
        try:
            if self._zipfile is not None:
                self._zipfile.close()
        finally:
            self._zipfile = None

    def __getstate__(self):
        return dict(super().__getstate__(), _zipfile=None) # Worker processes reopen the zip lazily.

    def _load_raw_image(self, raw_idx):
        fname = self._image_fnames[raw_idx]
        try:
            with self._open_file(fname) as f:
                if self._use_pyspng and pyspng is not None and self._file_ext(fname) == '.png':
                    image = pyspng.load(f.read())
                else:
                    image = np.array(PIL.Image.open(f))
        except (OSError, ValueError, zipfile.BadZipFile, PIL.UnidentifiedImageError) as err:
            raise OSError(f'Cannot read image {fname} in {self._path}: {err}') from None
        if image.ndim == 2:
            image = image[:, :, np.newaxis] # HW => HWC
        if image.dtype != np.uint8:
            raise ValueError(f'Image {fname} in {self._path} is {image.dtype}, expected 8 bits per channel')
        image = image.transpose(2, 0, 1) # HWC => CHW
        return image

    def _load_raw_labels(self):
        fname = 'dataset.json'
        if fname not in self._all_fnames:
            return None
        try:
            with self._open_file(fname) as f:
                labels = json.load(f)['labels']
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f'Invalid dataset.json in {self._path}: {err!r}') from None
        if labels is None:
            return None
        labels = dict(labels)
        missing = [fname for fname in self._image_fnames if fname.replace('\\', '/') not in labels]
        if missing:
            raise ValueError(f'dataset.json in {self._path} has no label for {missing[0]} ({len(missing)} images without labels)')
        labels = [labels[fname.replace('\\', '/')] for fname in self._image_fnames]
        labels = np.array(labels)
        if labels.ndim not in [1, 2]:
            raise ValueError(f'dataset.json in {self._path}: labels must be class indices or equal-length vectors')
        labels = labels.astype({1: np.int64, 2: np.float32}[labels.ndim])
        return labels

#----------------------------------------------------------------------------
