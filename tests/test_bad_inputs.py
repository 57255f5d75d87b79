"""Hostile and broken inputs to every CLI (issue 16): one clear error, exit code non-zero, no
traceback, no code from a pickle run, nothing left behind. Each case is one line of a table:
the CLI (and sub-command) with its arguments, then a piece of the expected message."""

import os
import shutil
import tempfile
import traceback

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

from conftest import run_forked, tiny_ddpmpp

#----------------------------------------------------------------------------
# The CLIs: import name, and options every case of it gets first (a case may give them again;
# click keeps the last value). Every case ends before any work starts, so all run in this
# process (the training CLIs' failures in a running loop: tests/test_train_failures.py).

CLIS = {
    'dataset_tool': ('dataset_tool', 'main', []),
    'generate':     ('generate', 'main', ['--device=cpu', '--seeds=0', '--steps=2']),
    'fid':          ('fid', 'main', ['--device=cpu', '--workers=0']),
    'spectrum':     ('edm_spectral.spectrum', 'cmdline', []),
    'train':        ('train', 'main', ['--device=cpu']),
    'fine_tune':    ('fine_tune', 'main', ['--device=cpu']),
}
GROUPS = {'fid', 'spectrum'} # the second word is the sub-command

def _command(name):
    import importlib
    module, attr, _ = CLIS[name]
    return getattr(importlib.import_module(module), attr)

# A case line 'fid ref --data={data} ...' as argument words, the common options after the
# sub-command. The placeholders are filled per word, so paths may hold spaces.
def _argv(case, paths):
    words = case.split()
    name, rest = words[0], words[1:]
    head = rest[:1] if name in GROUPS else []
    return name, head + CLIS[name][2] + [w.format(**paths) for w in rest[len(head):]]

# Run a CLI in this process (CliRunner). Returns (exit code, output, whether it ended the way a
# click error does rather than with an uncaught exception).
def run_cli(case, paths):
    name, argv = _argv(case, paths)
    result = CliRunner().invoke(_command(name), argv)
    clean = result.exception is None or isinstance(result.exception, SystemExit)
    return result.exit_code, result.output, clean

def assert_clean_error(case, paths, message):
    code, output, clean = run_cli(case, paths)
    assert code != 0, (case, output)
    assert clean and 'Traceback' not in output, (case, output)
    assert message.format(**paths) in output, (case, output)
    return output

def _tree(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, dirs, files in os.walk(root) for f in dirs + files)

#----------------------------------------------------------------------------
# Inputs shared by the cases: a small image folder, a tiny network snapshot, reference
# statistics for the stand-in detector, a .wav file, torch.save files and a plain file.

@pytest.fixture(scope='module')
def shared(tmp_path_factory):
    root = tmp_path_factory.mktemp('inputs')
    data = root / 'data'
    data.mkdir()
    rnd = np.random.RandomState(0)
    for i in range(4):
        PIL.Image.fromarray(rnd.randint(0, 256, size=[8, 8, 3], dtype=np.uint8)).save(data / f'img{i}.png')
    from training.networks import EDMPrecond
    from training.snapshots import save_snapshot
    torch.manual_seed(0)
    net = EDMPrecond(img_resolution=8, img_channels=3, **tiny_ddpmpp())
    save_snapshot(str(root / 'net.pkl'), net)
    torch.save(dict(net=net.state_dict()), root / 'state.pt')
    torch.save(dict(net=net.state_dict()), root / 'legacy.pt', _use_new_zipfile_serialization=False)
    np.savez(root / 'ref.npz', mu=np.zeros(256), sigma=np.eye(256), detector=np.array('standin'))
    import scipy.io.wavfile
    scipy.io.wavfile.write(root / 'tone.wav', 8000, (np.sin(np.arange(4000) * 0.3) * 10000).astype(np.int16))
    (root / 'plain').write_text('a plain file')
    return dict(data=str(data), net=str(root / 'net.pkl'), pt=str(root / 'state.pt'), legacy_pt=str(root / 'legacy.pt'),
        ref=str(root / 'ref.npz'), wav=str(root / 'tone.wav'), file=str(root / 'plain'))

