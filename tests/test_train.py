"""Tests of training/training_loop.py and train.py: tiny real runs on the CPU."""

import glob
import importlib.util
import json
import os
import pickle
import sys

import numpy as np
import PIL.Image
import pytest
import torch

import dnnlib
import train
from edm_spectral.checkpoints import load_snapshot, load_training_state
from training import launch, snapshots, training_loop

from conftest import loop_kwargs, read_stats, tiny_ddpmpp

@pytest.fixture(scope='module')
def data(tiny_dataset):
    return tiny_dataset('tiny-8x8')

@pytest.fixture(scope='module')
def labeled_data(tiny_dataset):
    return tiny_dataset('tinycond-8x8', num_classes=3)

# The tiny network of loop_kwargs at one level, with attention: about half the modules to build,
# copy, pickle and run (the loop does not depend on the levels; tests/test_networks.py builds two).
def one_level(kwargs):
    kwargs['network_kwargs'].update(channel_mult=[1], attn_resolutions=[8])
    return kwargs

#----------------------------------------------------------------------------
# Known answers of the schedules.

def test_lr_and_ema_schedules():
    assert training_loop.learning_rate_factor(0, 10000) == 0
    assert training_loop.learning_rate_factor(5e6, 10000) == 0.5
    assert training_loop.learning_rate_factor(2e7, 10000) == 1
    assert training_loop.learning_rate_factor(0, 0) == 1 # no ramp: full rate at the first step
    # EDM's numbers for FFHQ: batch 256, half-life 500 kimg, no ramp-up.
    assert training_loop.ema_beta(0, 256, 500, None) == pytest.approx(0.5 ** (256 / 500000))
    # Ramp-up: the half-life is capped at 5% of the images seen; 0 images = no averaging.
    assert training_loop.ema_beta(1000, 4, 500, 0.05) == pytest.approx(0.5 ** (4 / 50))
    assert training_loop.ema_beta(0, 4, 500, 0.05) == 0
    assert training_loop.ema_beta(10, 4, 0, None) == 0 # half-life 0: the EMA is the raw net

#----------------------------------------------------------------------------
# One step of every preconditioner x architecture (the tick cadence: test_snapshot_and_state_cadence).

@pytest.mark.parametrize('precond', ['vp', 've', 'edm', 'ddpm'])
@pytest.mark.parametrize('arch', ['ddpmpp', 'ncsnpp', 'adm'])
def test_precond_arch_steps(tmp_path, data, precond, arch):
    run_dir = str(tmp_path / 'run')
    augment = 0.5 if (precond, arch) in [('edm', 'ddpmpp'), ('vp', 'ncsnpp')] else None
    result = training_loop.training_loop(**one_level(loop_kwargs(run_dir, data, precond=precond, arch=arch, augment=augment,
        state_dump_ticks=None, total_kimg=0.004)))
    assert result.cur_nimg == 4
    stats = read_stats(run_dir)
    assert len(stats) == 1 # tick 0 is the final tick
    assert all(np.isfinite(s['Loss/loss']['mean']) for s in stats)
    assert stats[0]['Loss/loss']['num'] == 4 * 3 * 8 * 8 # one reported value per element
    snap = load_snapshot(result.last_snapshot)
    assert type(snap['ema']).__name__ == launch.PRECONDS[precond][0].split('.')[-1]
    assert type(snap['loss_fn']).__name__ == launch.PRECONDS[precond][1].split('.')[-1]
    assert (snap['augment_pipe'] is not None) == bool(augment)
    x = torch.zeros([1, 3, 8, 8])
    assert torch.isfinite(snap['ema'](x, torch.ones([1]))).all()

#----------------------------------------------------------------------------
# N steps, stop, resume M steps == N+M steps, bitwise (RNG, data order, EMA, Adam, accumulation).

