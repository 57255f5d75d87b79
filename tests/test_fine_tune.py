"""Tests of fine_tune.py: end to end from a small snapshot in the released format."""

import json
import os
import pickle

import pytest
import torch

import fine_tune
from edm_spectral.checkpoints import load_training_state
from training import snapshots

from conftest import make_dataset, read_stats, write_released_snapshot

#----------------------------------------------------------------------------
# A small snapshot in the released format (conftest.write_released_snapshot) and a dataset.

@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp('ft')
    data = make_dataset(str(root / 'ffhq-8x8'))
    net = write_released_snapshot(root / 'edm-tiny-8x8-uncond-vp.pkl')
    return root, data, net

FT_ARGS = ['--device=cpu', '--batch=4', '--tick=0.004', '--snap=1', '--dump=1']

def only_run_dir(outdir):
    dirs = sorted(os.listdir(outdir))
    return [os.path.join(outdir, d) for d in dirs]

#----------------------------------------------------------------------------
# Weight movement: known answers.

def test_weight_movement_known_answer():
    a = torch.nn.Linear(3, 2)
    b = torch.nn.Linear(3, 2)
    with torch.no_grad():
        a.weight.copy_(torch.tensor([[3., 0, 0], [0, 4, 0]]))
        a.bias.copy_(torch.tensor([0., 0]))
        b.weight.copy_(torch.tensor([[3., 0, 0], [0, 4, 0.5]]))
        b.bias.copy_(torch.tensor([0., 0]))
    m = fine_tune.weight_movement(a, b)
    assert m.relative_l2 == pytest.approx(0.5 / 5)
    assert m.max_tensor_relative_l2 == pytest.approx(0.1) and m.max_tensor_name == 'weight'
    assert (m.num_tensors, m.num_tensors_changed) == (2, 1)
    assert fine_tune.weight_movement(a, a).relative_l2 == 0

def test_auto_preset():
    assert fine_tune.auto_preset(['https://x/edm-cifar10-32x32-cond-vp.pkl'], 32)[0] == 'cifar10'
    assert fine_tune.auto_preset(['edm-afhqv2-64x64-uncond-ve.pkl'], 64)[0] == 'afhqv2'
    assert fine_tune.auto_preset(['my.pkl', 'datasets/ffhq-64x64.zip'], 64)[0] == 'ffhq'
    assert fine_tune.auto_preset(['my.pkl'], 32)[0] == 'cifar10'
    assert fine_tune.PRESETS['afhqv2'].dropout == 0.25 and fine_tune.PRESETS['cifar10'].lr == 2e-4

#----------------------------------------------------------------------------
# End to end: config from the checkpoint and the preset, spectral pass-through, files,
# weight-movement report; then an exact resume from the state after two of its four steps.

def test_fine_tune_end_to_end_and_resume(setup, cli):
    root, data, net = setup
    outdir = str(root / 'runs')
    spectral = ['--spectral=fourier-amp-phase', '--spectral-weight=weighted']
    res = cli(fine_tune.main, [f'--network={net}', f'--data={data}', f'--outdir={outdir}', '--duration=0.000016'] + FT_ARGS + spectral)
    run_dir, = only_run_dir(outdir)
    assert os.path.basename(run_dir) == '00000-ffhq-8x8-uncond-ddpmpp-edm-gpus1-batch4-fp32-ft-fourier-amp-phase-weighted'
    assert sorted(os.listdir(run_dir)) == ['log.txt', 'network-snapshot-000000.008.pkl', 'network-snapshot-000000.012.pkl', 'network-snapshot-000000.016.pkl',
        'network-snapshot-000000.pkl', 'stats.jsonl', 'training-state-000000.008.pt', 'training-state-000000.012.pt', 'training-state-000000.016.pt',
        'training_options.json', 'weight-movement.json']

    with open(os.path.join(run_dir, 'training_options.json')) as f:
        c = json.load(f)
    nk = c['network_kwargs']
    assert nk['class_name'] == 'training.networks.EDMPrecond' and nk['model_channels'] == 16 and nk['augment_dim'] == 9
    assert nk['dropout'] == 0.05 and 'img_resolution' not in nk # FFHQ preset (from the dataset name)
    assert c['optimizer_kwargs']['lr'] == 5e-5 and c['augment_kwargs']['p'] == 0.15 and c['augment_kwargs']['xflip'] == 1e8
    assert c['loss_kwargs']['class_name'] == 'training.loss.EDMLoss' and c['loss_kwargs']['P_mean'] == -1.0
    assert c['loss_kwargs']['spectral_kwargs']['kind'] == 'fourier-amp-phase'
    assert c['resume_pkl'] == net and c['lr_rampup_kimg'] == 10 and c['ema_halflife_kimg'] == 25 and c['ema_rampup_ratio'] == 0.05
    assert 'Loss/spectral' in read_stats(run_dir)[-1]

    # The report matches a recomputation from the files.
    with open(os.path.join(run_dir, 'weight-movement.json')) as f:
        move = json.load(f)
    from edm_spectral.checkpoints import load_snapshot
    ref = load_snapshot(net)['ema'].state_dict()
    new = load_snapshot(snapshots.latest_file(run_dir, 'network-snapshot', '.pkl'))['ema'].state_dict()
    diff = sum((new[k].double() - ref[k].double()).square().sum() for k in ref) ** 0.5
    norm = sum(ref[k].double().square().sum() for k in ref) ** 0.5
    assert move['relative_l2'] == pytest.approx((diff / norm).item(), rel=1e-9) and move['relative_l2'] > 0
    assert move['export'] == 'ema' and move['cur_nimg'] == 16
    assert 'relative L2 of the difference' in res.output
    with open(os.path.join(run_dir, 'log.txt')) as f:
        assert 'relative L2 of the difference' in f.read()

    # Resume after two steps for two more == the four uninterrupted steps, bitwise.
    state = os.path.join(run_dir, 'training-state-000000.008.pt')
    cli(fine_tune.main, [f'--network={net}', f'--data={data}', f'--outdir={outdir}', '--duration=0.000016', f'--resume={state}', '--desc=resumed'] + FT_ARGS + spectral)
    _, resumed = only_run_dir(outdir)
    a = load_training_state(snapshots.latest_file(resumed, 'training-state', '.pt'))
    b = load_training_state(snapshots.latest_file(run_dir, 'training-state', '.pt'))
    assert a['cur_nimg'] == b['cur_nimg'] == 16
    assert all(torch.equal(x, y) for x, y in zip(a['net'].state_dict().values(), b['net'].state_dict().values()))
    assert all(torch.equal(a['ema_state'][k], b['ema_state'][k]) for k in a['ema_state'])

