"""training/dataset.py: every image is checked when a dataset is opened (size, pixel layout,
PNGs cut short), so that a bad file fails in the main process with its name, not in a worker."""

import io
import os
import sys
import zipfile

import numpy as np
import PIL.Image
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from training import dataset
from training.dataset import ImageFolderDataset

#----------------------------------------------------------------------------
# Datasets in dataset_tool's layout whose files are given as PIL images or raw bytes.

def _png(size=16, mode='RGB', seed=0):
    rng = np.random.default_rng(seed)
    shape = {'RGB': (size, size, 3), 'RGBA': (size, size, 4)}.get(mode, (size, size))
    image = PIL.Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8))
    return image if mode in ('RGB', 'RGBA', 'L') else image.convert(mode)

def _encode(item):
    if isinstance(item, bytes):
        return item
    buf = io.BytesIO()
    item.save(buf, format='png', compress_level=0)
    return buf.getvalue()

def _fname(i):
    return f'{i // 1000:05d}/img{i:08d}.png'

def _zip(tmp_path, items, name='dataset.zip'):
    path = tmp_path / name
    with zipfile.ZipFile(path, 'w', compression=zipfile.ZIP_STORED) as z:
        for i, item in enumerate(items):
            z.writestr(_fname(i), _encode(item))
    return path

def _folder(tmp_path, items, name='dataset'):
    for i, item in enumerate(items):
        path = tmp_path / name / _fname(i)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_encode(item))
    return tmp_path / name

#----------------------------------------------------------------------------

@pytest.mark.parametrize('make', [_zip, _folder])
def test_other_size_fails_at_open_with_the_file_name(tmp_path, make):
    items = [_png(seed=i) for i in range(6)]
    items[3] = _png(size=15)
    items[5] = _png(size=8) # Only the first bad file is reported.
    path = make(tmp_path, items)
    expected = f'{path}: 00000/img00000003.png is 15x15 RGB, expected 16x16 RGB like the first image'
    with pytest.raises(ValueError) as err:
        ImageFolderDataset(str(path))
    assert str(err.value) == expected

def test_other_channel_count_fails_at_open(tmp_path):
    for odd, mode in [(_png(mode='L'), 'L'), (_png(mode='RGBA'), 'RGBA')]:
        path = _zip(tmp_path, [_png(), _png(seed=1), odd, _png(seed=3)], name=f'{mode}.zip')
        with pytest.raises(ValueError, match=f'img00000002.png is 16x16 {mode}, expected 16x16 RGB like the first image'):
            ImageFolderDataset(str(path))

def test_other_bit_depth_fails_but_palette_mixes_with_grayscale(tmp_path):
    deep = PIL.Image.fromarray(np.full((16, 16), 40000, dtype=np.uint16))
    path = _zip(tmp_path, [_png(mode='L'), deep], name='deep.zip')
    with pytest.raises(ValueError, match='img00000001.png is 16x16 I;16, expected 16x16 L like the first image'):
        ImageFolderDataset(str(path))

    # Palette and grayscale images both decode to one uint8 channel.
    path = _zip(tmp_path, [_png(mode='L'), _png(mode='P', seed=1)], name='palette.zip')
    ds = ImageFolderDataset(str(path))
    assert ds.image_shape == [1, 16, 16] and ds[1][0].shape == (1, 16, 16)

def test_corrupt_png_as_the_last_image_of_a_zip(tmp_path):
    good = [_png(seed=i) for i in range(4)]
    cut = _encode(_png(seed=9))
    cut = cut[:len(cut) // 2] # Valid header, pixel data cut short.
    path = _zip(tmp_path, good + [cut], name='cut.zip')
    with pytest.raises(ValueError, match=r'cut\.zip: 00000/img00000004\.png is corrupt'):
        ImageFolderDataset(str(path))

    path = _zip(tmp_path, good + [b'\x89PNG\r\n\x1a\n not a png at all'], name='garbage.zip')
    with pytest.raises(ValueError, match=r'garbage\.zip: 00000/img00000004\.png is corrupt or not an image'):
        ImageFolderDataset(str(path))

def test_data_after_the_png_end_is_accepted(tmp_path):
    images = [_png(seed=i) for i in range(3)]
    items = images[:2] + [_encode(images[2]) + b'trailing bytes some tools write']
    ds = ImageFolderDataset(str(_zip(tmp_path, items)))
    assert len(ds) == 3
    np.testing.assert_array_equal(ds[2][0], np.asarray(images[2]).transpose(2, 0, 1))

def test_checks_leave_a_valid_dataset_unchanged(tmp_path):
    images = [_png(seed=i) for i in range(5)]
    for path in [_zip(tmp_path, images), _folder(tmp_path, images)]:
        ds = ImageFolderDataset(str(path), resolution=16)
        assert len(ds) == 5 and ds.image_shape == [3, 16, 16]
        for i, image in enumerate(images):
            np.testing.assert_array_equal(ds[i][0], np.asarray(image).transpose(2, 0, 1))
        ds.close()

@pytest.mark.parametrize('make', [_zip, _folder])
def test_large_files_are_checked_without_reading_them_whole(tmp_path, monkeypatch, make):
    monkeypatch.setattr(dataset, '_READ_WHOLE_BYTES', 100) # Every test image counts as large.
    named = lambda name: name + '.zip' if make is _zip else name
    images = [_png(seed=i) for i in range(3)]
    ds = ImageFolderDataset(str(make(tmp_path, images, named('good'))))
    np.testing.assert_array_equal(ds[1][0], np.asarray(images[1]).transpose(2, 0, 1))
    cut = _encode(images[2])[:-40]
    with pytest.raises(ValueError, match=r'img00000002\.png is corrupt \(image file is truncated'):
        ImageFolderDataset(str(make(tmp_path, images[:2] + [cut], named('cut'))))
    with pytest.raises(ValueError, match=r'img00000001\.png is 15x15 RGB, expected 16x16 RGB'):
        ImageFolderDataset(str(make(tmp_path, [images[0], _png(size=15)], named('small'))))

#----------------------------------------------------------------------------