def test_resume_is_bitwise_exact(tmp_path, data):
    common = dict(augment=0.5, batch_gpu=2, ema_halflife_kimg=0.01, lr_rampup_kimg=0.01, # dropout 0.1 draws from the RNG too
        snapshot_ticks=None, state_dump_ticks=100) # a state at the end only
    run = lambda name, total_kimg, **kwargs: training_loop.training_loop(**one_level(loop_kwargs(str(tmp_path / name), data,
        total_kimg=total_kimg, **common, **kwargs)))
    full = run('full', 0.016)
    part = run('part', 0.008)
    state_path = snapshots.latest_file(part.run_dir, 'training-state', '.pt')
    rest = run('rest', 0.016, resume_state_dump=state_path)
    a = load_training_state(snapshots.latest_file(full.run_dir, 'training-state', '.pt'))
    b = load_training_state(snapshots.latest_file(rest.run_dir, 'training-state', '.pt'))
    p = load_training_state(state_path)
    assert (a['cur_nimg'], p['cur_nimg'], b['cur_nimg']) == (16, 8, 16)
    sa, sb, sp = a['net'].state_dict(), b['net'].state_dict(), p['net'].state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sp[k]) for k in sa) # the resumed run did train
    assert all(torch.equal(a['ema_state'][k], b['ema_state'][k]) for k in a['ema_state'])
    assert all(torch.equal(x, y) for x, y in zip(a['rng_states'][0]['torch'], b['rng_states'][0]['torch']))
    # The per-tick losses of the resumed run continue the uninterrupted run's.
    assert read_stats(full.run_dir)[-1]['Loss/loss']['mean'] == read_stats(rest.run_dir)[-1]['Loss/loss']['mean']

#----------------------------------------------------------------------------
# Snapshot cadence as EDM: tick 0 snapshot, no tick 0 state; final snapshot and state.

def test_snapshot_and_state_cadence(tmp_path, data):
    run_dir = str(tmp_path / 'run')
    training_loop.training_loop(**one_level(loop_kwargs(run_dir, data, total_kimg=0.004, kimg_per_tick=1, batch_size=2)))
    # Two steps: tick 0 after step 1 (snapshot only), then done (snapshot + state).
    # The final snapshot lands in the same kimg as tick 0's, so it takes the exact image count (issue 16).
    assert sorted(os.listdir(run_dir)) == ['network-snapshot-000000.004.pkl', 'network-snapshot-000000.pkl', 'stats.jsonl', 'training-state-000000.004.pt']
    assert len(read_stats(run_dir)) == 2

#----------------------------------------------------------------------------
# Graceful stop: a stop request ends the run after the current step with snapshot + state.

def test_stop_request_writes_final_state(tmp_path, data, monkeypatch):
    calls = []
    def should_stop():
        calls.append(1)
        return len(calls) >= 2
    monkeypatch.setattr(training_loop.dist, 'should_stop', should_stop)
    run_dir = str(tmp_path / 'run')
    result = training_loop.training_loop(**one_level(loop_kwargs(run_dir, data, total_kimg=1, state_dump_ticks=100, snapshot_ticks=100)))
    assert result.cur_nimg == 8
    assert load_training_state(snapshots.latest_file(run_dir, 'training-state', '.pt'))['cur_nimg'] == 8

#----------------------------------------------------------------------------
# train.py end to end: dry run, run dir naming, options file, logs, snapshot loading and
# sampling, spectral pass-through, --transfer and --resume.

# One level (--cres=1): half the network to build, pickle and load in every step of the test.
TRAIN_ARGS = ['--device=cpu', '--cbase=16', '--cres=1', '--batch=4', '--duration=0.000008', '--tick=1', '--seed=3', '--dump=1']

