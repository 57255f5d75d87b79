"""fid.py calc --network: FID of a network's samples generated in memory equals the two-step route
(generate.py PNGs, then fid.py calc --images), EDM's repeated seed sets, two Gloo processes
against one, and the CLI's errors. All with the stand-in detector: the values are NOT FIDs."""

import os
import pickle
import re

import numpy as np
import PIL.Image
import pytest

from conftest import GLOO_ARGS, invoke_cli, write_tiny_snapshot
import fid  # (repository root scripts)
import generate
from edm_spectral import fid_stats

COMMON = ['--detector=standin', '--workers=0', '--device=cpu']

#----------------------------------------------------------------------------
# Two tiny real network snapshots (conftest.write_tiny_snapshot) and reference statistics.

@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp('fidnet')
    nets = dict(rgb=str(root / 'rgb.pkl'), gray=str(root / 'gray-cond.pkl'))
    write_tiny_snapshot(nets['rgb'])
    write_tiny_snapshot(nets['gray'], channels=1, label_dim=4)
    # Reference statistics (with features, for KID) of random 8x8 images.
    rnd = np.random.RandomState(0)
    os.makedirs(root / 'data')
    for i in range(30):
        PIL.Image.fromarray(rnd.randint(0, 256, size=[8, 8, 3], dtype=np.uint8)).save(root / 'data' / f'{i:03d}.png')
    ref = str(root / 'ref.npz')
    r = invoke_cli(fid.main, ['ref', f'--data={root / "data"}', f'--dest={ref}', '--features'] + COMMON)
    return dict(root=root, nets=nets, ref=ref)

_value = r'([-+0-9.e]+|nan|inf)'

def _values(output, metric='FID'):
    return [float(v) for v in re.findall(rf'^{metric} \(stand-in[^)]*\)(?: of seeds [^:]*)?: {_value}$', output, re.M)]

#----------------------------------------------------------------------------
# The in-memory route gives the same features, hence the same FID and KID, as writing PNGs with
# generate.py and reading them back: the images are quantised exactly as generate.py saves them.

@pytest.mark.filterwarnings('ignore:Matrix is singular')   # 20 images, 256-d features
@pytest.mark.parametrize('net, options', [
    ('rgb',  ['--steps=3', '--S_churn=5']),
    ('gray', ['--steps=3', '--class=2', '--solver=euler', '--disc=vp', '--schedule=vp', '--scaling=vp']),
])
def test_network_fid_equals_images_fid_of_generate_output(setup, tmp_path, net, options, monkeypatch):
    # The statistics the library functions behind both routes return to fid.py (with --kid,
    # the features too), recorded as fid.py receives them.
    stats = {}
    run = fid._run
    def record(fn, **kwargs):
        stats[fn.__name__] = run(fn, **kwargs)
        return stats[fn.__name__]
    monkeypatch.setattr(fid, '_run', record)
    network = setup['nets'][net]
    r = invoke_cli(generate.main, [f'--network={network}', f'--outdir={tmp_path / "png"}', '--seeds=0-19', '--batch=8', '--device=cpu'] + options)
    r = invoke_cli(fid.main, ['calc', f'--images={tmp_path / "png"}', f'--ref={setup["ref"]}', '--num=20', '--batch=8', '--kid'] + COMMON)
    from_images = (_values(r.stdout), _values(r.stdout, "KID"))
    r = invoke_cli(fid.main, ['calc', f'--network={network}', '--seeds=0-19', f'--ref={setup["ref"]}', '--batch=8', '--kid'] + COMMON + options)
    from_network = (_values(r.stdout), _values(r.stdout, "KID"))
    assert len(from_images[0]) == 1 and len(from_images[1]) == 1
    assert from_network == from_images
    assert from_network[0][0] > 0

    # The library functions behind both: identical features, in seed order (20 of them).
    mem, png = stats['calculate_network_stats'], stats['calculate_inception_stats']
    assert len(mem) == len(png) == 3 and mem[2].shape[0] == 20
    for a, b in zip(mem, png):
        np.testing.assert_array_equal(a, b)

#----------------------------------------------------------------------------
# --repeats: EDM's seed sets (the given range shifted by its length), each FID, mean +- std, min.

def test_repeated_seed_sets():
    assert fid_stats.repeated_seed_sets(range(0, 50000), 3)[2][:2] == [100000, 100001]
    assert [s[-1] for s in fid_stats.repeated_seed_sets(range(50000), 3)] == [49999, 99999, 149999]
    assert fid_stats.repeated_seed_sets([3, 5], 2) == [[3, 5], [6, 8]]   # shifted by the span: the sets never overlap
    with pytest.raises(ValueError):
        fid_stats.repeated_seed_sets([], 3)

