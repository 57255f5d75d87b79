"""Power spectra: known answers (white noise, 2-D sinusoids, 1-D tones, Welch vs scipy),
spectral distance, plots, and the CLI on folders, arrays, wav files and a tiny network."""

import json
import os
import sys

import numpy as np
import PIL.Image
import pytest
import scipy.io.wavfile
import torch
from click.testing import CliRunner

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from edm_spectral import spectrum  # noqa: E402

#----------------------------------------------------------------------------
# 2-D radial spectrum.

def test_white_noise_spectrum_is_flat_at_its_variance():
    x = torch.randn([200, 3, 32, 32], generator=torch.Generator().manual_seed(0)) * 0.5
    freqs, psd = spectrum.radial_power_spectrum(x)
    assert freqs.shape == psd.shape == (17,)
    assert freqs[0] == 0 and freqs[-1] == pytest.approx(0.5)
    assert psd[0] == pytest.approx(0, abs=1e-12)             # mean removed: no DC power
    # Orthonormal FFT: white noise of variance v has expected power v at every frequency.
    np.testing.assert_allclose(psd[1:], 0.25, rtol=0.06)

def test_mean_removal_option_keeps_dc():
    x = torch.full([2, 1, 8, 8], 0.5, dtype=torch.float64)
    _, kept = spectrum.radial_power_spectrum(x, mean_remove=False)
    _, removed = spectrum.radial_power_spectrum(x)
    assert kept[0] == pytest.approx(0.25 * 64)                # |sum x|^2 / (H W) with ortho norm
    assert np.all(removed == 0) and np.all(kept[1:] == 0)

@pytest.mark.parametrize('ky,kx', [(0, 5), (3, 4), (6, 0)])
def test_sinusoid_peaks_at_its_radius(ky, kx):
    h = 32
    yy, xx = np.mgrid[:h, :h]
    img = np.cos(2 * np.pi * (ky * yy + kx * xx) / h)
    freqs, psd = spectrum.radial_power_spectrum(img[None, None])
    radius = int(round(np.hypot(ky, kx)))
    assert np.argmax(psd) == radius and freqs[radius] == pytest.approx(radius / h)
    # All the energy sits in that bin: two coefficients of power (H W / 4) each, mean over the bin.
    count = int((spectrum.radial_bins(h, h)[0] == radius).sum())
    assert psd[radius] == pytest.approx(2 * h * h / 4 / count)
    assert np.sum(np.delete(psd, radius)) < 1e-20

def test_uint8_maps_to_minus_one_one_and_layouts_agree():
    rnd = np.random.RandomState(1)
    u8 = rnd.randint(0, 256, size=[4, 1, 16, 16], dtype=np.uint8)
    f1, p1 = spectrum.radial_power_spectrum(u8)
    _, p2 = spectrum.radial_power_spectrum(torch.from_numpy(u8.astype(np.float32) / 127.5 - 1))
    _, p3 = spectrum.radial_power_spectrum(u8[:, 0])                     # [N, H, W]
    _, p4 = spectrum.radial_power_spectrum(iter([u8[:1], u8[1:]]))       # batches, streamed
    _, p5 = spectrum.radial_power_spectrum(u8, chunk=3)                  # large tensors in chunks
    np.testing.assert_allclose(p1, p5, rtol=1e-12)
    np.testing.assert_allclose(p1, p2, rtol=1e-5)
    np.testing.assert_allclose(p1, p3, rtol=1e-12)
    np.testing.assert_allclose(p1, p4, rtol=1e-12)

def test_bad_images_are_rejected():
    with pytest.raises(ValueError):
        spectrum.radial_power_spectrum(np.zeros([2, 3, 4, 4, 4]))
    with pytest.raises(TypeError):
        spectrum.radial_power_spectrum(np.zeros([2, 3, 4, 4], dtype=np.int32))
    with pytest.raises(ValueError, match='same resolution'):
        spectrum.radial_power_spectrum([np.zeros([1, 1, 8, 8]), np.zeros([1, 1, 16, 16])])
    with pytest.raises(ValueError, match='No images'):
        spectrum.radial_power_spectrum([])

#----------------------------------------------------------------------------
# 1-D PSD.