def test_train_cli_end_to_end(tmp_path, labeled_data, cli):
    outdir = str(tmp_path / 'runs')
    args = [f'--outdir={outdir}', f'--data={labeled_data}', '--cond=1'] + TRAIN_ARGS

    # Dry run: prints the options, creates nothing.
    res = cli(train.main, args + ['--dry-run'])
    assert 'Dry run; exiting.' in res.output and not os.path.exists(outdir)

    # Real run with a spectral term.
    spectral = ['--spectral=wavelet', '--spectral-wavelet=bior1.3', '--spectral-weight=0.5', '--spectral-levels=2']
    cli(train.main, args + spectral)
    run_dir = os.path.join(outdir, '00000-tinycond-8x8-cond-ddpmpp-edm-gpus1-batch4-fp32')
    assert sorted(os.listdir(run_dir)) == ['log.txt', 'network-snapshot-000000.008.pkl', 'network-snapshot-000000.pkl', 'stats.jsonl', 'training-state-000000.008.pt', 'training_options.json']
    with open(os.path.join(run_dir, 'training_options.json')) as f:
        c = json.load(f)
    edm_keys = ['dataset_kwargs', 'data_loader_kwargs', 'network_kwargs', 'loss_kwargs', 'optimizer_kwargs', 'augment_kwargs',
        'total_kimg', 'ema_halflife_kimg', 'batch_size', 'batch_gpu', 'loss_scaling', 'cudnn_benchmark', 'kimg_per_tick',
        'snapshot_ticks', 'state_dump_ticks', 'seed']
    assert list(c)[:len(edm_keys)] == edm_keys and list(c)[-1] == 'run_dir'
    assert list(c['dataset_kwargs']) == ['class_name', 'path', 'use_labels', 'xflip', 'cache', 'resolution', 'max_size']
    assert c['dataset_kwargs']['resolution'] == 8 and c['dataset_kwargs']['max_size'] == 16
    assert list(c['network_kwargs'])[-4:] == ['class_name', 'augment_dim', 'dropout', 'use_fp16']
    assert c['network_kwargs']['model_channels'] == 16 and c['network_kwargs']['channel_mult'] == [1]
    assert c['augment_kwargs'] == dict(class_name='training.augment.AugmentPipe', p=0.12, xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1)
    sk = c['loss_kwargs']['spectral_kwargs']
    assert (sk['kind'], sk['wavelet'], sk['weight'], sk['levels']) == ('wavelet', 'bior1.3', 0.5, 2)
    assert c['total_kimg'] == pytest.approx(0.008) and c['ema_halflife_kimg'] == 500 and c['lr_rampup_kimg'] == 10000
    assert c['ema_rampup_ratio'] == 0.05 and c['seed'] == 3

    with open(os.path.join(run_dir, 'log.txt')) as f:
        log = f.read()
    assert 'tick 0' in log and 'Exiting...' in log
    stats = read_stats(run_dir)
    for key in ['Loss/loss', 'Loss/base', 'Loss/spectral', 'Progress/kimg', 'Timing/sec_per_kimg', 'Resources/cpu_mem_gb']:
        assert key in stats[-1], key
    assert stats[-1]['Loss/spectral']['num'] == 4 # one L_S per sample

    # The snapshot: EDM's dict, loadable by plain pickle and by the safe loader; generate.py samples it.
    snap_path = snapshots.latest_file(run_dir, 'network-snapshot', '.pkl')
    with open(snap_path, 'rb') as f:
        raw = pickle.load(f)
    assert sorted(raw) == ['augment_pipe', 'dataset_kwargs', 'ema', 'loss_fn']
    assert raw['dataset_kwargs']['path'] == labeled_data and not raw['ema'].training
    safe = load_snapshot(snap_path)
    assert safe['loss_fn'].init_kwargs['spectral_kwargs']['wavelet'] == 'bior1.3'
    assert all(torch.equal(a, b) for a, b in zip(raw['ema'].state_dict().values(), safe['ema'].state_dict().values()))
    from training.sampling import generate_images
    images = generate_images(safe['ema'], [0, 1], device=torch.device('cpu'), num_steps=4)
    assert images.dtype == torch.uint8 and tuple(images.shape) == (2, 3, 8, 8)

    # ... and a stock EDM environment (no ptwt, pywt or our packages) unpickles it and runs the EMA.
    from stock_env import run_in_stock_env
    res = run_in_stock_env(f'''
        import pickle, torch
        d = pickle.load(open({snap_path!r}, 'rb'))
        x = torch.zeros([2, 3, 8, 8])
        y = d['ema'](x, torch.ones([2]), torch.eye(3)[:2])
        print('RESULT', type(d['loss_fn']).__name__, list(y.shape), bool(torch.isfinite(y).all()))
    ''', tmp_path)
    assert 'RESULT EDMLoss [2, 3, 8, 8] True' in res.stdout

    # --transfer: fresh optimizer and LR ramp from 0, so a one-step run leaves the weights
    # unchanged and its EMA equals the source bitwise.
    cli(train.main, [f'--outdir={outdir}', f'--data={labeled_data}', '--cond=1', f'--transfer={snap_path}'] + TRAIN_ARGS + ['--duration=0.000004'])
    run_dir2 = os.path.join(outdir, '00001-tinycond-8x8-cond-ddpmpp-edm-gpus1-batch4-fp32')
    with open(os.path.join(run_dir2, 'training_options.json')) as f:
        c2 = json.load(f)
    assert c2['resume_pkl'] == snap_path and c2['ema_rampup_ratio'] is None and 'resume_state_dump' not in c2
    moved = load_snapshot(snapshots.latest_file(run_dir2, 'network-snapshot', '.pkl'))['ema']
    assert all(torch.equal(a, b) for a, b in zip(safe['ema'].state_dict().values(), moved.state_dict().values()))

    # --resume: continues from the state's image count, in a new run dir, with the run's own
    # spectral term (a resume that changes it is refused; tests/test_train_failures.py).
    state_path = snapshots.latest_file(run_dir, 'training-state', '.pt')
    cli(train.main, [f'--outdir={outdir}', f'--data={labeled_data}', '--cond=1', f'--resume={state_path}', '--desc=more',
        '--device=cpu', '--cbase=16', '--cres=1', '--batch=4', '--duration=0.000016', '--tick=1', '--seed=3', '--dump=1'] + spectral)
    run_dir3 = os.path.join(outdir, '00002-tinycond-8x8-cond-ddpmpp-edm-gpus1-batch4-fp32-more')
    with open(os.path.join(run_dir3, 'training_options.json')) as f:
        c3 = json.load(f)
    assert c3['resume_state_dump'] == state_path and c3['resume_kimg'] == pytest.approx(0.008) and c3['resume_pkl'] == snap_path
    assert load_training_state(snapshots.latest_file(run_dir3, 'training-state', '.pt'))['cur_nimg'] == 16
    assert len(read_stats(run_dir3)) == 2 # 8 -> 16 images: tick 0 and the final tick

