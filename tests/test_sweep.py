"""The sweep (python -m edm_spectral.sweep): from a released-format checkpoint and a dataset zip to
a filled results.md in one command, at toy size on the CPU with the stand-in TorchScript detector
(its values are NOT FIDs); the rerun recomputes nothing; --dry-run and --print-jobs print every
command; the table's numbers from known evaluations."""

import json
import os
import re
import shutil
import sys

import numpy as np
import pytest
import torch

from conftest import GLOO_ARGS, invoke_cli, make_dataset, write_released_snapshot
import dataset_tool  # (repository root scripts)
import fid
from edm_spectral import detectors, metrics, spectrum, sweep

ROWS = 'none,wavelet-bior1.3-unweighted'   # the control and one regularized row keep the test short
EVAL = ['--seeds=0-7', '--repeats=3', '--steps=2', '--batch=8', '--device=cpu']
FINE_TUNE = ['--', '--batch=4', '--duration=0.000008', '--tick=0.004', '--snap=1', '--dump=1', '--lr-rampup=0']

@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp('sweep')
    invoke_cli(dataset_tool.main, [f'--source={make_dataset(str(root / "images"))}', f'--dest={root / "ffhq-8x8.zip"}'])
    detector = str(root / 'standin-detector.pt')
    torch.jit.script(detectors.StandinDetector()).save(detector)   # a TorchScript file, as a user's own detector would be: NOT an FID detector
    return dict(root=root, data=str(root / 'ffhq-8x8.zip'), detector=detector,
        net=write_released_snapshot(root / 'edm-tiny-8x8-uncond-vp.pkl'))

def _run(args, **kwargs):
    return invoke_cli(sweep.cmdline, ['run'] + args, **kwargs)

#----------------------------------------------------------------------------
# One command from checkpoint + zip to results.md (run once for the tests below).

# The first row's fine-tune is a real fine_tune.py process; the second's runs the same command
# line through fine_tune.main in this process (one torch start-up fewer).
@pytest.fixture(scope='module')
def swept(setup):
    import subprocess
    import fine_tune
    outdir = str(setup['root'] / 'out')
    args = [f'--network={setup["net"]}', f'--data={setup["data"]}', f'--outdir={outdir}', f'--detector={setup["detector"]}',
        f'--only={ROWS}'] + EVAL + FINE_TUNE
    commands, real_run = [], subprocess.run
    def run_second_in_process(cmd, **kwargs):
        commands.append(cmd)
        if len(commands) == 1:
            return real_run(cmd, **kwargs)
        assert cmd[:2] == [sys.executable, sweep.fine_tune_script()] and not kwargs, cmd
        return subprocess.CompletedProcess(cmd, invoke_cli(fine_tune.main, cmd[2:]).exit_code)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(sweep.subprocess, 'run', run_second_in_process)
        _run(args)
    assert len(commands) == 2
    with open(os.path.join(outdir, 'results.json')) as f:
        results = json.load(f)
    with open(os.path.join(outdir, 'results.md')) as f:
        md = f.read()
    return dict(outdir=outdir, args=args, results=results, md=md)

# The rows, and their numbers: each seed set's FID is what fid.py calc --network gives for the
# fine-tuned snapshot, the spectral distance the spectrum module's, averaged over the seed sets.
@pytest.mark.filterwarnings('ignore:Matrix is singular')   # 8 images, 256-d features
def test_sweep_end_to_end(setup, swept):
    outdir, rows = swept['outdir'], swept['results']['rows']
    assert [row['row'] for row in rows] == ['none', 'wavelet-bior1.3-unweighted'] and all(row['done'] for row in rows)
    assert all(row['detector'] == detectors.STANDIN_NAME for row in rows)
    control, reg = rows
    assert reg['control_fid'] == control['fid_mean'] and reg['fid_diff'] == pytest.approx(reg['fid_mean'] - control['fid_mean'])
    assert len(reg['fids']) == 3 and len(set(reg['fids'])) == 3 and reg['fid_min'] == min(reg['fids'])
    assert reg['fid_std'] == pytest.approx(np.std(reg['fids'], ddof=1))
    assert reg['relative_l2'] > 0   # the fine-tune moved the weights

    # The table: stand-in label, one line per row, with the run folders.
    md = swept['md']
    assert 'NOT FIDs' in md
    table = [l for l in md.splitlines() if l.startswith('| tiny-8x8-uncond-vp | ')]
    assert len(table) == 3   # two rows plus the control -> best line
    assert 'Wavelet (bior1.3) | unweighted' in table[1] and '`runs/tiny-8x8-uncond-vp/wavelet-bior1.3-unweighted`' in table[1]
    assert f'{reg["fid_mean"]:.3f} +- {reg["fid_std"]:.3f}' in table[1] and f'{reg["fid_diff"]:+.3f}' in table[1]

    with open(os.path.join(outdir, reg['run_dir'], 'sweep-eval.json')) as f:
        snapshot = os.path.join(outdir, reg['run_dir'], json.load(f)['snapshot'])   # the last one, as weight-movement.json names it
    r = invoke_cli(fid.main, ['calc', f'--network={snapshot}', f'--ref={os.path.join(outdir, "ref.npz")}', '--seeds=0-7',
        '--repeats=3', '--steps=2', '--batch=8', f'--detector={setup["detector"]}', '--workers=0', '--device=cpu'])
    printed = [float(v) for v in re.findall(r'of seeds [0-9-]+: ([-+0-9.e]+)$', r.output, re.M)]
    assert printed == pytest.approx(reg['fids'], rel=1e-5)

    from edm_spectral.checkpoints import load_network
    from training.sampling import generate_images
    net = load_network(snapshot)
    ref_psd = spectrum.radial_power_spectrum(spectrum.iter_dataset_images(setup['data']))[1]
    expected = np.mean([spectrum.spectral_distance(spectrum.radial_power_spectrum(generate_images(net, seeds, device='cpu',
        max_batch_size=8, num_steps=2))[1], ref_psd)['overall'] for seeds in ['0-7', '8-15', '16-23']])
    assert reg['spectrum_distance'] == pytest.approx(expected, rel=1e-9)