# Per test: its own folder {tmp} for outputs, and hostile files whose payload writes a marker.
@pytest.fixture
def paths(shared, hostile, tmp_path):
    import io, pickle, tarfile
    out = tmp_path / 'out-root'
    out.mkdir()
    evil_npy = hostile.root / 'evil.npy'
    np.save(evil_npy, np.array([hostile.payload()], dtype=object), allow_pickle=True)
    evil_npz = hostile.root / 'evil.npz'
    np.savez(evil_npz, mu=np.array([hostile.payload()], dtype=object), sigma=np.eye(2))
    batch = pickle.dumps(dict(data=hostile.payload(), labels=[]))
    cifar = hostile.root / 'cifar-10-python.tar.gz'
    with tarfile.open(cifar, 'w:gz') as tar:
        info = tarfile.TarInfo('cifar-10-batches-py/data_batch_1')
        info.size = len(batch)
        tar.addfile(info, io.BytesIO(batch))
    return dict(shared, tmp=str(out), evil=hostile.pickle(), evil_state=hostile.torch_save(), evil_npy=str(evil_npy),
        evil_npz=str(evil_npz), evil_cifar=str(cifar))

#----------------------------------------------------------------------------
# Broken inputs: (CLI and arguments, expected message).

BAD_INPUTS = [
    # Output paths that cannot be written are refused before any work starts.
    ('dataset_tool --source={data} --dest=/proc/edm-test/out.zip',          '--dest /proc/edm-test/out.zip cannot be created: /proc does not accept new files'),
    ('dataset_tool --source={data} --dest=/proc/edm-test/out',              '--dest /proc/edm-test/out cannot be created'),
    ('dataset_tool --source={data} --dest={file}/out.zip',                  '{file} is a file, not a folder'),
    ('dataset_tool --source={data} --dest={file}/out',                      '{file} is a file, not a folder'),
    ('spectrum compute --images={data} --dest=/proc/edm-test/psd.json',     '--dest /proc/edm-test/psd.json cannot be created'),
    ('spectrum compute --images={data} --dest={file}/psd.json',             '{file} is a file, not a folder'),
    ('spectrum compare --ref={data} --set={data} --plot=/proc/edm-test/p.png', '--plot /proc/edm-test/p.png cannot be created'),
    ('spectrum compare --ref={data} --set={data} --json={file}/d.json',     '--json {file}/d.json cannot be created'),
    ('spectrum compare-audio --ref={wav} --set={wav} --plot=/proc/edm-test/p.png', '--plot /proc/edm-test/p.png cannot be created'),
    ('generate --network={net} --outdir=/proc/edm-test/out',                '--outdir /proc/edm-test/out cannot be created'),
    ('generate --network={net} --outdir={file}/out',                        '{file} is a file, not a folder'),
    ('generate --network={net} --outdir={file}',                            'it exists and is not a folder'),
    ('generate --network={net} --outdir={tmp}/out --grid=/proc/edm-test/g.png', '--grid /proc/edm-test/g.png cannot be created'),
    ('generate --network={net} --outdir={tmp}/out --grid={file}/g.png',     '--grid {file}/g.png cannot be created'),
    ('fid ref --data={data} --dest=/proc/edm-test/ref.npz --detector=standin', '--dest /proc/edm-test/ref.npz cannot be created'),
    ('fid ref --data={data} --dest={file}/ref.npz --detector=standin',      '{file} is a file, not a folder'),
    # Refused pickles and unreadable files: a message, not a traceback.
    ('spectrum compute --images={evil} --seeds=0 --dest={tmp}/psd.json --device=cpu', '--images: cannot load network snapshot'),
    ('spectrum compare --ref={evil} --set={data} --seeds=0 --device=cpu',  'weights-only loader does not allow'),
    ('spectrum compare-audio --ref={evil} --set={wav}',                     'as a .wav file'),
    # A torch.save file where a network snapshot pickle is expected.
    ('generate --network={pt} --outdir={tmp}/out',                          'is a torch.save file, not a network snapshot pickle'),
    ('generate --network={legacy_pt} --outdir={tmp}/out',                   'is a legacy torch.save file, not a network snapshot pickle'),
    ('fine_tune --network={pt} --data={data} --outdir={tmp}/runs -n',       'is a torch.save file, not a network snapshot pickle'),
    ('train --transfer={pt} --data={data} --outdir={tmp}/runs -n',          'is a torch.save file, not a network snapshot pickle'),
    ('fid calc --network={pt} --ref={ref} --seeds=0-1 --detector=standin',  'is a torch.save file, not a network snapshot pickle'),
    # Noise ranges that are empty, not positive or not finite.
    ('generate --network={net} --outdir={tmp}/out --sigma_min=100 --sigma_max=1', 'the noise range is empty: sigma_min=100 must be smaller than sigma_max=1'),
    ('generate --network={net} --outdir={tmp}/out --sigma_max=0.001',       'sigma_min=0.002 (the default of the EDM sampler) must be smaller than sigma_max=0.001'),
    ('generate --network={net} --outdir={tmp}/out --disc=ve --sigma_min=200', 'sigma_min=200 must be smaller than sigma_max=100 (the default of the ve discretization)'),
    ('generate --network={net} --outdir={tmp}/out --sigma_max=inf',         'sigma_max must be a finite number > 0, got inf'),
    ('generate --network={net} --outdir={tmp}/out --sigma_min=0',           "'--sigma_min': 0.0 is not in the range x>0"),
    ('generate --network={net} --outdir={tmp}/out --sigma_max=-1',          "'--sigma_max': -1.0 is not in the range x>0"),
    ('fid calc --network={net} --ref={ref} --seeds=0-1 --detector=standin --sigma_min=100 --sigma_max=1', 'the noise range is empty'),
]