#----------------------------------------------------------------------------
# Bad options give clear messages, not tracebacks.

def test_train_cli_errors(tmp_path, data, cli, hostile):
    outdir = str(tmp_path / 'runs')
    base = [f'--outdir={outdir}', '--device=cpu', '--dry-run']
    cases = [
        ([f'--data={tmp_path}/missing.zip'], 'not found'),
        ([f'--data={data}', '--cond=1'], 'labels'),
        ([f'--data={data}', f'--resume={tmp_path}/state.pt'], 'training-state-<kimg>.pt'),
        ([f'--data={data}', f'--resume={tmp_path}/training-state-000010.pt'], 'file not found'),
        ([f'--data={data}', f'--transfer={tmp_path}/net.pkl'], 'file not found'),
        ([f'--data={data}', '--batch=6', '--batch-gpu=4'], 'must divide'),
        ([f'--data={data}', '--arch=unet'], "'unet' is not one of"),
        ([f'--data={data}', '--cres=1,x'], 'not an integer'),
        ([f'--data={data}', '--spectral=fourier', ], "'fourier' is not one of"),
        ([f'--data={data}', '--ema-rampup=-1'], 'must be >= 0'),
        ([f'--data={data}', '--device=cuda:7'], 'CUDA'),
    ]
    for args, message in cases:
        cli(train.main, base + args, fails_with=message)
    # --transfer snapshots that cannot be used fail at option parsing, before any training set-up.
    (tmp_path / 'corrupt.pkl').write_bytes(b'\x80\x04not a pickle')
    hostile.pickle()
    from training.networks import EDMPrecond
    from training.snapshots import save_snapshot
    save_snapshot(str(tmp_path / 'res16.pkl'), EDMPrecond(img_resolution=16, img_channels=3, **tiny_ddpmpp()))
    for path, message in [(tmp_path / 'corrupt.pkl', 'not a readable network snapshot'), (hostile.root / 'evil.pkl', '--trust-code'),
            (tmp_path / 'res16.pkl', 'for 16x16 images, the dataset is 8x8')]:
        res = cli(train.main, base + [f'--data={data}', f'--transfer={path}'], fails_with=message)
        assert '--transfer' in res.output, res.output
    assert not hostile.ran()

    state = tmp_path / 'training-state-000010.pt'
    state.write_bytes(b'x')
    cli(train.main, base + [f'--data={data}', f'--resume={state}', f'--transfer={state}'], fails_with='cannot be specified at the same time')

def test_parse_helpers():
    assert train.parse_int_list('1,2,5-7') == [1, 2, 5, 6, 7]
    from edm_spectral.cli import parse_ema_rampup
    assert parse_ema_rampup('none') == 'none' and parse_ema_rampup('0.1') == 0.1
    assert launch.duration_to_kimg(200) == 200000 and launch.duration_to_kimg(0.0015) == 1.5 # exact: a resume must not cut the duration to whole kimg (issue 16)
    assert launch.duration_to_kimg(0.000008) == pytest.approx(0.008) # below 1 kimg: exact, for smoke tests
    assert launch.ema_to_kimg(0.5) == 500 and launch.ema_to_kimg(0.025) == 25 and launch.ema_to_kimg(0.0125) == 12 # EDM's int()

