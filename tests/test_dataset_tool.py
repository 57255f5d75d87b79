"""dataset_tool.py: sources, transforms, output layout and error handling."""

import gzip
import io
import json
import os
import pathlib
import pickle
import sys
import tarfile
import zipfile

import click
import numpy as np
import PIL.Image
import pytest
from click.testing import CliRunner

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import dataset_tool
from dataset_tool import convert_dataset
from training.dataset import ImageFolderDataset

#----------------------------------------------------------------------------
# Helpers.

def _rand_image(rng, h, w, c=3):
    shape = (h, w) if c == 1 else (h, w, c)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)

def _save(path, img):
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(img).save(path)

def _convert(source, dest, **kwargs):
    return convert_dataset(str(source), str(dest), progress=False, **kwargs)

def _read_zip_png(zip_path, name):
    with zipfile.ZipFile(zip_path) as z:
        return np.array(PIL.Image.open(io.BytesIO(z.read(name))))

def _chw(img):
    return (img[:, :, None] if img.ndim == 2 else img).transpose(2, 0, 1)

#----------------------------------------------------------------------------
# Folder -> zip -> ImageFolderDataset: pixels, order, names and folder labels.

def test_folder_round_trip_with_folder_labels(tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / 'src'
    images = {}
    for cls in ['dogs', 'cats', 'birds']:
        for i in range(3):
            img = _rand_image(rng, 8, 8)
            _save(src / cls / f'{i}.png', img)
            images[f'{cls}/{i}.png'] = img
    (src / 'cats' / 'notes.txt').write_text('not an image')

    dest = tmp_path / 'out.zip'
    assert _convert(src, dest) == 9
    order = sorted(images) # birds, cats, dogs
    with zipfile.ZipFile(dest) as z:
        infos = {i.filename: i for i in z.infolist()}
        meta = json.loads(z.read('dataset.json'))
    assert set(infos) == {f'00000/img{i:08d}.png' for i in range(9)} | {'dataset.json'}
    assert all(i.compress_type == zipfile.ZIP_STORED for i in infos.values())
    classes = {'birds': 0, 'cats': 1, 'dogs': 2}
    assert meta['labels'] == [[f'00000/img{i:08d}.png', classes[name.split('/')[0]]] for i, name in enumerate(order)]

    ds = ImageFolderDataset(str(dest), use_labels=True)
    assert len(ds) == 9 and ds.resolution == 8 and ds.num_channels == 3 and ds.label_dim == 3 and ds.name == 'out'
    for i, name in enumerate(order):
        img, label = ds[i]
        np.testing.assert_array_equal(img, _chw(images[name]))
        np.testing.assert_array_equal(label, np.eye(3, dtype=np.float32)[classes[name.split('/')[0]]])

def test_folder_order_and_dataset_json_labels(tmp_path):
    # Order is that of sorted pathlib paths (component-wise), not of plain strings:
    # 'a/z.png' < 'a-b.png' although '-' < '/' as characters.
    rng = np.random.default_rng(1)
    src = tmp_path / 'src'
    names = ['a-b.png', 'a/z.png', 'a/b/c.jpg', 'B.png', 'b.bmp', 'a.png']
    imgs = {}
    for n in names:
        imgs[n] = _rand_image(rng, 4, 4, c=1)
        _save(src / n, imgs[n])
    labels = {n: i * 10 for i, n in enumerate(names)}
    (src / 'dataset.json').write_text(json.dumps({'labels': [[n, l] for n, l in labels.items()]}))

    dest = tmp_path / 'out'
    _convert(src, dest)
    expected = [p.relative_to(src).as_posix() for p in sorted(src.rglob('*')) if p.is_file() and p.suffix != '.json']
    assert expected.index('a/z.png') < expected.index('a-b.png')
    meta = json.loads((dest / 'dataset.json').read_text())
    assert meta['labels'] == [[f'00000/img{i:08d}.png', labels[n]] for i, n in enumerate(expected)]
    for i, n in enumerate(expected):
        out = np.array(PIL.Image.open(dest / '00000' / f'img{i:08d}.png'))
        if n.endswith('.jpg'):
            assert out.shape == (4, 4)
        else:
            np.testing.assert_array_equal(out, imgs[n])

def test_single_folder_has_no_labels_and_partial_labels_become_null(tmp_path):
    rng = np.random.default_rng(2)
    src = tmp_path / 'src'
    for i in range(3):
        _save(src / 'only' / f'{i}.png', _rand_image(rng, 4, 4))
    _convert(src, tmp_path / 'a.zip')
    with zipfile.ZipFile(tmp_path / 'a.zip') as z:
        assert json.loads(z.read('dataset.json')) == {'labels': None}

    (src / 'dataset.json').write_text(json.dumps({'labels': [['only/0.png', 1], ['only/1.png', 0]]}))
    _convert(src, tmp_path / 'b.zip')
    with zipfile.ZipFile(tmp_path / 'b.zip') as z:
        assert json.loads(z.read('dataset.json')) == {'labels': None}

def test_zip_source_to_folder_and_max_images(tmp_path):
    rng = np.random.default_rng(3)
    src = tmp_path / 'src.zip'
    imgs = [_rand_image(rng, 8, 8) for _ in range(5)]
    with zipfile.ZipFile(src, 'w') as z:
        for i, img in reversed(list(enumerate(imgs))):
            buf = io.BytesIO()
            PIL.Image.fromarray(img).save(buf, format='png')
            z.writestr(f'x/{i}.png', buf.getvalue())
        z.writestr('dataset.json', json.dumps({'labels': [[f'x/{i}.png', i % 2] for i in range(5)]}))

    dest = tmp_path / 'out'
    assert _convert(src, dest, max_images=3) == 3
    ds = ImageFolderDataset(str(dest), use_labels=True)
    assert len(ds) == 3 and ds.label_dim == 2
    for i in range(3):
        img, label = ds[i]
        np.testing.assert_array_equal(img, _chw(imgs[i]))
        assert label.tolist() == [1 - i % 2, i % 2]
    # Pixel round trip zip -> folder -> zip.
    _convert(dest, tmp_path / 'again.zip')
    np.testing.assert_array_equal(_read_zip_png(tmp_path / 'again.zip', '00000/img00000002.png'), imgs[2])

def test_file_naming_beyond_1000(tmp_path):
    src = tmp_path / 'src'
    src.mkdir()
    pngs = []
    for color in range(256): # encoded once each, written 1002 times
        buffer = io.BytesIO()
        PIL.Image.new('L', (2, 2), color=color).save(buffer, format='png')
        pngs.append(buffer.getvalue())
    for i in range(1002):
        (src / f'{i:04d}.png').write_bytes(pngs[i % 256])
    dest = tmp_path / 'out.zip'
    _convert(src, dest)
    with zipfile.ZipFile(dest) as z:
        names = sorted(z.namelist())
    assert names[-3:] == ['00001/img00001000.png', '00001/img00001001.png', 'dataset.json']
    assert _read_zip_png(dest, '00001/img00001001.png')[0, 0] == 1001 % 256

#----------------------------------------------------------------------------
# Transforms against PIL directly.

def test_resize_and_center_crop_match_pil(tmp_path):
    rng = np.random.default_rng(4)
    src = tmp_path / 'src'
    wide = _rand_image(rng, 12, 20)
    _save(src / 'a.png', wide)
    _convert(src, tmp_path / 'crop.zip', transform='center-crop', resolution=(8, 8))
    expected = np.array(PIL.Image.fromarray(wide[:, 4:16]).resize((8, 8), PIL.Image.Resampling.LANCZOS))
    np.testing.assert_array_equal(_read_zip_png(tmp_path / 'crop.zip', '00000/img00000000.png'), expected)

    src2 = tmp_path / 'src2'
    square = _rand_image(rng, 16, 16)
    _save(src2 / 'a.png', square)
    _convert(src2, tmp_path / 'resize.zip', resolution=(8, 8))
    expected = np.array(PIL.Image.fromarray(square).resize((8, 8), PIL.Image.Resampling.LANCZOS))
    np.testing.assert_array_equal(_read_zip_png(tmp_path / 'resize.zip', '00000/img00000000.png'), expected)
    _convert(src2, tmp_path / 'same.zip', resolution=(16, 16)) # Same size: no resampling at all.
    np.testing.assert_array_equal(_read_zip_png(tmp_path / 'same.zip', '00000/img00000000.png'), square)

def test_center_crop_grayscale_becomes_rgb_and_tall_crop(tmp_path):
    rng = np.random.default_rng(5)
    gray = _rand_image(rng, 21, 10, c=1)
    out = dataset_tool.center_crop(8, 8, gray)
    rgb = np.repeat(gray[5:15, :, None], 3, axis=2)
    np.testing.assert_array_equal(out, np.array(PIL.Image.fromarray(rgb).resize((8, 8), PIL.Image.Resampling.LANCZOS)))

def test_center_crop_wide(tmp_path):
    rng = np.random.default_rng(6)
    src = tmp_path / 'src'
    img = _rand_image(rng, 20, 32)
    _save(src / 'a.png', img)
    _save(src / 'b.png', _rand_image(rng, 20, 12)) # Narrower than W: skipped.
    _save(src / 'c.png', img[::-1])
    _convert(src, tmp_path / 'out.zip', transform='center-crop-wide', resolution=(16, 8))
    ch = int(np.round(16 * 20 / 32)) # 10 rows
    body = np.array(PIL.Image.fromarray(img[5:15]).resize((16, 8), PIL.Image.Resampling.LANCZOS))
    out = _read_zip_png(tmp_path / 'out.zip', '00000/img00000000.png')
    assert out.shape == (16, 16, 3) and ch == 10
    np.testing.assert_array_equal(out[4:12], body)
    assert out[:4].max() == 0 and out[12:].max() == 0
    with zipfile.ZipFile(tmp_path / 'out.zip') as z: # The skipped image keeps its index.
        assert sorted(z.namelist()) == ['00000/img00000000.png', '00000/img00000002.png', 'dataset.json']

#----------------------------------------------------------------------------
# CIFAR-10 and MNIST archives built in the test.

def _make_cifar(path, per_batch=2, skip_batch=None, payload=None):
    rng = np.random.default_rng(7)
    all_data, all_labels = [], []
    with tarfile.open(path, 'w:gz') as tar:
        for b in range(1, 6):
            data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
            labels = [int(x) for x in rng.integers(0, 10, size=per_batch)]
            all_data.append(data)
            all_labels += labels
            if b == skip_batch:
                continue
            raw = pickle.dumps(payload if payload is not None else {'batch_label': f'batch {b}', 'data': data, 'labels': labels}, protocol=2)
            info = tarfile.TarInfo(f'cifar-10-batches-py/data_batch_{b}')
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return np.concatenate(all_data), all_labels

def test_cifar10_tarball(tmp_path):
    tarball = tmp_path / 'cifar-10-python.tar.gz'
    data, labels = _make_cifar(tarball)
    dest = tmp_path / 'cifar.zip'
    assert _convert(tarball, dest) == 10
    ds = ImageFolderDataset(str(dest), use_labels=True)
    assert len(ds) == 10 and ds.resolution == 32 and ds.num_channels == 3
    for i in [0, 3, 9]:
        img, label = ds[i]
        np.testing.assert_array_equal(img, data[i].reshape(3, 32, 32))
        assert int(np.argmax(label)) == labels[i] and label.sum() == 1
    with zipfile.ZipFile(dest) as z:
        assert json.loads(z.read('dataset.json'))['labels'][4] == ['00000/img00000004.png', labels[4]]
    assert _convert(tarball, tmp_path / 'few', max_images=3) == 3

def test_cifar10_errors(tmp_path):
    (tmp_path / 'a').mkdir()
    _make_cifar(tmp_path / 'a' / 'cifar-10-python.tar.gz', skip_batch=4)
    with pytest.raises(click.ClickException, match='data_batch_4 is missing'):
        _convert(tmp_path / 'a' / 'cifar-10-python.tar.gz', tmp_path / 'x.zip')
    (tmp_path / 'b').mkdir()
    _make_cifar(tmp_path / 'b' / 'cifar-10-python.tar.gz', payload=pathlib.PurePosixPath('/etc')) # Not plain data.
    with pytest.raises(click.ClickException, match='unexpected object'):
        _convert(tmp_path / 'b' / 'cifar-10-python.tar.gz', tmp_path / 'y.zip')
    (tmp_path / 'c').mkdir()
    (tmp_path / 'c' / 'cifar-10-python.tar.gz').write_bytes(b'not a tarball')
    with pytest.raises(click.ClickException, match='Cannot read CIFAR-10'):
        _convert(tmp_path / 'c' / 'cifar-10-python.tar.gz', tmp_path / 'z.zip')
    assert not (tmp_path / 'x.zip').exists() and not (tmp_path / 'y.zip').exists()

def test_mnist(tmp_path):
    rng = np.random.default_rng(8)
    imgs = rng.integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    labels = np.array([3, 1, 4], dtype=np.uint8)
    with gzip.open(tmp_path / 'train-images-idx3-ubyte.gz', 'wb') as f:
        f.write(b'\0' * 16 + imgs.tobytes())
    with gzip.open(tmp_path / 'train-labels-idx1-ubyte.gz', 'wb') as f:
        f.write(b'\0' * 8 + labels.tobytes())
    _convert(tmp_path / 'train-images-idx3-ubyte.gz', tmp_path / 'out.zip')
    ds = ImageFolderDataset(str(tmp_path / 'out.zip'), use_labels=True)
    assert ds.image_shape == [1, 32, 32] and ds.label_dim == 5
    img, label = ds[2]
    np.testing.assert_array_equal(img[0, 2:30, 2:30], imgs[2])
    assert img[0, :2].max() == 0 and int(np.argmax(label)) == 4

#----------------------------------------------------------------------------
# Errors.

def test_errors_source(tmp_path):
    with pytest.raises(click.ClickException, match='does not exist'):
        _convert(tmp_path / 'nope', tmp_path / 'o.zip')
    (tmp_path / 'empty').mkdir()
    (tmp_path / 'empty' / 'readme.txt').write_text('x')
    with pytest.raises(click.ClickException, match='No image files'):
        _convert(tmp_path / 'empty', tmp_path / 'o.zip')
    (tmp_path / 'bad.zip').write_bytes(b'PK\x03\x04 definitely not a zip')
    with pytest.raises(click.ClickException, match='Corrupt or invalid zip'):
        _convert(tmp_path / 'bad.zip', tmp_path / 'o.zip')
    (tmp_path / 'thing.dat').write_bytes(b'x')
    with pytest.raises(click.ClickException, match='Unknown --source'):
        _convert(tmp_path / 'thing.dat', tmp_path / 'o.zip')
    assert not (tmp_path / 'o.zip').exists()

def test_errors_mixed_and_corrupt_images(tmp_path):
    rng = np.random.default_rng(9)
    src = tmp_path / 'mixed_c'
    _save(src / 'a.png', _rand_image(rng, 8, 8))
    _save(src / 'b.png', _rand_image(rng, 8, 8, c=1))
    with pytest.raises(click.ClickException, match=r'b\.png.*channels 1 vs 3'):
        _convert(src, tmp_path / 'o1.zip')
    assert not (tmp_path / 'o1.zip').exists() and not (tmp_path / 'o1.zip.partial').exists()

    src = tmp_path / 'mixed_s'
    _save(src / 'a.png', _rand_image(rng, 8, 8))
    _save(src / 'b.png', _rand_image(rng, 16, 16))
    with pytest.raises(click.ClickException, match=r'b\.png.*width 16 vs 8'):
        _convert(src, tmp_path / 'o2.zip')
    _convert(src, tmp_path / 'o3.zip', resolution=(8, 8)) # Fixed by resizing.

    src = tmp_path / 'corrupt'
    _save(src / 'a.png', _rand_image(rng, 8, 8))
    (src / 'b.png').write_bytes(b'\x89PNG\r\n\x1a\n garbage')
    with pytest.raises(click.ClickException, match=r'Cannot read image .*b\.png'):
        _convert(src, tmp_path / 'o4.zip')

    src = tmp_path / 'shape'
    _save(src / 'a.png', _rand_image(rng, 8, 12))
    with pytest.raises(click.ClickException, match='square'):
        _convert(src, tmp_path / 'o5.zip')
    src = tmp_path / 'pow2'
    _save(src / 'a.png', _rand_image(rng, 12, 12))
    with pytest.raises(click.ClickException, match='power of two'):
        _convert(src, tmp_path / 'o6.zip')
    src = tmp_path / 'rgba'
    _save(src / 'a.png', _rand_image(rng, 8, 8, c=4))
    with pytest.raises(click.ClickException, match='4 channels'):
        _convert(src, tmp_path / 'o7.zip')

def test_errors_dest_and_options(tmp_path):
    rng = np.random.default_rng(10)
    src = tmp_path / 'src'
    _save(src / 'a.png', _rand_image(rng, 8, 8))
    busy = tmp_path / 'busy'
    busy.mkdir()
    (busy / 'keep.txt').write_text('x')
    with pytest.raises(click.ClickException, match='must be empty'):
        _convert(src, busy)
    (tmp_path / 'exists.zip').write_bytes(b'x')
    with pytest.raises(click.ClickException, match='already exists'):
        _convert(src, tmp_path / 'exists.zip')
    with pytest.raises(click.ClickException, match='must not be empty'):
        _convert(src, '')
    with pytest.raises(click.ClickException, match='needs --resolution'):
        _convert(src, tmp_path / 'o.zip', transform='center-crop')

    runner = CliRunner()
    for bad in ['8y8', '0x8', 'x', '8x']:
        result = runner.invoke(dataset_tool.main, ['--source', str(src), '--dest', str(tmp_path / 'o.zip'), f'--resolution={bad}'])
        assert result.exit_code == 2 and "Invalid value for '--resolution'" in result.output
    result = runner.invoke(dataset_tool.main, ['--source', str(src), '--dest', str(tmp_path / 'o.zip'), '--transform=stretch'])
    assert result.exit_code == 2
    result = runner.invoke(dataset_tool.main, ['--source', str(src), '--dest', str(tmp_path / 'ok.zip'), '--resolution=4,4'])
    assert result.exit_code == 0, result.output
    assert _read_zip_png(tmp_path / 'ok.zip', '00000/img00000000.png').shape == (4, 4, 3)

#----------------------------------------------------------------------------
