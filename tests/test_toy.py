"""The checkerboard experiment: data generator known answers and a smoke-size end-to-end run."""

import json
import os

import numpy as np
import PIL.Image
import pytest

from edm_spectral import toy

#----------------------------------------------------------------------------

def test_checkerboards_are_binary_with_the_right_period():
    images = toy.make_checkerboards(32, resolution=16, checker_sizes=[2, 4], seed=1)
    assert images.shape == (32, 1, 16, 16) and images.dtype == np.uint8
    assert set(np.unique(images)) == {0, 255}
    for img in images[:, 0].astype(np.float64) / 127.5 - 1:
        # A checkerboard of checker size c is a product of two square waves of period 2c, so
        # its strongest non-DC Fourier coefficient sits at (R/2c, R/2c).
        amp = np.abs(np.fft.fft2(img))
        amp[0, 0] = 0
        ky, kx = np.unravel_index(np.argmax(amp), amp.shape)
        assert {int(min(ky, 16 - ky)), int(min(kx, 16 - kx))} <= {2, 4}
        assert min(ky, 16 - ky) == min(kx, 16 - kx)

def test_checkerboards_are_deterministic_per_seed():
    a = toy.make_checkerboards(8, 16, [2, 4], seed=3)
    b = toy.make_checkerboards(8, 16, [2, 4], seed=3)
    c = toy.make_checkerboards(8, 16, [2, 4], seed=4)
    assert np.array_equal(a, b) and not np.array_equal(a, c)

def test_image_folder_layout(tmp_path):
    images = toy.make_checkerboards(3, 8, [2], seed=0)
    toy.write_image_folder(images, str(tmp_path))
    assert json.load(open(tmp_path / 'dataset.json')) == {'labels': None}
    for idx in range(3):
        png = np.asarray(PIL.Image.open(tmp_path / f'00000/img{idx:08d}.png'))
        assert np.array_equal(png, images[idx, 0])

#----------------------------------------------------------------------------

def test_smoke_run_writes_every_output(tmp_path):
    outdir = str(tmp_path / 'demo')
    summary = toy.run_experiment(outdir, preset='smoke', device='cpu')
    for name in ['grid-ground-truth.png', 'grid-baseline.png', 'grid-spectral.png', 'spectra.png', 'summary.json', 'summary.md']:
        assert os.path.isfile(os.path.join(outdir, name)), name
    on_disk = json.load(open(os.path.join(outdir, 'summary.json')))
    assert on_disk['distances'].keys() == {'baseline', 'spectral'}
    for d in on_disk['distances'].values():
        assert np.isfinite(d['overall']) and d['overall'] > 0
    assert summary['spectral_closer'] == (summary['distances']['spectral']['overall'] < summary['distances']['baseline']['overall'])
    # Both models ran through the real training loop and left their run files.
    for name in ['baseline', 'spectral']:
        run_dir = os.path.join(outdir, f'run-{name}-seed0')
        assert os.path.isfile(os.path.join(run_dir, 'stats.jsonl'))
    stats = [json.loads(line) for line in open(os.path.join(outdir, 'run-spectral-seed0', 'stats.jsonl'))]
    assert any('Loss/spectral' in s for s in stats)
    grid = PIL.Image.open(os.path.join(outdir, 'grid-spectral.png'))
    assert grid.mode == 'L'

#----------------------------------------------------------------------------

def test_leaked_power_fraction_known_answers():
    gt = toy.make_checkerboards(16, 16, [2, 4], seed=0)
    assert toy.leaked_power_fraction(gt, gt) == 0.0
    # Shifted checkerboards have the same power spectrum: nothing leaks.
    assert toy.leaked_power_fraction(np.roll(gt, 1, axis=-1), gt) == pytest.approx(0, abs=1e-12)
    # White noise spreads its power evenly over all non-DC frequencies.
    noise = np.random.RandomState(0).randint(0, 256, size=[256, 1, 16, 16]).astype(np.uint8)
    power = np.abs(np.fft.fft2(gt[:, 0].astype(np.float64) / 127.5 - 1)) ** 2
    support = (power.mean(axis=0) > 1e-6 * power.mean(axis=0).max()).sum()
    assert toy.leaked_power_fraction(noise, gt) == pytest.approx(1 - support / 255, abs=0.03)

#----------------------------------------------------------------------------

def test_cli_defaults_and_errors():
    from click.testing import CliRunner
    from edm_spectral.cli import spectral_options
    runner = CliRunner()
    # The shared --spectral* options take the demo's own defaults.
    help_text = runner.invoke(toy.main, ['--help']).output
    assert '[default: fourier-amp-phase]' in help_text and '--num-seeds' in help_text
    # The experiment needs a regularizer; contradictory sizes are refused.
    result = runner.invoke(toy.main, ['--spectral=none', '--smoke'])
    assert result.exit_code != 0 and 'pick a regularizer' in result.output
    result = runner.invoke(toy.main, ['--full', '--smoke'])
    assert result.exit_code != 0 and 'mutually exclusive' in result.output
    with pytest.raises(TypeError, match='unknown defaults'):
        spectral_options(spectral_wieght='1')