# training/ does not import the safe loader: a run that starts from files needs the caller's readers.
def test_resume_needs_readers(tmp_path, data):
    kwargs = loop_kwargs(str(tmp_path / 'run'), data)
    for name, value in [('resume_pkl', 'x.pkl'), ('resume_state_dump', 'training-state-000000.pt')]:
        reader = 'load_snapshot' if name == 'resume_pkl' else 'load_training_state'
        with pytest.raises(ValueError, match=reader):
            training_loop.training_loop(**dict(kwargs, **{name: value, reader: None}))

#----------------------------------------------------------------------------
# The suite's one torchrun launch with two Gloo processes (conftest.gloo_runs), checked several
# ways. The processes train with a deterministic loss (conftest.DETERMINISTIC_DRIVER: the
# per-rank noise streams do not enter the comparison with one process), and run train.py
# itself as a script with the real stochastic loss and a spectral term.

# The driver's deterministic run in this process, with one thread as each torchrun process.
# The driver is imported under the module name that the loss's class name refers to.
def train_deterministic_here(driver, run_dir, data):
    spec = importlib.util.spec_from_file_location('ddp_driver', driver)
    module = importlib.util.module_from_spec(spec)
    threads = torch.get_num_threads()
    sys.modules['ddp_driver'] = module
    try:
        spec.loader.exec_module(module)
        torch.set_num_threads(1)
        module.train_deterministic(run_dir, data)
    finally:
        torch.set_num_threads(threads)
        del sys.modules['ddp_driver']

# Deterministic loss: identical weights on both ranks (checked at every snapshot by
# check_ddp_consistency on the raw net) and the same result as one process with the same
# total batch, up to float32 round-off.
def test_ddp_gloo_matches_single_process(gloo_runs, tmp_path):
    train_deterministic_here(gloo_runs['ddp_driver'], str(tmp_path / 'single'), gloo_runs['deterministic_data'])
    a = load_training_state(snapshots.latest_file(gloo_runs['ddp_run'], 'training-state', '.pt'))
    b = load_training_state(snapshots.latest_file(str(tmp_path / 'single'), 'training-state', '.pt'))
    assert a['world_size'] == 2 and b['world_size'] == 1 and a['cur_nimg'] == b['cur_nimg'] == 24
    assert len(a['rng_states']) == 2
    sa, sb = a['net'].state_dict(), b['net'].state_dict()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=1e-4, atol=1e-5)
    # The runs did move the weights away from the common initialisation (seed 0 on rank 0).
    np.random.seed(0)
    torch.manual_seed(np.random.randint(1 << 31))
    init = dnnlib.util.construct_class_by_name(class_name='training.networks.EDMPrecond', img_resolution=8, img_channels=3, label_dim=0,
        **tiny_ddpmpp(dropout=0)).state_dict()
    assert max((sa[k] - init[k]).abs().max().item() for k in sa) > 1e-3

#----------------------------------------------------------------------------
# train.py in the same two processes: the real stochastic loss with a spectral term, a random
# seed shared by the ranks, one run folder, consistent ranks at every snapshot.

def test_train_cli_torchrun_two_processes(gloo_runs):
    run_dir, = glob.glob(os.path.join(gloo_runs['train_runs'], '*'))
    assert os.path.basename(run_dir) == '00000-tiny-8x8-uncond-ncsnpp-edm-gpus2-batch8-fp32'
    with open(os.path.join(run_dir, 'training_options.json')) as f:
        c = json.load(f)
    assert isinstance(c['seed'], int) and c['batch_gpu'] == 2
    state = load_training_state(snapshots.latest_file(run_dir, 'training-state', '.pt'))
    assert state['world_size'] == 2 and state['cur_nimg'] == 16
    assert not torch.equal(state['rng_states'][0]['torch'], state['rng_states'][1]['torch']) # per-rank streams
    assert read_stats(run_dir)[-1]['Loss/spectral']['num'] == 8 # both ranks' samples are collected
    grid = PIL.Image.open(os.path.join(run_dir, 'network-snapshot-000000-grid.png')) # sampled by rank 0 alone
    assert grid.mode == 'RGB' and grid.size[0] % 8 == 0 and grid.size[0] * grid.size[1] == 4 * 8 * 8

#----------------------------------------------------------------------------
