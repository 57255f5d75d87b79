"""The checkerboard experiment: data generator and metric known answers, the quiet console,
the figures' grid, the search's pick, and a smoke-size end-to-end run."""

import io
import json
import os

import numpy as np
import PIL.Image
import pytest
import torch

from edm_spectral import toy, toy_search
from edm_spectral.images import make_captioned_grid

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

def test_all_checkerboards_holds_every_offset_once():
    boards = toy.all_checkerboards(8, [2])
    assert boards.shape == (16, 1, 8, 8)
    # Offsets (dy, dx) and (dy + 2, dx) give the inverted board, (dy + 2, dx + 2) the same one.
    distinct = {b.tobytes() for b in boards}
    assert len(distinct) == 8
    data = toy.make_checkerboards(20, 8, [2], seed=0)
    assert {d.tobytes() for d in data} <= distinct

def test_image_folder_layout(tmp_path):
    images = toy.make_checkerboards(3, 8, [2], seed=0)
    toy.write_image_folder(images, str(tmp_path))
    assert json.load(open(tmp_path / 'dataset.json')) == {'labels': None}
    for idx in range(3):
        png = np.asarray(PIL.Image.open(tmp_path / f'00000/img{idx:08d}.png'))
        assert np.array_equal(png, images[idx, 0])

#----------------------------------------------------------------------------
# Metric known answers. Images are uint8; x / 127.5 - 1 maps 0 and 255 to -1 and 1.

def _noise(n, res, seed=0):
    return np.random.RandomState(seed).randint(0, 256, size=[n, 1, res, res]).astype(np.uint8)

def test_leaked_power_fraction_known_answers():
    gt = toy.make_checkerboards(16, 16, [2, 4], seed=0)
    assert toy.leaked_power_fraction(gt, gt) == 0.0
    # Shifted checkerboards have the same power spectrum: nothing leaks.
    assert toy.leaked_power_fraction(np.roll(gt, 1, axis=-1), gt) == pytest.approx(0, abs=1e-12)
    # White noise spreads its power evenly over all non-DC frequencies.
    noise = _noise(256, 16)
    power = np.abs(np.fft.fft2(gt[:, 0].astype(np.float64) / 127.5 - 1)) ** 2
    support = (power.mean(axis=0) > 1e-6 * power.mean(axis=0).max()).sum()
    assert toy.leaked_power_fraction(noise, gt) == pytest.approx(1 - support / 255, abs=0.03)

def test_lattice_support_is_the_odd_harmonic_lattice():
    gt = toy.make_checkerboards(64, 16, [4], seed=0)
    support = toy.lattice_support(gt).numpy()
    # Checker size 4 at 16 px: period 8, odd harmonics at +-2 and +-6 cycles along each axis.
    k = np.arange(16) - 8
    on_axis = np.isin(np.abs(k), [2, 6])
    assert np.array_equal(support, on_axis[:, None] & on_axis[None, :])

def test_lattice_power_error_known_answers():
    gt = toy.make_checkerboards(64, 16, [2, 4], seed=0)
    assert toy.lattice_power_error(gt, gt) == 0.0
    # The same checker sizes in another mix: only the mixture proportions differ.
    single = toy.make_checkerboards(64, 16, [4], seed=1)
    assert toy.lattice_power_error(single, toy.make_checkerboards(64, 16, [4], seed=2)) == pytest.approx(0, abs=1e-12)
    # Half the contrast is a quarter of the power: the error is 3/4, and nothing leaks.
    x = torch.as_tensor(gt).to(torch.float64) / 127.5 - 1
    assert toy.lattice_power_error(0.5 * x, gt) == pytest.approx(0.75, abs=1e-12)
    assert toy.leaked_power_fraction(0.5 * x, gt) == pytest.approx(0, abs=1e-12)
    # A blank set has no power anywhere.
    assert toy.lattice_power_error(torch.zeros(4, 1, 16, 16, dtype=torch.float64), gt) == 1.0
    # Noise puts a small fraction of its power on the few lattice frequencies: error near 1.
    assert toy.lattice_power_error(_noise(256, 16), gt) > 0.9

