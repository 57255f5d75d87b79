"""The package installs and works outside the checkout: `pip install --no-deps --no-build-isolation
--target` into a scratch folder (offline), then, from a folder that is not the checkout, the
console entry points run a tiny train with --grid-seeds, generate with --grid from its snapshot,
and the toy at smoke size. Catches library code left in (or imported from) a CLI script."""

import glob
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO, make_dataset, run_commands

def _run(cmd, cwd, env, timeout=300):
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f'{cmd}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}'
    return result

@pytest.fixture(scope='module')
def installed(tmp_path_factory):
    scratch = tmp_path_factory.mktemp('install')
    target = scratch / 'site'
    build_env = dict(os.environ, PIP_NO_INDEX='1', PIP_DISABLE_PIP_VERSION_CHECK='1')
    # A private copy of the tree, so that the build writes nothing into the checkout.
    src = scratch / 'src'
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns('.venv', '.git', 'out', 'runs', 'build', '*.egg-info', '__pycache__', 'tests', 'docs'))
    _run([sys.executable, '-m', 'pip', 'install', '--no-deps', '--no-build-isolation', '-q', '--target', str(target), str(src)], cwd=scratch, env=build_env)
    outside = scratch / 'elsewhere'
    outside.mkdir()
    env = dict(os.environ, PYTHONPATH=str(target), OMP_NUM_THREADS='1')
    env.pop('PYTHONSAFEPATH', None)
    return target, outside, env

def _entry_point(target, name):
    return str(target / 'bin' / name)

# Where the modules are found, without importing them (the package __init__ files are empty).
def test_installed_modules_come_from_the_target(installed):
    target, outside, env = installed
    code = ('import importlib.util as u; [print(u.find_spec(m).origin) for m in '
        '["training.sampling", "edm_spectral.toy", "train", "generate", "fine_tune", "fid", "dataset_tool"]]')
    out = _run([sys.executable, '-c', code], cwd=outside, env=env).stdout.split()
    assert len(out) == 7 and all(path.startswith(str(target)) for path in out), out

# The console entry points, run one after the other in one Python process outside the checkout
# (one start-up of torch instead of three): a tiny train with --grid-seeds, generate with
# --grid from its last snapshot, the toy at smoke size.
@pytest.fixture(scope='module')
def entry_points_ran(installed):
    target, outside, env = installed
    data = make_dataset(str(outside / 'data'), num=8)
    commands = [
        [_entry_point(target, 'edm-train'), '--outdir=runs', f'--data={data}', '--device=cpu', '--cbase=8', '--cres=1,2',
            '--batch=4', '--duration=0.000004', '--tick=1', '--seed=1', '--grid-seeds=0-3'],
        [_entry_point(target, 'edm-generate'), '--network', f'{{glob:{outside / "runs" / "00000-*" / "network-snapshot-*.pkl"}}}',
            '--outdir=gen', '--seeds=0-3', '--steps=4', '--grid=grid.png', '--device=cpu'],
        [_entry_point(target, 'edm-toy'), '--preset=smoke', '--kimg=0.016', '--outdir=toy', '--device=cpu'],
    ]
    (outside / 'driver').mkdir()
    proc, outputs = run_commands(commands, outside / 'driver', timeout=600, torchrun=False, cwd=outside, env=env)
    assert len(outputs) == 3, proc.stdout + proc.stderr
    return outside

def test_installed_train_and_generate(entry_points_ran):
    outside = entry_points_ran
    run_dir, = glob.glob(str(outside / 'runs' / '00000-*'))
    snapshots = sorted(glob.glob(os.path.join(run_dir, 'network-snapshot-*.pkl')))
    assert len(snapshots) == 1 and glob.glob(os.path.join(run_dir, '*grid*.png')), os.listdir(run_dir)
    assert (outside / 'grid.png').is_file() and len(glob.glob(str(outside / 'gen' / '*.png'))) == 4

def test_installed_toy_smoke(entry_points_ran):
    outside = entry_points_ran
    assert (outside / 'toy').is_dir() and os.listdir(outside / 'toy')