@pytest.mark.parametrize('case, message', BAD_INPUTS, ids=[case for case, _ in BAD_INPUTS])
def test_bad_input_is_one_clear_error(paths, case, message):
    before = _tree(paths['tmp'])
    assert_clean_error(case, paths, message)
    assert _tree(paths['tmp']) == before, 'a failed start left files or folders behind'

#----------------------------------------------------------------------------
# Hostile pickles through every option that reads a file: no payload runs, one clear error.

HOSTILE_INPUTS = [
    ('generate --network={evil} --outdir={tmp}/out',                        'weights-only loader does not allow'),
    ('fine_tune --network={evil} --data={data} --outdir={tmp}/runs -n',     'weights-only loader does not allow'),
    ('fine_tune --network={net} --data={evil} --outdir={tmp}/runs -n',      'must be a folder or a .zip file'),
    ('fine_tune --network={net} --data={data} --outdir={tmp}/runs --resume={evil_state} --batch=4 --duration=0.000008', 'weights-only loader does not allow'),
    ('train --data={data} --outdir={tmp}/runs --transfer={evil} -n',       'weights-only loader does not allow'),
    ('train --data={evil} --outdir={tmp}/runs -n',                          'must be a folder or a .zip file'),
    ('train --data={data} --outdir={tmp}/runs --resume={evil_state} --batch=4 --cbase=16 --cres=1,2 --duration=0.000008', 'weights-only loader does not allow'),
    ('train --data={data} --outdir={tmp}/runs --metrics=fid10k --metrics-ref={ref} --metrics-detector={evil} -n', '--metrics-detector'),
    ('train --data={data} --outdir={tmp}/runs --metrics=fid10k --metrics-detector=standin --metrics-ref={evil_npz} -n', '--metrics-ref'),
    ('fine_tune --network={net} --data={data} --outdir={tmp}/runs --metrics=fid10k --metrics-ref={ref} --metrics-detector={evil} -n', '--metrics-detector'),
    ('fine_tune --network={net} --data={data} --outdir={tmp}/runs --metrics=fid10k --metrics-detector=standin --metrics-ref={evil} -n', '--metrics-ref'),
    ('fid ref --data={data} --dest={tmp}/ref.npz --detector={evil}',       '--trust-code'),
    ('fid ref --data={evil} --dest={tmp}/ref.npz --detector=standin',      'must be a folder or a .zip file'),
    ('fid calc --images={data} --ref={ref} --num=2 --detector={evil}',     '--trust-code'),
    ('fid calc --images={evil} --ref={ref} --num=2 --detector=standin',    'must be a folder or a .zip file'),
    ('fid calc --images={data} --ref={evil} --num=2 --detector=standin',   'is not a readable .npz file'),
    ('fid calc --images={data} --ref={evil_npz} --num=2 --detector=standin', 'is not a readable .npz file'),
    ('fid calc --network={evil} --ref={ref} --seeds=0-1 --detector=standin', 'weights-only loader does not allow'),
    ('spectrum compute --images={evil} --seeds=0 --dest={tmp}/psd.json',   'weights-only loader does not allow'),
    ('spectrum compute --images={evil_npy} --dest={tmp}/psd.json',         'is not a readable .npy/.npz file'),
    ('spectrum compare --ref={evil} --set={data} --seeds=0',               'weights-only loader does not allow'),
    ('spectrum compare --ref={data} --set={evil} --seeds=0',               '--set: cannot load network snapshot'),
    ('spectrum compare-audio --ref={evil} --set={wav}',                    'as a .wav file'),
    ('spectrum compare-audio --ref={wav} --set={evil}',                    'as a .wav file'),
    ('dataset_tool --source={evil} --dest={tmp}/out.zip',                  'Unknown --source type'),
    ('dataset_tool --source={evil_cifar} --dest={tmp}/out.zip',            'unexpected object builtins.exec'),
]

