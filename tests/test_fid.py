"""FID/KID: Frechet distance and KID known answers, statistics against numpy, the stand-in
detector, and the fid.py CLI end to end (ref then calc) with the stand-in detector."""

import os
import pickle
import re
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import torch

import fid
from edm_spectral import detectors

from conftest import GLOO_ARGS, REPO, child_env

#----------------------------------------------------------------------------
# Helpers.

def _random_spd(dim, seed):
    a = np.random.RandomState(seed).randn(dim, dim)
    return a @ a.T / dim + 0.1 * np.eye(dim)

def _write_pngs(path, images):
    os.makedirs(path, exist_ok=True)
    for i, img in enumerate(images):
        PIL.Image.fromarray(img.transpose(1, 2, 0).squeeze(-1) if img.shape[0] == 1 else img.transpose(1, 2, 0)).save(os.path.join(path, f'img{i:04d}.png'))

@pytest.fixture(scope='module')
def image_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp('fid')
    rnd = np.random.RandomState(0)
    noise = rnd.randint(0, 256, size=[24, 3, 16, 16], dtype=np.uint8)
    dark = (rnd.rand(24, 3, 16, 16) * 100).astype(np.uint8)
    gray = rnd.randint(0, 256, size=[12, 1, 16, 16], dtype=np.uint8)
    _write_pngs(root / 'noise', noise)
    _write_pngs(root / 'dark', dark)
    _write_pngs(root / 'gray', gray)
    return dict(root=root, noise=str(root / 'noise'), dark=str(root / 'dark'), gray=str(root / 'gray'),
        noise_images=noise, gray_images=gray)

def _metrics(output):
    return {m.group(1): float(m.group(2)) for m in re.finditer(r'(FID|KID) \(stand-in[^)]*\): (\S+)', output)}

#----------------------------------------------------------------------------
# Frechet distance known answers.

def test_fid_of_identical_stats_is_zero():
    mu = np.random.RandomState(1).randn(32)
    sigma = _random_spd(32, 2)
    assert abs(fid.calculate_fid_from_inception_stats(mu, sigma, mu, sigma)) < 1e-8

def test_fid_of_diagonal_gaussians_matches_closed_form():
    rnd = np.random.RandomState(3)
    mu1, mu2 = rnd.randn(16), rnd.randn(16) + 0.5
    s1, s2 = rnd.rand(16) + 0.1, (rnd.rand(16) + 0.1) * 3
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    got = fid.calculate_fid_from_inception_stats(mu1, np.diag(s1), mu2, np.diag(s2))
    assert got == pytest.approx(expected, rel=1e-10)

def test_fid_of_scaled_covariance_matches_closed_form():
    # S2 = c^2 S1 commutes with S1, so tr(S1 + S2 - 2 sqrtm(S1 S2)) = (1 - c)^2 tr(S1).
    sigma = _random_spd(12, 4)
    mu = np.zeros(12)
    assert fid.calculate_fid_from_inception_stats(mu, sigma, mu + 2, 9 * sigma) == pytest.approx(12 * 4 + 4 * np.trace(sigma), rel=1e-8)

def test_fid_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match='do not match'):
        fid.calculate_fid_from_inception_stats(np.zeros(4), np.eye(4), np.zeros(5), np.eye(5))

#----------------------------------------------------------------------------
# KID.

def _mmd_unbiased_direct(x, y):
    m, d = len(x), x.shape[1]
    k = lambda a, b: (float(np.dot(a, b)) / d + 1) ** 3
    kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return kxx + kyy - 2 * kxy

def test_kid_matches_direct_unbiased_mmd():
    rnd = np.random.RandomState(5)
    x, y = rnd.randn(7, 5), rnd.randn(7, 5) * 1.5 + 0.3
    # Subsets as large as the sets are permutations of them: every subset gives the full-set MMD.
    assert fid.calculate_kid(x, y, num_subsets=3, max_subset_size=100) == pytest.approx(_mmd_unbiased_direct(x, y), rel=1e-10)