# Rerun: nothing is fine-tuned or evaluated again, the table is the same. A changed evaluation
# setting re-evaluates, without fine-tuning again.
@pytest.mark.filterwarnings('ignore:Matrix is singular')
def test_sweep_rerun_recomputes_nothing(swept, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError('recomputed a finished row')
    monkeypatch.setattr(sweep.subprocess, 'run', refuse)
    with monkeypatch.context() as m:
        m.setattr(metrics, 'evaluate_network', refuse)
        r = _run(swept['args'])
    assert '(2 finished, 0 to do)' in r.output
    with open(os.path.join(swept['outdir'], 'results.md')) as f:
        assert f.read() == swept['md']

    _run([a if a != '--repeats=3' else '--repeats=2' for a in swept['args']])
    with open(os.path.join(swept['outdir'], 'results.json')) as f:
        again = json.load(f)['rows'][1]
    assert again['fids'] == swept['results']['rows'][1]['fids'][:2]

# The eval step as a torchrun job (the suite's shared two-process Gloo launch, conftest.gloo_runs,
# on a tiny snapshot): two processes give the numbers of one, the same command in this process.
@pytest.mark.filterwarnings('ignore:Matrix is singular')
def test_sweep_eval_two_processes(gloo_runs, tmp_path):
    run_dir = str(tmp_path / 'run')
    shutil.copytree(gloo_runs['sweep_run'], run_dir)
    os.remove(os.path.join(run_dir, 'sweep-eval.json'))
    invoke_cli(sweep.cmdline, GLOO_ARGS['sweep_eval'] + [f'--run-dir={run_dir}', *gloo_runs['sweep_inputs']])
    (one, two) = (json.load(open(os.path.join(d, 'sweep-eval.json'))) for d in (run_dir, gloo_runs['sweep_run']))
    assert len(two['fids']) == 3 and len(set(two['fids'])) == 3
    assert two['fids'] == pytest.approx(one['fids'], rel=1e-9)
    assert [d['overall'] for d in two['spectrum_distances']] == pytest.approx([d['overall'] for d in one['spectrum_distances']], rel=1e-9)

#----------------------------------------------------------------------------
# --dry-run prints the prepare step and, for every row, its fine-tune and its evaluation;
# it runs and creates nothing. An interrupted fine-tune resumes from its training state.

def test_sweep_dry_run(setup, tmp_path):
    outdir = str(tmp_path / 'dry')
    ve = str(setup['root'] / 'edm-tiny-8x8-uncond-ve.pkl')   # need not exist for a dry run
    args = [f'--network={setup["net"]}', f'--network={ve}', f'--data={setup["data"]}', f'--outdir={outdir}', '--nproc=8',
        '--dry-run', '--', '--duration=0.5']
    r = _run(args)
    lines = r.output.splitlines()
    fine_tunes = [l for l in lines if l.startswith('[')]
    evals = [l for l in lines if l.strip().startswith('eval ')]
    assert len(fine_tunes) == len(evals) == 2 * 9
    assert sum(l.startswith('prepare: ') for l in lines) == 1
    assert all('--standalone --nproc_per_node=8' in l and '--duration=0.5' in l and '--nosubdir' in l for l in fine_tunes)
    assert all('--nproc_per_node=8 -m edm_spectral.sweep eval' in l and '--repeats=3' in l for l in evals)
    assert sum('--spectral=none' in l for l in fine_tunes) == 2 and sum('--spectral-weight=weighted' in l for l in fine_tunes) == 8
    assert sum('--spectral-weight=1' in l for l in fine_tunes) == 8 and sum('--spectral-wavelet=bior1.3' in l for l in fine_tunes) == 4
    assert sum('uncond-ve.pkl' in l for l in fine_tunes) == 9
    assert len({re.search(r'--outdir=(\S+)', l).group(1) for l in fine_tunes}) == 18   # one run folder per row
    assert not os.path.exists(outdir)

    # An interrupted fine-tune: the next run resumes it from its newest training state.
    run_dir = os.path.join(outdir, 'runs', 'tiny-8x8-uncond-vp', 'fourier-amp-weighted')
    os.makedirs(run_dir)
    for age, kimg in [(20, 2), (10, 0)]:   # the last written, not the last by name
        path = os.path.join(run_dir, f'training-state-{kimg:06d}.pt')
        open(path, 'w').close()
        os.utime(path, (1e9 - age, 1e9 - age))
    r = _run(args)
    resumed = [l for l in r.output.splitlines() if '--resume=' in l]
    assert len(resumed) == 1 and 'fourier-amp-weighted' in resumed[0] and resumed[0].endswith('training-state-000000.pt --duration=0.5')

def test_sweep_print_jobs(setup, tmp_path):
    r = _run([f'--network={setup["net"]}', f'--data={setup["data"]}', f'--outdir={tmp_path / "jobs"}', '--nproc=8', '--print-jobs',
        '--ref=https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/ffhq-64x64.npz'])
    jobs = [l for l in r.output.splitlines() if not l.startswith('#')]
    assert len(jobs) == 1 + 9   # prepare (the dataset spectrum), then one job per row
    assert 'edm_spectral.sweep prepare' in jobs[0] and '--ref=https://' in jobs[0]
    assert all(' fine_tune.py ' in j and ' && ' in j and 'edm_spectral.sweep eval' in j for j in jobs[1:])
    assert not os.path.exists(tmp_path / 'jobs')

#----------------------------------------------------------------------------
# The table from known evaluations: mean +- sample std, min, control and difference.

def test_results_table_known_answer(tmp_path):
    rows = sweep.plan_rows(['a/edm-x-vp.pkl'], str(tmp_path), only=['none', 'fourier-amp-weighted', 'wavelet-haar-unweighted'])
    for row, fids in zip(rows, [[2.0, 2.2, 2.1], [1.9, 2.0, 2.1], None]):
        if fids is not None:
            os.makedirs(row.run_dir)
            with open(os.path.join(row.run_dir, 'sweep-eval.json'), 'w') as f:
                json.dump(dict(fids=fids, spectrum_distances=[dict(overall=0.1 * k, high=0.2 * k) for k in (1, 2, 3)], num_steps=40), f)
    summary = sweep.summarize(rows, str(tmp_path))
    control, reg, pending = summary
    assert control['fid_mean'] == pytest.approx(2.1) and control['fid_std'] == pytest.approx(0.1) and control['fid_min'] == 2.0
    assert reg['fid_mean'] == pytest.approx(2.0) and reg['control_fid'] == pytest.approx(2.1) and reg['fid_diff'] == pytest.approx(-0.1)
    assert reg['spectrum_distance'] == pytest.approx(0.2) and reg['spectrum_distance_high'] == pytest.approx(0.4)
    assert not pending['done']
    md = sweep.format_results_md(summary, dict(seeds='0-49999', repeats=3, detector='inception', ref='ref.npz'), standin=False)
    assert '| x-vp | Fourier amplitude | weighted | 2.000 +- 0.100 | 1.900 | 2.100 | -0.100 | 0.2000 / 0.4000 |' in md
    assert '| x-vp | Wavelet (Haar) | unweighted | (pending) |' in md
    assert '| x-vp | 2.100 | 2.000 | -0.100 | Fourier amplitude, weighted |' in md
    assert 'NOT' not in md

def test_sweep_errors(setup, tmp_path):
    base = [f'--network={setup["net"]}', f'--data={setup["data"]}', f'--outdir={tmp_path / "e"}', '--dry-run']
    cases = [
        (base + ['--only=none,fourier'], 'unknown row(s) fourier'),
        (base + ['--', '--spectral=wavelet'], '--spectral is set by the sweep'),
        (base + ['--seeds=3'], 'at least 2 seeds'),
        (base + [f'--network={tmp_path}/edm-tiny-8x8-uncond-vp.pkl'], 'different file names'),
    ]
    for args, message in cases:
        _run(args, fails_with=message)
