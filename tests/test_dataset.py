"""training/dataset.py: ImageFolderDataset over folders and zips."""

import json
import os
import pickle
import sys
import zipfile

import numpy as np
import PIL.Image
import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from training.dataset import ImageFolderDataset

#----------------------------------------------------------------------------
# A small dataset in dataset_tool's layout, as a folder and as a zip.

def _make(tmp_path, n=10, res=8, channels=3, labels='int', name='data'):
    rng = np.random.default_rng(0)
    folder = tmp_path / name
    images = []
    for i in range(n):
        img = rng.integers(0, 256, size=(res, res, channels) if channels == 3 else (res, res), dtype=np.uint8)
        path = folder / f'{i // 1000:05d}' / f'img{i:08d}.png'
        path.parent.mkdir(parents=True, exist_ok=True)
        PIL.Image.fromarray(img).save(path)
        images.append(img if img.ndim == 3 else img[:, :, None])
    if labels == 'int':
        meta = {'labels': [[f'00000/img{i:08d}.png', i % 3] for i in range(n)]}
    elif labels == 'float':
        meta = {'labels': [[f'00000/img{i:08d}.png', [i * 0.5, -i]] for i in range(n)]}
    else:
        meta = {'labels': None}
    (folder / 'dataset.json').write_text(json.dumps(meta))
    zip_path = tmp_path / f'{name}.zip'
    with zipfile.ZipFile(zip_path, 'w', compression=zipfile.ZIP_STORED) as z:
        for p in sorted(folder.rglob('*')):
            if p.is_file():
                z.write(p, p.relative_to(folder).as_posix())
    return folder, zip_path, np.stack(images).transpose(0, 3, 1, 2)

#----------------------------------------------------------------------------
# Reading, labels and the base-class options.

def test_folder_and_zip_agree_and_properties(tmp_path):
    folder, zip_path, images = _make(tmp_path)
    for path in [folder, zip_path, str(folder) + '/']:
        ds = ImageFolderDataset(str(path), use_labels=True)
        assert ds.name == 'data' and len(ds) == 10
        assert ds.resolution == 8 and ds.num_channels == 3 and ds.image_shape == [3, 8, 8]
        assert ds.label_shape == [3] and ds.label_dim == 3 and ds.has_labels and ds.has_onehot_labels
        for i in range(10):
            img, label = ds[i]
            assert img.dtype == np.uint8 and img.flags.c_contiguous
            np.testing.assert_array_equal(img, images[i])
            assert label.dtype == np.float32 and label.tolist() == np.eye(3)[i % 3].tolist()
        d = ds.get_details(4)
        assert d.raw_idx == 4 and d.xflip is False and int(d.raw_label) == 1
        ds.close()

def test_grayscale_and_float_labels_and_no_labels(tmp_path):
    _folder, zip_path, images = _make(tmp_path, n=4, channels=1, labels='float')
    ds = ImageFolderDataset(str(zip_path), use_labels=True)
    assert ds.image_shape == [1, 8, 8] and ds.label_shape == [2] and not ds.has_onehot_labels
    img, label = ds[3]
    np.testing.assert_array_equal(img, images[3])
    assert label.tolist() == [1.5, -3.0]

    ds = ImageFolderDataset(str(zip_path)) # use_labels=False: empty labels.
    assert ds[0][1].shape == (0,) and ds.label_dim == 0 and not ds.has_labels

def test_xflip_doubles_with_mirrored_second_half(tmp_path):
    _folder, zip_path, images = _make(tmp_path, n=5)
    ds = ImageFolderDataset(str(zip_path), xflip=True, use_labels=True)
    assert len(ds) == 10
    for i in range(5):
        np.testing.assert_array_equal(ds[i][0], images[i])
        np.testing.assert_array_equal(ds[i + 5][0], images[i][:, :, ::-1])
        np.testing.assert_array_equal(ds[i + 5][1], ds[i][1])
        assert ds.get_details(i + 5).xflip