def test_kid_identical_near_zero_shifted_positive():
    rnd = np.random.RandomState(6)
    a = rnd.randn(300, 16)
    b = rnd.randn(300, 16)
    same = fid.calculate_kid(a, a, num_subsets=20, max_subset_size=100, seed=1)
    iid = fid.calculate_kid(a, b, num_subsets=20, max_subset_size=100, seed=1)
    shifted = fid.calculate_kid(a, b + 1, num_subsets=20, max_subset_size=100, seed=1)
    assert shifted > 0.1
    assert abs(same) < 0.05 * shifted and abs(iid) < 0.05 * shifted
    assert fid.calculate_kid(a, b + 1, num_subsets=20, max_subset_size=100, seed=1) == shifted  # seeded

def test_kid_rejects_bad_input():
    with pytest.raises(ValueError):
        fid.calculate_kid(np.zeros([5, 3]), np.zeros([5, 4]))
    with pytest.raises(ValueError):
        fid.calculate_kid(np.zeros([1, 3]), np.zeros([5, 3]))

#----------------------------------------------------------------------------
# Stand-in detector and the statistics pass.

def test_standin_detector_is_deterministic_and_size_agnostic():
    imgs = torch.randint(0, 256, [3, 3, 16, 16], dtype=torch.uint8)
    a, b = detectors.StandinDetector(), detectors.StandinDetector()
    fa = a(imgs, return_features=True)
    assert fa.shape == (3, a.feature_dim) and fa.dtype == torch.float32
    assert torch.equal(fa, b(imgs, return_features=True))
    assert a(torch.randint(0, 256, [2, 3, 37, 23], dtype=torch.uint8)).shape == (2, a.feature_dim)
    assert not torch.equal(fa, detectors.StandinDetector(seed=1)(imgs))
    with pytest.raises(TypeError):
        a(imgs.float())