@pytest.mark.parametrize('case, message', HOSTILE_INPUTS, ids=[case for case, _ in HOSTILE_INPUTS])
def test_hostile_pickle_runs_no_code(paths, hostile, case, message):
    code, output, clean = run_cli(case, paths)
    assert not hostile.ran(), f'the payload ran: {case}\n{output}'
    refused = code != 0 and message.format(**paths) in output
    clean = clean and 'Traceback' not in output
    assert refused, (case, output)
    assert clean, (case, output)

# The check above can fail: plain pickle runs the payload of the same files.
def test_hostile_files_do_run_code_under_plain_pickle(paths, hostile):
    import pickle
    with open(paths['evil'], 'rb') as f:
        pickle.load(f)
    assert hostile.ran()
    hostile.marker.unlink()
    torch.load(paths['evil_state'], weights_only=False)
    assert hostile.ran()

# Input options: a path-like metavar, and not an output. Adding a CLI option that reads a file
# without a hostile case above fails here.
_PATH_METAVARS = {'PATH', 'URL', 'ZIP', 'DIR', 'PKL', 'PT', 'NPZ', 'PNG', 'JSON'}
_OUTPUTS = {'generate --outdir', 'generate --grid', 'fid ref --dest', 'spectrum compute --dest', 'spectrum compare --plot',
    'spectrum compare --json', 'spectrum compare-audio --plot', 'spectrum compare-audio --json', 'dataset_tool --dest',
    'train --outdir', 'fine_tune --outdir'}

def _input_options():
    import click
    found = set()
    def walk(name, command):
        if isinstance(command, click.Group):
            for sub, child in command.commands.items():
                walk(f'{name} {sub}', child)
            return
        for param in command.params:
            if isinstance(param, click.Option) and param.metavar and set(param.metavar.split('|')) & _PATH_METAVARS:
                found.add(f'{name} {max(param.opts, key=len)}')
    for name in CLIS:
        walk(name, _command(name))
    return found - _OUTPUTS

def test_every_input_option_has_a_hostile_case():
    covered = set()
    for case, _ in HOSTILE_INPUTS:
        words = case.split()
        prefix = ' '.join(words[:2] if words[0] in GROUPS else words[:1])
        covered |= {f'{prefix} {w.split("=")[0]}' for w in words if '{evil' in w}
    inputs = _input_options()
    assert inputs, 'no input options found'
    assert inputs <= covered, f'options that read a file but have no hostile case: {sorted(inputs - covered)}'

#----------------------------------------------------------------------------
# The output-path checks themselves: they refuse what cannot work, accept what can, and leave
# the file system as it was either way.