def test_psd_1d_of_a_sine_peaks_at_its_frequency():
    sr = 8000
    t = np.arange(2 * sr) / sr
    freqs, psd = spectrum.power_spectral_density_1d(np.sin(2 * np.pi * 1250 * t), n_fft=512, sample_rate=sr)
    assert freqs[np.argmax(psd)] == pytest.approx(1250)
    # One-sided density integrates to the signal's power (1/2 for a unit sine).
    assert np.sum(psd) * (freqs[1] - freqs[0]) == pytest.approx(0.5, rel=1e-3)

def test_psd_1d_matches_scipy_welch():
    import scipy.signal   # here, not at collection: ~2 s of imports that only this test needs
    x = np.random.RandomState(2).randn(3, 2, 3000)
    for hop in [None, 100]:
        freqs, psd = spectrum.power_spectral_density_1d(torch.from_numpy(x), n_fft=256, hop=hop, sample_rate=16000)
        f_ref, p_ref = scipy.signal.welch(x.reshape(6, -1), fs=16000, window='hann', nperseg=256, noverlap=256 - (hop or 128))
        np.testing.assert_allclose(freqs, f_ref)
        np.testing.assert_allclose(psd, p_ref.mean(0), rtol=1e-10)

def test_psd_1d_short_waveforms_and_bad_input():
    freqs, psd = spectrum.power_spectral_density_1d(np.random.RandomState(3).randn(2, 100), n_fft=256)
    assert freqs.shape == psd.shape == (129,) and freqs[-1] == pytest.approx(0.5)
    with pytest.raises(TypeError):
        spectrum.power_spectral_density_1d(np.zeros(100, dtype=np.int16))
    with pytest.raises(ValueError):
        spectrum.power_spectral_density_1d(np.zeros(100), n_fft=1)

#----------------------------------------------------------------------------
# Distance and plot.

def test_spectral_distance_known_values():
    psd = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    assert spectrum.spectral_distance(psd, psd) == dict(overall=0.0, high=0.0)
    d = spectrum.spectral_distance(psd * 10, psd)         # one decade everywhere (DC excluded)
    assert d['overall'] == pytest.approx(1) and d['high'] == pytest.approx(1)
    shifted = psd.copy()
    shifted[4] *= 100                                     # only the highest bin differs by 2 decades
    d = spectrum.spectral_distance(shifted, psd)
    assert d['overall'] == pytest.approx(2 / 4) and d['high'] == pytest.approx(2 / 2)
    with pytest.raises(ValueError, match='same number of bins'):
        spectrum.spectral_distance(psd, psd[:4])

def test_distance_of_sets_zero_for_identical_positive_otherwise():
    rnd = np.random.RandomState(4)
    a = rnd.randint(0, 256, size=[16, 3, 16, 16], dtype=np.uint8)
    smooth = torch.nn.functional.avg_pool2d(torch.from_numpy(a).double(), 3, stride=1, padding=1).round().to(torch.uint8)
    _, pa = spectrum.radial_power_spectrum(a)
    _, pb = spectrum.radial_power_spectrum(smooth)
    assert spectrum.spectral_distance(pa, pa)['overall'] == 0
    d = spectrum.spectral_distance(pb, pa)
    assert d['overall'] > 0.1 and d['high'] > d['overall']   # blurring removes high frequencies

def test_plot_file_written(tmp_path):
    f = np.arange(9) / 16
    path = str(tmp_path / 'sub' / 'spectra.png')
    spectrum.plot_spectra({'ref': (f, np.linspace(0, 1, 9)), 'model': (f, np.linspace(0, 2, 9))}, path, ref_name='ref')
    with PIL.Image.open(path) as img:
        assert img.format == 'PNG' and img.size[0] > 100
    with pytest.raises(ValueError):
        spectrum.plot_spectra({'a': (f, f)}, path, ref_name='missing')

#----------------------------------------------------------------------------
# CLI.

def _write_pngs(path, images):
    os.makedirs(path, exist_ok=True)
    for i, img in enumerate(images):
        PIL.Image.fromarray(img.transpose(1, 2, 0)).save(os.path.join(path, f'{i:04d}.png'))