def test_stats_match_numpy_mean_and_covariance(image_dirs):
    det = detectors.StandinDetector()
    mu, sigma, feats = fid.calculate_inception_stats(image_dirs['noise'], detector=det, max_batch_size=5, num_workers=0, return_features=True)
    ref = det(torch.as_tensor(image_dirs['noise_images'])).double().numpy()
    assert feats.shape == ref.shape
    np.testing.assert_allclose(feats, ref, rtol=1e-5, atol=1e-6)   # dataset order preserved across batches
    np.testing.assert_allclose(mu, ref.mean(0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(sigma, np.cov(ref, rowvar=False), rtol=1e-4, atol=1e-7)

def test_grayscale_is_repeated_to_three_channels(image_dirs):
    det = detectors.StandinDetector()
    mu, _sigma = fid.calculate_inception_stats(image_dirs['gray'], detector='standin', max_batch_size=64, num_workers=0)
    rgb = torch.as_tensor(image_dirs['gray_images']).repeat([1, 3, 1, 1])
    np.testing.assert_allclose(mu, det(rgb).double().mean(0).numpy(), rtol=1e-5, atol=1e-7)

#----------------------------------------------------------------------------
# CLI end to end.

@pytest.mark.filterwarnings('ignore:Matrix is singular')   # 24 images, 256-d features: rank-deficient covariances
def test_cli_ref_then_calc_same_set_is_zero_and_other_set_positive(image_dirs, tmp_path, cli):
    ref = str(tmp_path / 'refs' / 'noise.npz')
    r = cli(fid.main, ['ref', f'--data={image_dirs["noise"]}', f'--dest={ref}', '--detector=standin', '--workers=0', '--device=cpu', '--batch=7', '--features'])
    data = np.load(ref)
    assert data['mu'].shape == (256,) and data['sigma'].shape == (256, 256) and data['features'].shape == (24, 256)
    assert str(data['detector']) == 'standin'

    r = cli(fid.main, ['calc', f'--images={image_dirs["noise"]}', f'--ref={ref}', '--num=24', '--detector=standin', '--workers=0', '--device=cpu', '--kid'])
    values = _metrics(r.output)
    assert 'FID (stand-in detector, NOT comparable to published FID)' in r.output
    assert abs(values['FID']) < 1e-4

    r = cli(fid.main, ['calc', f'--images={image_dirs["dark"]}', f'--ref={ref}', '--num=24', '--detector=standin', '--workers=0', '--device=cpu', '--kid'])
    values = _metrics(r.output)
    assert values['FID'] > 1 and values['KID'] > 0

def test_cli_num_larger_than_set_is_an_error(image_dirs, tmp_path, cli):
    ref = str(tmp_path / 'noise.npz')
    cli(fid.main, ['ref', f'--data={image_dirs["noise"]}', f'--dest={ref}', '--detector=standin', '--workers=0', '--device=cpu'])
    r = cli(fid.main, ['calc', f'--images={image_dirs["noise"]}', f'--ref={ref}', '--num=100', '--detector=standin', '--workers=0', '--device=cpu'], fails_with='fewer than --num=100')
    assert '--allow-fewer' in r.output, r.output
    cli(fid.main, ['calc', f'--images={image_dirs["noise"]}', f'--ref={ref}', '--num=100', '--allow-fewer', '--detector=standin', '--workers=0', '--device=cpu'])
    # KID needs stored features; a detector mismatch with the reference is refused.
    cli(fid.main, ['calc', f'--images={image_dirs["noise"]}', f'--ref={ref}', '--num=24', '--kid', '--detector=standin', '--workers=0', '--device=cpu'], fails_with='--features')

def test_cli_bad_inputs_give_clear_errors(image_dirs, tmp_path, cli):
    bad = tmp_path / 'bad.npz'
    bad.write_bytes(b'not an npz')
    common = ['--detector=standin', '--workers=0', '--device=cpu', '--num=24']
    cli(fid.main, ['calc', f'--images={image_dirs["noise"]}', f'--ref={bad}'] + common, fails_with='not a readable .npz')
    cli(fid.main, ['calc', f'--images={image_dirs["noise"]}', f'--ref={tmp_path / "missing.npz"}'] + common, fails_with='not found')
    np.savez(tmp_path / 'wrong_dim.npz', mu=np.zeros(2048), sigma=np.eye(2048)[:4, :4])
    cli(fid.main, ['calc', f'--images={image_dirs["noise"]}', f'--ref={tmp_path / "wrong_dim.npz"}'] + common, fails_with='bad shapes')
    np.savez(tmp_path / 'inception.npz', mu=np.zeros(8), sigma=np.eye(8))  # no 'detector' key = published Inception refs
    cli(fid.main, ['calc', f'--images={image_dirs["noise"]}', f'--ref={tmp_path / "inception.npz"}'] + common, fails_with='same detector')
    np.savez(tmp_path / 'standin.npz', mu=np.zeros(256), sigma=np.eye(256), detector=np.array('standin'))
    cli(fid.main, ['calc', f'--images={tmp_path / "nowhere"}', f'--ref={tmp_path / "standin.npz"}'] + common, fails_with='not found')

def _save_standin_torchscript(path, **kwargs):
    torch.jit.script(detectors.StandinDetector(**kwargs)).save(str(path))   # the tests' stand-in file: NOT an FID detector

def test_missing_detector_gives_download_instructions(image_dirs, tmp_path, monkeypatch, cli):
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path / 'cache'))
    url = 'http://localhost:9/metrics/inception-2015-12-05.pkl'   # nothing listens on port 9 (discard)
    r = cli(fid.main, ['ref', f'--data={image_dirs["noise"]}', f'--dest={tmp_path / "x.npz"}', f'--detector={url}', '--workers=0', '--device=cpu'],
        fails_with=url)
    cache_file = detectors.detector_cache_path(url)
    assert url in r.output and cache_file in r.output and '--detector=PATH' in r.output and '--trust-code' in r.output and 'wget' in r.output
    assert not os.path.exists(tmp_path / 'x.npz')

    # The cache path in the message is where the loader really looks: a detector placed there loads offline.
    os.makedirs(os.path.dirname(cache_file))
    _save_standin_torchscript(cache_file, feature_dim=32)
    det, name = detectors.load_detector(url, verbose=False)
    assert det.feature_dim == 32 and name == 'standin'
    # And so does a local path given to --detector.
    det, _ = detectors.load_detector(cache_file, verbose=False)
    assert det.feature_dim == 32
    with pytest.raises(FileNotFoundError):
        detectors.load_detector(str(tmp_path / 'nope.pkl'))