@pytest.mark.filterwarnings('ignore:Matrix is singular')
def test_repeats_report_each_set_mean_std_and_min(setup):
    args = ['calc', f'--network={setup["nets"]["rgb"]}', f'--ref={setup["ref"]}', '--steps=2', '--batch=5'] + COMMON
    r = invoke_cli(fid.main, args + ['--seeds=0-5', '--repeats=3'])
    fids = _values(r.stdout)
    assert len(fids) == 3 and len(set(fids)) == 3
    assert 'of seeds 0-5:' in r.output and 'of seeds 6-11:' in r.output and 'of seeds 12-17:' in r.output
    summary = re.search(rf'over 3 seed sets: mean {_value} \+- std {_value}, min {_value}', r.output)
    assert summary, r.output
    mean, std, low = (float(v) for v in summary.groups())
    assert mean == pytest.approx(np.mean(fids), rel=1e-5) and low == min(fids)
    assert std == pytest.approx(np.std(fids, ddof=1), rel=1e-3)   # of the printed (6-digit) FIDs: sample std
    # The third set is the same as asking for its seeds directly.
    r = invoke_cli(fid.main, args + ['--seeds=12-17'])
    assert _values(r.stdout) == [fids[2]]

#----------------------------------------------------------------------------
# Errors: one clear message each.

def test_network_cli_errors(setup, tmp_path):
    marker = tmp_path / 'payload-ran'
    class Hostile:
        def __reduce__(self):
            return (exec, (f'open({str(marker)!r}, "w")',))
    with open(tmp_path / 'evil.pkl', 'wb') as f:
        pickle.dump(Hostile(), f)
    net, ref = setup['nets']['rgb'], f'--ref={setup["ref"]}'
    cases = [
        ([ref], 'exactly one of --images and --network'),
        ([ref, f'--network={net}', f'--images={tmp_path}'], 'exactly one of --images and --network'),
        ([ref, f'--network={net}', '--seeds=4'], 'at least 2 seeds'),
        ([ref, f'--network={net}', '--seeds=0-3', '--class=1'], 'unconditional'),
        ([ref, f'--network={setup["nets"]["gray"]}', '--seeds=0-3', '--class=4'], '4 classes'),
        ([ref, f'--network={tmp_path / "missing.pkl"}'], 'not found'),
        ([ref, f'--network={tmp_path / "evil.pkl"}', '--seeds=0-3'], 'cannot load network snapshot'),
        ([ref, f'--network={net}', '--seeds=0-3', '--steps=1'], '--steps'),
    ]
    for args, message in cases:
        invoke_cli(fid.main, ['calc'] + args + COMMON, fails_with=message)
    assert not marker.exists()

#----------------------------------------------------------------------------
# Two CPU processes under torchrun (Gloo; the suite's shared launch, conftest.gloo_runs) give the
# FID and KID of one process.

@pytest.mark.filterwarnings('ignore:Matrix is singular')
def test_torchrun_two_processes_match_single_process(gloo_runs):
    r = invoke_cli(fid.main, GLOO_ARGS['fid_calc'] + [f'--network={gloo_runs["net"]}', f'--ref={gloo_runs["ref"]}'])
    stdout = gloo_runs['outputs']['fid_calc'][0]
    two, one = (_values(stdout), _values(stdout, "KID")), (_values(r.stdout), _values(r.stdout, "KID"))
    assert len(one[0]) == 1 and len(one[1]) == 1 and len(two[0]) == 1   # printed once, by rank 0
    assert two[0][0] == pytest.approx(one[0][0], rel=1e-6)   # float64 sums in another order
    assert two[1] == one[1]                                  # KID reads the gathered features, in seed order

#----------------------------------------------------------------------------

# A reference that rank 0 refuses stops every rank at once (rank 1 would otherwise wait for
# rank 0 at the network load): one error line, a non-zero exit, no hang. The last command of
# the shared launch (conftest.gloo_runs), which run_torchrun waits for under a timeout.
def test_torchrun_bad_reference_exits_every_rank(gloo_runs):
    stdout, stderr = gloo_runs['outputs']['bad_ref']
    assert gloo_runs['returncode'] != 0
    errors = [line for line in (stdout + stderr).splitlines() if line.startswith('Error: ')]
    assert len(errors) == 1 and 'same detector' in errors[0], stdout + stderr
    assert 'fid.py", line' not in stderr, stderr   # no worker traceback (torchrun prints its own)

#----------------------------------------------------------------------------