def test_nearest_checkerboard_error_known_answers():
    sizes = [2, 4]
    gt = toy.make_checkerboards(32, 16, sizes, seed=0)
    assert torch.equal(toy.nearest_checkerboard_error(gt, sizes), torch.zeros(32, dtype=torch.float64))
    # Three flipped pixels: each is off by 2, over 256 pixels.
    flipped = gt.copy()
    flipped[:, 0, [1, 5, 9], [3, 3, 12]] ^= 255
    assert torch.allclose(toy.nearest_checkerboard_error(flipped, sizes), torch.full([32], 6 / 256, dtype=torch.float64))
    # Half contrast: every pixel is 0.5 off; an all-grey image is 1 off everywhere.
    x = torch.as_tensor(gt).to(torch.float64) / 127.5 - 1
    assert torch.allclose(toy.nearest_checkerboard_error(0.5 * x, sizes), torch.full([32], 0.5, dtype=torch.float64))
    assert toy.nearest_checkerboard_error(torch.zeros(1, 1, 16, 16), sizes).item() == 1.0
    # A checker size not in the data is no valid sample.
    other = toy.make_checkerboards(8, 16, [3], seed=0)
    assert (toy.nearest_checkerboard_error(other, sizes) > 0.3).all()
    with pytest.raises(ValueError, match='square grayscale'):
        toy.nearest_checkerboard_error(np.zeros([2, 3, 16, 16], dtype=np.uint8), sizes)

def test_evaluate_scores_ideal_boards_and_noise():
    sizes = [2, 4]
    gt = toy.make_checkerboards(256, 16, sizes, seed=0)
    ideal = toy.evaluate(toy.make_checkerboards(256, 16, sizes, seed=5), gt, sizes)
    assert ideal['valid'] == 1.0 and ideal['board_error'] == 0.0
    assert ideal['leaked_power'] == pytest.approx(0, abs=1e-12)
    assert ideal['lattice_error'] < 0.15 # only the mix of checker sizes differs between draws
    noise = toy.evaluate(_noise(256, 16), gt, sizes)
    assert noise['valid'] == 0.0 and noise['leaked_power'] > 0.8 and noise['lattice_error'] > 0.9
    # Half of the set valid, half noise.
    mixed = toy.evaluate(np.concatenate([gt[:128], _noise(128, 16)]), gt, sizes)
    assert mixed['valid'] == 0.5

def test_paired_differences_pair_by_seed_and_count_strict_wins():
    base = [dict(seed=s, valid=v, leaked_power=l, lattice_error=e) for s, v, l, e in [(0, 0.5, 0.2, 0.3), (1, 0.6, 0.1, 0.3), (2, 0.7, 0.3, 0.3)]]
    spec = [dict(seed=s, valid=v, leaked_power=l, lattice_error=e) for s, v, l, e in [(2, 0.9, 0.1, 0.3), (0, 0.6, 0.3, 0.2), (1, 0.6, 0.05, 0.4)]]
    p = toy.paired_differences(base, spec)
    assert p['valid']['better'] == 2 and p['valid']['seeds'] == 3        # seed 1 ties
    assert p['valid']['mean'] == pytest.approx(0.1)
    assert p['leaked_power']['better'] == 2                              # lower is better
    assert p['lattice_error']['better'] == 1
    assert p['valid']['per_seed'] == pytest.approx([0.2, 0.1, 0.0])      # in the spectral rows' order
    with pytest.raises(ValueError, match='both a baseline and a spectral run'):
        toy.paired_differences(base, [dict(spec[0], seed=9)])

#----------------------------------------------------------------------------