def test_cli_compute_and_compare(tmp_path):
    rnd = np.random.RandomState(5)
    noise = rnd.randint(0, 256, size=[12, 3, 16, 16], dtype=np.uint8)
    _write_pngs(tmp_path / 'a', noise)
    np.save(tmp_path / 'a.npy', noise)
    _write_pngs(tmp_path / 'b', noise // 2 + 64)
    runner = CliRunner()
    r = runner.invoke(spectrum.cmdline, ['compute', f'--images={tmp_path / "a"}', f'--dest={tmp_path / "a.json"}', '--num=12'])
    assert r.exit_code == 0, r.output
    data = json.loads((tmp_path / 'a.json').read_text())
    np.testing.assert_allclose(data['psd'], spectrum.radial_power_spectrum(noise)[1], rtol=1e-12)

    r = runner.invoke(spectrum.cmdline, ['compare', f'--ref={tmp_path / "a"}', f'--set={tmp_path / "a.npy"}', f'--set={tmp_path / "b"}',
        f'--plot={tmp_path / "cmp.png"}', f'--json={tmp_path / "cmp.json"}'])
    assert r.exit_code == 0, r.output
    d = json.loads((tmp_path / 'cmp.json').read_text())['distances']
    assert d['a']['overall'] == pytest.approx(0, abs=1e-12)           # same images as the reference
    assert d['b']['overall'] == pytest.approx(np.log10(4), rel=1e-3)  # half the amplitude: a quarter of the power
    assert os.path.getsize(tmp_path / 'cmp.png') > 0

    r = runner.invoke(spectrum.cmdline, ['compute', f'--images={tmp_path / "a"}', f'--dest={tmp_path / "x.json"}', '--num=50'])
    assert r.exit_code != 0 and 'fewer than --num=50' in r.output
    r = runner.invoke(spectrum.cmdline, ['compute', f'--images={tmp_path / "missing"}', f'--dest={tmp_path / "x.json"}'])
    assert r.exit_code != 0 and 'missing' in r.output

def test_cli_compare_audio(tmp_path):
    sr = 8000
    t = np.arange(sr) / sr
    os.makedirs(tmp_path / 'ref')
    os.makedirs(tmp_path / 'loud')
    for i, f0 in enumerate([440, 880]):
        wav = 0.3 * np.sin(2 * np.pi * f0 * t) + 0.01 * np.random.RandomState(i).randn(sr)
        scipy.io.wavfile.write(tmp_path / 'ref' / f'{i}.wav', sr, (wav * 32767).astype(np.int16))
        scipy.io.wavfile.write(tmp_path / 'loud' / f'{i}.wav', sr, (wav * 3).astype(np.float32))
    r = CliRunner().invoke(spectrum.cmdline, ['compare-audio', f'--ref={tmp_path / "ref"}', f'--set={tmp_path / "ref"}',
        f'--set={tmp_path / "loud"}', '--n-fft=256', f'--json={tmp_path / "a.json"}', f'--plot={tmp_path / "a.png"}'])
    assert r.exit_code == 0, r.output
    d = json.loads((tmp_path / 'a.json').read_text())['distances']
    assert d['ref']['overall'] == 0
    assert d['loud']['overall'] == pytest.approx(np.log10(9), abs=2e-3)   # 3x amplitude, up to int16 rounding
    assert os.path.getsize(tmp_path / 'a.png') > 0

def test_cli_network_source(tmp_path):
    from training.snapshots import save_snapshot
    from training.networks import EDMPrecond
    torch.manual_seed(0)
    net = EDMPrecond(img_resolution=8, img_channels=3, model_type='SongUNet', model_channels=16, channel_mult=[1, 2],
        num_blocks=1, attn_resolutions=[])
    save_snapshot(str(tmp_path / 'net.pkl'), net)
    r = CliRunner().invoke(spectrum.cmdline, ['compute', f'--images={tmp_path / "net.pkl"}', '--seeds=0-3', '--steps=2',
        '--device=cpu', f'--dest={tmp_path / "net.json"}'])
    assert r.exit_code == 0, r.output
    psd = json.loads((tmp_path / 'net.json').read_text())['psd']
    assert len(psd) == 5 and all(np.isfinite(psd)) and sum(psd) > 0
    r = CliRunner().invoke(spectrum.cmdline, ['compute', f'--images={tmp_path / "net.pkl"}', f'--dest={tmp_path / "net.json"}'])
    assert r.exit_code != 0 and '--seeds' in r.output

#----------------------------------------------------------------------------