#----------------------------------------------------------------------------
# --export=raw stores the trained net itself, which moved further than the EMA would.

def test_fine_tune_export_raw(setup, cli):
    root, data, net = setup
    outdir = str(root / 'raw')
    cli(fine_tune.main, [f'--network={net}', f'--data={data}', f'--outdir={outdir}', '--duration=0.000008', '--export=raw', '--lr-rampup=0',
        '--ema=1', '--ema-rampup=none', '--preset=cifar10', '--augment=0'] + FT_ARGS) # --ema in Mimg, as train.py's
    run_dir, = only_run_dir(outdir)
    state = load_training_state(snapshots.latest_file(run_dir, 'training-state', '.pt'))
    from edm_spectral.checkpoints import load_snapshot
    exported = load_snapshot(snapshots.latest_file(run_dir, 'network-snapshot', '.pkl'))['ema']
    assert all(torch.equal(x, y) for x, y in zip(exported.state_dict().values(), state['net'].state_dict().values()))
    with open(os.path.join(run_dir, 'training_options.json')) as f:
        c = json.load(f)
    assert c['augment_kwargs']['p'] == 0 # the augment inputs still get labels (zeros)
    assert c['network_kwargs']['dropout'] == 0.13 and c['optimizer_kwargs']['lr'] == 2e-4
    with open(os.path.join(run_dir, 'weight-movement.json')) as f:
        raw_move = json.load(f)['relative_l2']
    # The EMA (half-life 1 Mimg, no ramp-up) of the same run barely moves: 2 steps of 4 images.
    ema = state['net'].__class__(**state['net'].init_kwargs)
    ema.load_state_dict(state['ema_state'])
    assert fine_tune.weight_movement(load_snapshot(net)['ema'], ema).relative_l2 < raw_move * 1e-3

#----------------------------------------------------------------------------
# The sweep prints the paper's grid and runs nothing with --dry-run.

def test_sweep_dry_run(setup, cli):
    root, data, net = setup
    res = cli(fine_tune.main, ['--sweep', '--dry-run', '--nproc=8', f'--network={net}', f'--data={data}', '--outdir=runs', '--duration=0.5'])
    lines = [l for l in res.output.splitlines() if l.startswith('[')]
    assert len(lines) == 2 * (1 + 4 * 2)
    assert sum('edm-tiny-8x8-uncond-ve.pkl' in l for l in lines) == 9 and sum('-vp.pkl' in l for l in lines) == 9
    assert all('--standalone --nproc_per_node=8 fine_tune.py' in l and '--duration=0.5' in l for l in lines)
    assert sum('--spectral-wavelet=bior1.3' in l for l in lines) == 4 and sum('--spectral-weight=weighted' in l for l in lines) == 8
    assert 'Dry run' in res.output and not os.path.exists('runs')

#----------------------------------------------------------------------------
# Clear errors.

def test_fine_tune_errors(setup, tmp_path, cli, hostile):
    root, data, net = setup
    data16 = make_dataset(str(tmp_path / 'd16'), num=2, res=16)
    from training.networks import EDMPrecond
    evil = hostile.pickle() # a pickle that would run code: refused, nothing runs
    cond = str(tmp_path / 'cond.pkl')
    with open(cond, 'wb') as f:
        pickle.dump(dict(ema=EDMPrecond(img_resolution=8, img_channels=3, label_dim=3, model_type='SongUNet', model_channels=16,
            channel_mult=[1,2], num_blocks=1, attn_resolutions=[]), loss_fn=None, augment_pipe=None, dataset_kwargs={}), f)
    cases = [
        ([f'--network={tmp_path}/none.pkl', f'--data={data}'], 'file not found'),
        ([f'--network={net}', f'--data={data16}'], 'expects 3x8x8'),
        ([f'--network={net}', f'--data={tmp_path}/missing'], 'not found'),
        ([f'--network={net}', f'--data={data}', f'--resume={tmp_path}/x.pt'], 'training-state'),
        ([f'--network={data}/dataset.json', f'--data={data}'], 'not a readable network snapshot'),
        ([f'--network={cond}', f'--data={data}'], 'has no labels'),
        ([f'--network={evil}', f'--data={data}'], 'weights-only loader does not allow'),
    ]
    for args, message in cases:
        cli(fine_tune.main, args + [f'--outdir={tmp_path}/o', '--device=cpu', '-n'], fails_with=message)
    assert not hostile.ran()

#----------------------------------------------------------------------------
