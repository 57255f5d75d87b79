"""train.py / fine_tune.py --metrics: each snapshot evaluated in memory with the sweep's code, one
JSON line per snapshot and metric in metrics.jsonl; the values are those of fid.py and the
spectrum module for the same snapshot; training itself is unchanged. With the stand-in TorchScript
detector: the values are NOT FIDs."""

import json
import os
import re

import numpy as np
import pytest
import torch

from conftest import invoke_cli, make_dataset, write_released_snapshot
import fid  # (repository root scripts)
import fine_tune
import train
from edm_spectral import detectors, metrics, spectrum

TRAIN = ['--device=cpu', '--cbase=16', '--cres=1', '--batch=4', '--duration=0.000008', '--tick=1', '--seed=3', '--lr-rampup=0', '--nosubdir']

@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp('metrics')
    detector = str(root / 'standin-detector.pt')
    torch.jit.script(detectors.StandinDetector()).save(detector)   # NOT an FID detector
    return dict(root=root, data=make_dataset(str(root / 'data')), detector=detector)

def _lines(run_dir):
    with open(os.path.join(run_dir, 'metrics.jsonl')) as f:
        return [json.loads(line) for line in f]

#----------------------------------------------------------------------------
# A toy train: two snapshots (after the first step and at the end), two metrics each.

@pytest.mark.filterwarnings('ignore:Matrix is singular')   # 4 images, 256-d features
def test_train_metrics_jsonl(setup):
    run_dir = str(setup['root'] / 'with')
    r = invoke_cli(train.main, [f'--outdir={run_dir}', f'--data={setup["data"]}', '--metrics=fid10k,spectrum', '--metrics-seeds=0-3',
        f'--metrics-detector={setup["detector"]}'] + TRAIN)
    lines = _lines(run_dir)
    assert [(l['metric'], l['cur_nimg']) for l in lines] == [('fid10k', 4), ('spectrum', 4), ('fid10k', 8), ('spectrum', 8)]
    for l in lines:
        assert set(l) >= {'results', 'metric', 'total_time', 'snapshot_pkl', 'timestamp'}
        assert os.path.isfile(os.path.join(run_dir, l['snapshot_pkl'])) and l['num_gpus'] == 1 and l['num_steps'] == 18
    assert lines[0]['snapshot_pkl'] == lines[1]['snapshot_pkl'] and lines[2]['snapshot_pkl'] == lines[3]['snapshot_pkl']
    assert lines[0]['detector'] == detectors.STANDIN_NAME and 'NOT an FID' in r.output
    assert list(lines[2]['results']) == ['fid10k'] and list(lines[3]['results']) == ['spectrum_distance', 'spectrum_distance_high']
    assert lines[0]['results'] != lines[2]['results']   # the two snapshots differ
    with open(os.path.join(run_dir, 'training_options.json')) as f:
        assert json.load(f)['snapshot_callback_kwargs']['metrics'] == ['fid10k', 'spectrum']

    # The last lines are fid.py's and the spectrum module's numbers for the final snapshot,
    # against reference statistics of the dataset.
    snapshot = os.path.join(run_dir, lines[2]['snapshot_pkl'])
    ref = str(setup['root'] / 'ref.npz')
    invoke_cli(fid.main, ['ref', f'--data={setup["data"]}', f'--dest={ref}', f'--detector={setup["detector"]}', '--workers=0', '--device=cpu'])
    r = invoke_cli(fid.main, ['calc', f'--network={snapshot}', f'--ref={ref}', '--seeds=0-3', f'--detector={setup["detector"]}',
        '--workers=0', '--device=cpu'])
    assert float(re.search(r'^FID \(stand-in[^)]*\): (\S+)$', r.stdout, re.M).group(1)) == pytest.approx(lines[2]['results']['fid10k'], rel=1e-5)
    from edm_spectral.checkpoints import load_network
    from training.sampling import generate_images
    psd = spectrum.radial_power_spectrum(generate_images(load_network(snapshot), '0-3', device='cpu'))[1]
    ref_psd = spectrum.radial_power_spectrum(spectrum.iter_dataset_images(setup['data']))[1]
    assert lines[3]['results']['spectrum_distance'] == pytest.approx(spectrum.spectral_distance(psd, ref_psd)['overall'], rel=1e-9)

    # Without --metrics the same run trains bitwise the same weights, and writes no metrics.jsonl.
    plain = str(setup['root'] / 'without')
    invoke_cli(train.main, [f'--outdir={plain}', f'--data={setup["data"]}'] + TRAIN)
    assert not os.path.exists(os.path.join(plain, 'metrics.jsonl'))
    with open(os.path.join(plain, 'training_options.json')) as f:
        assert 'snapshot_callback_kwargs' not in json.load(f)
    a, b = (load_network(os.path.join(d, lines[2]['snapshot_pkl'])).state_dict() for d in (run_dir, plain))
    assert all(torch.equal(a[k], b[k]) for k in a)

# fine_tune.py has the same options; the spectrum alone needs no detector. One step, one
# snapshot (the cadence of the snapshots is the training loop's, checked above).
def test_fine_tune_metrics(setup):
    net = write_released_snapshot(setup['root'] / 'edm-tiny-8x8-uncond-vp.pkl')
    run_dir = str(setup['root'] / 'ft')
    invoke_cli(fine_tune.main, [f'--network={net}', f'--data={setup["data"]}', f'--outdir={run_dir}', '--nosubdir', '--device=cpu',
        '--batch=4', '--duration=0.000004', '--tick=0.004', '--metrics=spectrum', '--metrics-seeds=0-1'])
    lines = _lines(run_dir)
    assert [(l['metric'], l['cur_nimg']) for l in lines] == [('spectrum', 4)]
    assert all(l['detector'] is None and l['results']['spectrum_distance'] > 0 for l in lines)

def test_metrics_options_errors(setup, tmp_path):
    assert metrics.parse_metrics('none') == [] and metrics.parse_metrics('fid10k,spectrum,fid10k') == ['fid10k', 'spectrum']
    small_ref = str(tmp_path / 'ref-32.npz')
    np.savez(small_ref, mu=np.zeros(32), sigma=np.eye(32), detector=np.array(detectors.STANDIN_NAME))
    base = [f'--outdir={tmp_path}', f'--data={setup["data"]}', '--device=cpu', '-n']
    cases = [
        (['--metrics=fid1k'], 'unknown metric(s) fid1k'),
        (['--metrics=fid10k', '--metrics-seeds=5'], 'at least 2 seeds'),
        (['--metrics=fid10k', '--metrics-seeds=a-b'], '--metrics-seeds'),
        (['--metrics=fid10k', f'--metrics-detector={tmp_path}/none.pt'], 'Detector not found'),
        (['--metrics=fid10k', '--metrics-detector=standin', f'--metrics-ref={small_ref}'], 'the detector gives 256-d features'),
        (['--metrics=fid10k', f'--metrics-ref={tmp_path}/none.npz'], 'not found'),
    ]
    for args, message in cases:
        invoke_cli(train.main, base + args, fails_with=message)