def test_max_size_is_a_seeded_sorted_subset(tmp_path):
    _folder, zip_path, images = _make(tmp_path, n=20)
    a = ImageFolderDataset(str(zip_path), max_size=6, random_seed=3)
    b = ImageFolderDataset(str(zip_path), max_size=6, random_seed=3)
    c = ImageFolderDataset(str(zip_path), max_size=6, random_seed=4)
    idx = lambda ds: [ds.get_details(i).raw_idx for i in range(len(ds))]
    assert len(a) == 6 and idx(a) == idx(b) and idx(a) == sorted(idx(a)) and idx(a) != idx(c)
    perm = np.arange(20)
    np.random.RandomState(3).shuffle(perm) # The subset EDM picks for the same seed.
    assert idx(a) == sorted(perm[:6].tolist())
    for i, r in enumerate(idx(a)):
        np.testing.assert_array_equal(a[i][0], images[r])
    assert len(ImageFolderDataset(str(zip_path), max_size=100)) == 20
    flipped = ImageFolderDataset(str(zip_path), max_size=6, random_seed=3, xflip=True)
    assert idx(flipped) == idx(a) * 2
    with pytest.raises(ValueError, match='max_size'):
        ImageFolderDataset(str(zip_path), max_size=0)

def test_cache_keeps_decoded_images(tmp_path):
    folder, _zip_path, images = _make(tmp_path, n=3)
    ds = ImageFolderDataset(str(folder), cache=True)
    first = ds[1][0]
    first[:] = 0 # The returned array is a copy; the cache must not change.
    for p in folder.rglob('*.png'):
        p.unlink() # Cached images no longer need the files.
    np.testing.assert_array_equal(ds[1][0], images[1])
    with pytest.raises(OSError, match='img00000002.png'):
        ds[2]

def test_pickle_and_dataloader_workers(tmp_path):
    _folder, zip_path, images = _make(tmp_path, n=6)
    ds = ImageFolderDataset(str(zip_path), use_labels=True)
    ds[0] # Opens the zip handle, which must not travel in the pickle.
    clone = pickle.loads(pickle.dumps(ds))
    np.testing.assert_array_equal(clone[5][0], images[5])
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2)
    batches = list(loader)
    got = torch.cat([x for x, _ in batches]).numpy()
    np.testing.assert_array_equal(got, images)
    assert batches[0][1].shape == (3, 3) and batches[0][1].dtype == torch.float32

def test_errors(tmp_path):
    folder, zip_path, _images = _make(tmp_path, n=2, labels='none')
    with pytest.raises(FileNotFoundError, match='not found'):
        ImageFolderDataset(str(tmp_path / 'missing'))
    with pytest.raises(FileNotFoundError, match='not found'):
        ImageFolderDataset(str(tmp_path / 'missing.zip'))
    (tmp_path / 'empty').mkdir()
    with pytest.raises(ValueError, match='No image files'):
        ImageFolderDataset(str(tmp_path / 'empty'))
    with pytest.raises(ValueError, match='asked for 16x16, found 8x8'):
        ImageFolderDataset(str(zip_path), resolution=16)
    assert ImageFolderDataset(str(zip_path), resolution=8).resolution == 8
    with pytest.raises(ValueError, match='no labels'):
        ImageFolderDataset(str(zip_path), use_labels=True)
    (tmp_path / 'bad.zip').write_bytes(b'this is not a zip archive')
    with pytest.raises(ValueError, match='Corrupt or invalid zip'):
        ImageFolderDataset(str(tmp_path / 'bad.zip'))
    (tmp_path / 'file.txt').write_text('x')
    with pytest.raises(ValueError, match='folder or a .zip'):
        ImageFolderDataset(str(tmp_path / 'file.txt'))

    wide = tmp_path / 'wide'
    wide.mkdir()
    PIL.Image.new('RGB', (16, 8)).save(wide / 'a.png')
    with pytest.raises(ValueError, match='must be square.*16x8'):
        ImageFolderDataset(str(wide))

    # Files that change after the dataset was opened (and checked) fail when read.
    mixed = tmp_path / 'mixed'
    mixed.mkdir()
    for fname in ['a.png', 'b.png', 'c.png']:
        PIL.Image.new('RGB', (8, 8)).save(mixed / fname)
    ds = ImageFolderDataset(str(mixed))
    PIL.Image.new('RGB', (4, 4)).save(mixed / 'b.png')
    (mixed / 'c.png').write_bytes(b'\x89PNG\r\n\x1a\n truncated')
    with pytest.raises(ValueError, match='expected uint8 \\[3, 8, 8\\]'):
        ds[1]
    with pytest.raises(OSError, match='Cannot read image c.png'):
        ds[2]

    partial = tmp_path / 'partial'
    partial.mkdir()
    PIL.Image.new('RGB', (8, 8)).save(partial / 'a.png')
    PIL.Image.new('RGB', (8, 8)).save(partial / 'b.png')
    (partial / 'dataset.json').write_text(json.dumps({'labels': [['a.png', 1]]}))
    with pytest.raises(ValueError, match='no label for b.png'):
        ImageFolderDataset(str(partial), use_labels=True)

#----------------------------------------------------------------------------