def test_writable_checks_leave_nothing_behind(tmp_path):
    from dnnlib.util import UnwritablePathError, check_writable_dir, check_writable_file
    (tmp_path / 'plain').write_text('x')
    (tmp_path / 'folder').mkdir()
    before = _tree(tmp_path)
    for check, path in [(check_writable_dir, tmp_path / 'new' / 'deeper'), (check_writable_dir, tmp_path / 'folder'),
            (check_writable_file, tmp_path / 'new' / 'x.json'), (check_writable_file, tmp_path / 'plain')]:
        check(str(path), '--out') # no exception
    refused = [(check_writable_dir, '/proc/edm-test/a/b', 'cannot be created: /proc does not accept new files'),
        (check_writable_dir, tmp_path / 'plain' / 'sub', 'is a file, not a folder'),
        (check_writable_dir, tmp_path / 'plain', 'exists and is not a folder'),
        (check_writable_file, tmp_path / 'folder', 'it is a folder'),
        (check_writable_file, tmp_path / 'plain' / 'x.npz', 'is a file, not a folder'),
        (check_writable_file, '', 'must not be empty')]
    for check, path, message in refused:
        with pytest.raises(UnwritablePathError, match='--out') as info:
            check(str(path), '--out')
        assert message in str(info.value) and '\n' not in str(info.value)
        assert isinstance(info.value, ValueError)
    assert _tree(tmp_path) == before

# dataset_tool.main with args in a process forked from this one (conftest.run_forked), as the
# user nobody when this one is root (root may write anywhere); returns the exit code and the
# output, with the traceback of any exception other than click's exit.
def _dataset_tool_as_nobody(args, out):
    def child():
        if os.geteuid() == 0:
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
        result = CliRunner().invoke(_command('dataset_tool'), args)
        print(result.output, end='')
        if result.exc_info is not None and not isinstance(result.exception, SystemExit):
            traceback.print_exception(*result.exc_info)
        return result.exit_code
    res = run_forked(child, (), out, timeout=120)
    return res.returncode, res.stdout

# A read-only folder: root may write anywhere, so the CLI runs as the user nobody then.
def test_read_only_folder_is_refused():
    top = tempfile.mkdtemp(prefix='edm-readonly-')
    try:
        os.chmod(top, 0o755)
        src = os.path.join(top, 'src')
        os.mkdir(src)
        PIL.Image.fromarray(np.zeros([8, 8, 3], dtype=np.uint8)).save(os.path.join(src, 'a.png'))
        locked = os.path.join(top, 'locked')
        os.mkdir(locked, 0o555)
        os.chmod(locked, 0o555)
        for dest in [os.path.join(locked, 'out.zip'), os.path.join(locked, 'new', 'out')]:
            code, output = _dataset_tool_as_nobody([f'--source={src}', f'--dest={dest}'], os.path.join(top, 'output.txt'))
            assert code != 0 and 'Traceback' not in output, output
            assert f'--dest {dest} cannot be created: {locked} does not accept new files (Permission denied)' in output, output
            assert os.listdir(locked) == []
    finally:
        os.chmod(os.path.join(top, 'locked'), 0o755)
        shutil.rmtree(top)

#----------------------------------------------------------------------------
# The noise range a sampler will use: the given bounds, else the defaults of the sampler the
# options select.

def test_check_sigma_range_defaults():
    from training.sampling import _default_sigma_range, check_sigma_range
    assert check_sigma_range() == (0.002, 80.0)
    assert check_sigma_range(sigma_max=1, num_steps=18, solver=None) == (0.002, 1.0)
    assert check_sigma_range(discretization='vp') == tuple(float(x) for x in _default_sigma_range('vp', 1e-3))
    assert check_sigma_range(solver='euler', sigma_min=1) == (1.0, 80.0)
    with pytest.raises(ValueError, match='sigma_min=1 must be smaller than sigma_max=1'):
        check_sigma_range(sigma_min=1, sigma_max=1)
    with pytest.raises(ValueError, match='sigma_min must be a finite number > 0, got nan'):
        check_sigma_range(sigma_min=float('nan'))

#----------------------------------------------------------------------------