def test_captioned_grid_has_gutters_enlarged_cells_and_a_caption():
    images = toy.make_checkerboards(5, 4, [1], seed=0)
    grid = np.asarray(make_captioned_grid(images, grid_w=3, zoom=2, gutter=1, gutter_value=128))
    assert grid.shape == (1 + 2 * 9, 1 + 3 * 9)                     # 2 rows x 3 cells of 8 px, 1 px lines
    assert (grid[0] == 128).all() and (grid[:, 9] == 128).all() and (grid[9] == 128).all()
    assert np.array_equal(grid[10:18, 10:18], images[4, 0].repeat(2, axis=0).repeat(2, axis=1))
    assert (grid[10:18, 19:27] == 128).all()                        # the unused cell
    captioned = make_captioned_grid(images, grid_w=3, zoom=2, gutter=1, caption='baseline, seed 0')
    assert captioned.mode == 'L' and captioned.height > grid.shape[0] and captioned.width >= grid.shape[1]
    assert np.array_equal(np.asarray(captioned)[:grid.shape[0], :grid.shape[1]], grid)
    rgb = make_captioned_grid(np.repeat(images, 3, axis=1), zoom=1, gutter=2, caption='x')
    assert rgb.mode == 'RGB'
    with pytest.raises(ValueError, match='zoom'):
        make_captioned_grid(images, zoom=0)

def test_run_console_logs_everything_and_shows_one_line(tmp_path):
    stream = io.StringIO()
    log = tmp_path / 'log.txt'
    with toy.RunConsole(str(log), 'baseline (seed 3)', total_kimg=2, stream=stream) as console:
        print('Constructing network...')
        print('tick 1     kimg 1.0       time 2s')
        console.show('sample', 64, 128, 'images')
    text = log.read_text()
    assert 'Constructing network...' in text and 'tick 1' in text
    out = stream.getvalue()
    assert out.count('\n') == 1 and 'Constructing' not in out
    assert out.startswith('baseline (seed 3)') and 'sample' in out and '64/128 images' in out and 'done in' in out
    with pytest.raises(RuntimeError):
        with toy.RunConsole(str(log), 'spectral (seed 3)', total_kimg=2, stream=stream):
            raise RuntimeError('boom')
    assert 'FAILED, see' in stream.getvalue()

def test_search_pick_prefers_consistent_variants():
    def result(name, wins, valid_gain):
        paired = {key: dict(better=w, seeds=2, mean=0.0) for (key, _, _), w in zip(toy.METRICS, wins)}
        paired['valid']['mean'] = valid_gain
        return dict(setting='s', variant=name, paired=paired)
    results = [result('big-gain-mixed', [2, 2, 1], 0.3), result('consistent-small', [2, 2, 2], 0.01), result('consistent-large', [2, 2, 2], 0.05)]
    best, consistent = toy_search.pick(results)
    assert best['variant'] == 'consistent-large' and consistent
    best, consistent = toy_search.pick(results[:1] + [result('fewer-wins', [2, 1, 1], 0.5)])
    assert best['variant'] == 'big-gain-mixed' and not consistent
    assert set(toy_search.PLAN) <= set(toy_search.SETTINGS)
    assert all(v in toy_search.VARIANTS for variants in toy_search.PLAN.values() for v in variants)

#----------------------------------------------------------------------------

# The smoke preset, shortened further (2 training steps, 4 sampling steps): every output, the
# quiet console, and a run folder that train_and_sample reuses for the same settings only.
SHORT = dict(kimg=0.016, steps=4)