def test_pickle_detectors_load_only_from_the_standard_url_or_with_trust_code(tmp_path, monkeypatch):
    from edm_spectral.checkpoints import UnsafePickleError
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path / 'cache'))
    imgs = torch.randint(0, 256, [2, 3, 8, 8], dtype=torch.uint8)
    expected = detectors.StandinDetector(feature_dim=16)(imgs)
    pkl = tmp_path / 'standin.pkl'
    with open(pkl, 'wb') as f:
        pickle.dump(detectors.StandinDetector(feature_dim=16), f)
    with pytest.raises(UnsafePickleError, match='pickle'):
        detectors.load_detector(str(pkl), verbose=False)
    det, name = detectors.load_detector(str(pkl), verbose=False, trust_code=True)
    assert name == 'standin' and torch.equal(det(imgs), expected)

    # The download cache of the standard URL is trusted, by URL (the default) and by path.
    cached = detectors.detector_cache_path(detectors.DETECTOR_URL)
    os.makedirs(os.path.dirname(cached))
    os.replace(pkl, cached)
    assert detectors.is_standard_detector_file(cached)
    for spec in (None, cached):
        det, _ = detectors.load_detector(spec, verbose=False)
        assert torch.equal(det(imgs), expected)

    # A pickle in the cache of another URL is not.
    url = 'http://localhost:9/other/detector.pkl'
    other = detectors.detector_cache_path(url)
    with open(other, 'wb') as f:
        pickle.dump(detectors.StandinDetector(feature_dim=16), f)
    with pytest.raises(UnsafePickleError):
        detectors.load_detector(url, verbose=False)

    # A zip that is not TorchScript (a torch.save file) is a clear error, not an unpickle.
    torch.save(detectors.StandinDetector(feature_dim=16), tmp_path / 'saved.pt')
    with pytest.raises(ValueError, match='not a loadable TorchScript'):
        detectors.load_detector(str(tmp_path / 'saved.pt'), verbose=False)

@pytest.mark.parametrize('command', ['ref', 'calc'])
def test_hostile_detector_pickle_runs_no_code(image_dirs, tmp_path, command, cli, hostile):
    evil = hostile.pickle(wrap=lambda payload: payload)
    ref = tmp_path / 'standin.npz'
    np.savez(ref, mu=np.zeros(256), sigma=np.eye(256), detector=np.array('standin'))
    args = dict(ref=['ref', f'--data={image_dirs["noise"]}', f'--dest={tmp_path / "out.npz"}'],
        calc=['calc', f'--images={image_dirs["noise"]}', f'--ref={ref}', '--num=24'])[command]
    args += [f'--detector={evil}', '--workers=0', '--device=cpu']
    if command == 'ref':   # a real process: nothing but the one line reaches its stdout and stderr
        proc = subprocess.run([sys.executable, 'fid.py'] + args, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=120)
        returncode, output = proc.returncode, proc.stdout + proc.stderr
    else:
        r = cli(fid.main, args, fails_with='--trust-code')
        returncode, output = r.exit_code, r.output
    assert returncode != 0 and not hostile.ran()
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('Error: --detector:') and '--trust-code' in lines[0], output
    assert not os.path.exists(tmp_path / 'out.npz')

    # The same file with --trust-code is unpickled: the payload runs (which is what the flag says).
    r = cli(fid.main, args + ['--trust-code'], fails_with='does not hold a detector module')
    assert hostile.ran(), r.output

@pytest.mark.parametrize('cores, workers', [(1, 0), (2, 1), (4, 3), (64, 3)])
def test_default_workers_fit_the_cores(monkeypatch, cores, workers):
    # DataLoader warns when the workers outnumber the cores; EDM's 3 did on a 2-core machine.
    monkeypatch.setattr(os, 'sched_getaffinity', lambda pid: set(range(cores)), raising=False)
    assert fid._default_workers() == workers

#----------------------------------------------------------------------------
# Two CPU processes under torchrun (Gloo; the suite's shared launch, conftest.gloo_runs) give the
# same statistics and features of 24 random images as one process (`fid.py ref` in this
# process, with the same options).

def test_torchrun_two_processes_match_single_process(gloo_runs, tmp_path, cli):
    cli(fid.main, GLOO_ARGS['fid_ref'] + [f'--data={gloo_runs["images"]}', f'--dest={tmp_path / "one.npz"}'])
    one, two = np.load(tmp_path / 'one.npz'), np.load(gloo_runs['two_ref'])
    assert one['features'].shape == (24, 256)
    np.testing.assert_array_equal(one['features'], two['features'])
    np.testing.assert_allclose(one['mu'], two['mu'], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(one['sigma'], two['sigma'], rtol=1e-10, atol=1e-13)

#----------------------------------------------------------------------------