def test_smoke_run_writes_every_output_and_keeps_the_console_quiet(tmp_path, capsys, monkeypatch):
    outdir = str(tmp_path / 'demo')
    summary = toy.run_experiment(outdir, preset='smoke', num_seeds=2, device='cpu', overrides=SHORT)
    for name in ['grid-ground-truth.png', 'grid-baseline.png', 'grid-spectral.png', 'samples.png', 'spectra.png', 'summary.json', 'summary.md']:
        assert os.path.isfile(os.path.join(outdir, name)), name
    on_disk = json.load(open(os.path.join(outdir, 'summary.json')))
    assert on_disk['metrics'].keys() == {'baseline', 'spectral'} and on_disk['config']['kimg'] == SHORT['kimg']
    assert on_disk['ground_truth']['valid'] == 1.0 and on_disk['ground_truth']['leaked_power'] == pytest.approx(0, abs=1e-12)
    for rows in on_disk['per_seed'].values():
        assert [row['seed'] for row in rows] == [0, 1]
        for row in rows:
            assert 0 <= row['valid'] <= 1 and 0 <= row['leaked_power'] <= 1 and np.isfinite(row['lattice_error'])
    assert all(p['seeds'] == 2 and 0 <= p['better'] <= 2 for p in on_disk['paired'].values())
    # The console shows one line per run and the summary table, the training logs stay in the run folders.
    out = capsys.readouterr().out
    assert 'Constructing network' not in out and 'tick 0' not in out
    assert sum('done in' in line for line in out.splitlines()) == 4
    assert '**spectral - baseline** (paired)' in out and 'spectral better in |' in out and 'of 2 seeds' in out
    # Both models ran through the real training loop and left their run files.
    for name in ['baseline', 'spectral']:
        run_dir = os.path.join(outdir, f'run-{name}-seed0')
        assert os.path.isfile(os.path.join(run_dir, 'stats.jsonl'))
        assert 'Constructing network' in open(os.path.join(run_dir, 'log.txt')).read()
    stats = [json.loads(line) for line in open(os.path.join(outdir, 'run-spectral-seed0', 'stats.jsonl'))]
    assert any('Loss/spectral' in s for s in stats)
    # Every run keeps its samples.
    assert np.load(os.path.join(outdir, 'run-baseline-seed1', 'samples.npy')).shape == (8, 1, 16, 16)
    grid = PIL.Image.open(os.path.join(outdir, 'grid-spectral.png'))
    assert grid.mode == 'L' and grid.width == 2 + 8 * (3 * 16 + 2)

    # A run folder of the same settings is read back: the samples the experiment scored.
    cfg = toy.make_config('smoke', SHORT)
    data_dir, run_dir = os.path.join(outdir, 'data'), os.path.join(outdir, 'run-baseline-seed0')
    gt = toy.make_checkerboards(cfg.num_images, cfg.resolution, cfg.checker_sizes, seed=0)
    again = toy.train_and_sample(run_dir, data_dir, cfg, None, 0, 'cpu', label='baseline', reuse=True)
    assert 'reused' in capsys.readouterr().out
    assert dict(toy.evaluate(again, gt, cfg.checker_sizes), seed=0) == on_disk['per_seed']['baseline'][0]
    assert [json.load(open(os.path.join(outdir, f'run-baseline-seed{seed}', 'run.json')))['seed'] for seed in (0, 1)] == [0, 1]
    # Another seed retrains (the training itself ran above: stopped where it starts).
    class Retrains(Exception):
        pass
    def train_ddpm(run_dir, data_dir, cfg, spectral_kwargs, seed, device):
        raise Retrains(seed)
    monkeypatch.setattr(toy, 'train_ddpm', train_ddpm)
    with pytest.raises(Retrains, match='^1$'):
        toy.train_and_sample(run_dir, data_dir, cfg, None, 1, 'cpu', label='baseline', reuse=True)
    assert 'reused' not in capsys.readouterr().out

#----------------------------------------------------------------------------

def test_cli_defaults_and_errors():
    from click.testing import CliRunner
    from edm_spectral.cli import spectral_options
    runner = CliRunner()
    # The shared --spectral* options take the demo's own defaults.
    help_text = runner.invoke(toy.main, ['--help']).output
    assert '[default: fourier-amp-phase]' in help_text and '--num-seeds' in help_text and '--data-seed' in help_text
    # The experiment needs a regularizer; contradictory sizes are refused.
    result = runner.invoke(toy.main, ['--spectral=none', '--preset=smoke'])
    assert result.exit_code != 0 and 'pick a regularizer' in result.output
    for sizes in [['--full', '--smoke'], ['--preset=full', '--smoke']]: # the old flags are aliases of --preset
        result = runner.invoke(toy.main, sizes)
        assert result.exit_code != 0 and 'mutually exclusive' in result.output
    assert '--smoke' not in help_text and '--preset [demo|full|smoke]' in help_text
    with pytest.raises(TypeError, match='unknown defaults'):
        spectral_options(spectral_wieght='1')
    result = runner.invoke(toy_search.main, ['--only=nope'])
    assert result.exit_code != 0 and 'unknown settings' in result.output
    result = runner.invoke(toy_search.main, ['--seeds=1,x'])
    assert result.exit_code != 0 and 'comma-separated integers' in result.output
