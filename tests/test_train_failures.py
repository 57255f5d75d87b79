"""train.py on broken inputs and interrupted runs (issue 16): every failure ends with a one-line
message (a failure in the loop ends the process within seconds, data workers and all), nothing
is validated too late, a resume is exact or refused, and no file of a run is ever replaced by
another of its name. Each bad-input case is one line of a table: the arguments, then a piece of
the message. Most runs are in this process (click's invoker); a signal goes to train.main in a
process of its own, forked from this one (no second start-up of Python and torch)."""

import glob
import io
import multiprocessing
import os
import signal
import time
import zipfile

import numpy as np
import PIL.Image
import pytest

import train
from conftest import finish_forked, invoke_cli, read_stats, start_forked
from edm_spectral.checkpoints import load_training_state
from training import launch

# A tiny network (one level), two data workers; a case may give an option again (click keeps the last).
TINY = ['--device=cpu', '--cbase=8', '--cres=1', '--batch=4', '--duration=0.000008', '--tick=1', '--seed=1', '--workers=2']

# train.main as click runs it from the command line (its exit code), in a process forked from
# this one (conftest.start_forked). As at the exit of a real train.py, no data worker may be left
# alive (Python would wait for them there, and they ignore SIGTERM: a hang); one that is fails the
# exit code with 3.
def _train_main(args):
    try:
        train.main(args, prog_name='train.py')
    finally:
        alive = multiprocessing.active_children()
        if alive:
            print(f'data workers left alive at the exit: {alive}')
            raise SystemExit(3)

def _png(pixels):
    buffer = io.BytesIO()
    PIL.Image.fromarray(pixels).save(buffer, format='png')
    return buffer.getvalue()

def _zip(path, images):
    with zipfile.ZipFile(path, 'w') as z:
        for index, data in enumerate(images):
            z.writestr(f'00000/img{index:08d}.png', data)
    return str(path)

# A PNG whose compressed pixels are damaged but whose header and end are whole: it passes the
# checks at open and fails when a data worker decodes it.
def _damaged_png(data):
    data = bytearray(data)
    start = data.index(b'IDAT') + 8
    data[start:start + 12] = b'\x00' * 12
    return bytes(data)

@pytest.fixture(scope='module')
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp('inputs')
    rnd = np.random.RandomState(0)
    good = [_png(rnd.randint(0, 256, size=[16, 16, 3], dtype=np.uint8)) for _ in range(8)]
    paths = dict(
        good=_zip(root / 'good.zip', good),
        other_size=_zip(root / 'other-size.zip', good[:-1] + [_png(rnd.randint(0, 256, size=[8, 8, 3], dtype=np.uint8))]),
        other_channels=_zip(root / 'other-channels.zip', good[:-1] + [_png(rnd.randint(0, 256, size=[16, 16], dtype=np.uint8))]),
        corrupt=_zip(root / 'corrupt.zip', good[:-1] + [_damaged_png(good[-1])]),
        res15=_zip(root / 'res15.zip', [_png(rnd.randint(0, 256, size=[15, 15, 3], dtype=np.uint8)) for _ in range(8)]),
        small=_zip(root / 'small.zip', [_png(rnd.randint(0, 256, size=[4, 4, 3], dtype=np.uint8)) for _ in range(8)]), # for runs of 1000s of images
    )
    # A finished run with --cbase=8: its snapshot and training state.
    runs = root / 'runs'
    invoke_cli(train.main, [f'--outdir={runs}', f'--data={paths["good"]}', '--dump=1'] + TINY + ['--workers=1'])
    run_dir, = glob.glob(str(runs / '*'))
    paths.update(run_dir=run_dir, snapshot=sorted(glob.glob(os.path.join(run_dir, 'network-snapshot-*.pkl')))[0],
        state=sorted(glob.glob(os.path.join(run_dir, 'training-state-*.pt')))[-1])
    return paths

#----------------------------------------------------------------------------
# Bad inputs: (arguments, expected message). The message is one line, the exit non-zero, no
# traceback, no run folder. These end before the run starts: in this process.

BAD_OPTIONS = [
    # Refused before the run folder is made: the dataset's images (checked when it is opened),
    # the network against them, the numbers, the starting point against the options.
    ('--data={other_size}',                                 'img00000007.png is 8x8 RGB, expected 16x16 RGB like the first image'),
    ('--data={other_channels}',                             'img00000007.png is 16x16 L, expected 16x16 RGB like the first image'),
    ('--data={res15}',                                      'the images are 15x15; the networks need a power of two'),
    ('--data={good} --cres=1,2,2,2,2,2',                    '6 levels, which halve the images 5 times; 16x16 images allow at most 5'),
    ('--data={good} --lr=nan',                              '--lr=nan (optimizer_kwargs.lr=NaN) is not a finite number'),
    ('--data={good} --dropout=nan',                         '--dropout=nan (network_kwargs.dropout=NaN) is not a finite number'),
    ('--data={good} --seed=-1',                             '--seed: the seed must be an integer from 0 to 4294967295, got -1'),
    ('--data={good} --transfer={snapshot} --cbase=16',      'it was trained with --cbase=8 (network_kwargs.model_channels=8), now 16'),
    ('--data={good} --resume={state} --cbase=16',           '--resume: this state was trained with --cbase=8 (network_kwargs.model_channels=8), now 16; pass --allow-changes'),
    ('--data={good} --resume={state} --batch=8',            'this state was trained with --batch=4 (batch_size=4), now 8'),
    ('--data={good} --resume={state} --spectral=fourier-amp', 'this state was trained with --spectral=unset (loss_kwargs.spectral_kwargs.kind=unset), now "fourier-amp"'),
]

def _one_error_line(output, message):
    error_lines = [line for line in output.splitlines() if line.startswith('Error: ')]
    assert len(error_lines) == 1 and message in error_lines[0], output
    return error_lines[0][len('Error: '):]

@pytest.mark.parametrize('case, message', BAD_OPTIONS, ids=[f'{i}:{case}' for i, (case, _) in enumerate(BAD_OPTIONS)])
def test_bad_option_is_refused_before_the_run(case, message, inputs, tmp_path):
    outdir = tmp_path / 'runs'
    result = invoke_cli(train.main, [f'--outdir={outdir}'] + TINY + [word.format(**inputs) for word in case.split()], fails_with=message)
    _one_error_line(result.output, message)
    assert not os.path.exists(outdir), os.listdir(outdir)

# Found by the training loop, which marks the run FAILED in its log.txt: a state that has
# nothing left to train (refused before the data loader starts), and an image that decodes
# badly in one of the two data workers: the failure ends the run promptly and its workers with
# it (left alive, they would hang the exit of train.py, which waits for them).
LOOP_FAILURES = [
    ('--data={good} --resume={state}',  'the training state has trained 8 images, the run asks for 8 in all'),
    ('--data={corrupt} --duration=0.00004', 'in a data loader worker: OSError: Cannot read image 00000/img00000007.png'),
]

@pytest.mark.parametrize('case, message', LOOP_FAILURES, ids=[f'{i}:{case}' for i, (case, _) in enumerate(LOOP_FAILURES)])
def test_loop_failure_is_one_line_and_marks_the_run(case, message, inputs, tmp_path):
    outdir = tmp_path / 'runs'
    args = [f'--outdir={outdir}'] + TINY + [word.format(**inputs) for word in case.split()]
    start = time.time()
    output = invoke_cli(train.main, args, fails_with=message).output
    assert time.time() - start < 45 and 'Traceback' not in output, output
    assert multiprocessing.active_children() == [] # the data workers ended with the run
    error = _one_error_line(output, message)
    run_dir, = glob.glob(str(outdir / '*'))
    with open(os.path.join(run_dir, 'log.txt')) as f:
        assert f.read().splitlines()[-1] == 'FAILED: ' + error

#----------------------------------------------------------------------------
# A hostile training state: refused with one line before the run folder is made (also with
# --allow-changes, which skips the comparison of options), and the payload never runs.

def test_hostile_resume_state(inputs, hostile, tmp_path):
    state = hostile.torch_save()
    result = invoke_cli(train.main, [f'--outdir={tmp_path}/runs', f'--data={inputs["good"]}', f'--resume={state}', '--allow-changes'] + TINY,
        fails_with='which the weights-only loader does not allow')
    error = _one_error_line(result.output, 'weights-only loader')
    assert not hostile.ran() and error.startswith('--resume: ') and '--trust-code' in error, result.output
    assert not os.path.exists(tmp_path / 'runs')

#----------------------------------------------------------------------------
# --allow-changes continues, listing every difference.

def test_allow_changes_lists_differences(inputs, tmp_path):
    result = invoke_cli(train.main, [f'--outdir={tmp_path}/runs', f'--data={inputs["good"]}', f'--resume={inputs["state"]}', '--allow-changes',
        '--spectral=fourier-amp'] + TINY + ['--duration=0.000016', '--workers=1'])
    assert 'Warning: --allow-changes: this state was trained with --spectral=unset' in result.output
    state = load_training_state(sorted(glob.glob(str(tmp_path / 'runs' / '*' / 'training-state-*.pt')))[-1])
    assert state['cur_nimg'] == 16

#----------------------------------------------------------------------------
# Durations are exact, in images: 1.25 kimg is 1250 images (EDM cut it to 1 kimg, so that a
# resumed 1.0-kimg state trained nothing).

def test_duration_is_exact():
    assert launch.duration_to_kimg(0.0025) == 2.5 and launch.duration_to_kimg(200) == 200000
    assert launch.duration_to_kimg(0.000029) == 0.029 and launch.duration_to_kimg(0.0015) == 1.5
    with pytest.raises(ValueError, match='less than one image'):
        launch.duration_to_kimg(1e-7)

def test_resume_continues_to_a_fractional_duration(inputs, tmp_path):
    runs = tmp_path / 'runs'
    big = ['--batch=250', '--tick=1', '--dump=1', '--workers=1']
    invoke_cli(train.main, [f'--outdir={runs}', f'--data={inputs["small"]}'] + TINY + big + ['--duration=0.001'])
    first, = glob.glob(str(runs / '*'))
    state = os.path.join(first, 'training-state-000001.pt')
    assert load_training_state(state)['cur_nimg'] == 1000
    invoke_cli(train.main, [f'--outdir={runs}', f'--data={inputs["small"]}', f'--resume={state}'] + TINY + big + ['--duration=0.00125'])
    second, = [d for d in glob.glob(str(runs / '*')) if d != first]
    assert [tick['Progress/kimg']['mean'] for tick in read_stats(second)] == [1.25] # one step of 250 images, not none

#----------------------------------------------------------------------------
# SIGTERM stops a real train.main process cleanly (exit code 0, final snapshot and state), here
# between two ticks of the same kimg: the early-stop snapshot and state get the exact image
# count; the files of the tick before are kept as they were.

def test_sigterm_between_ticks_replaces_nothing(inputs, tmp_path):
    outdir, output = tmp_path / 'runs', tmp_path / 'output.txt'
    proc = start_forked(_train_main, [[f'--outdir={outdir}', f'--data={inputs["small"]}'] + TINY + [
        '--batch=100', '--duration=10', '--tick=1', '--snap=1', '--dump=1', '--workers=1']], output)
    try:
        deadline = time.time() + 120 # wait for tick 1's state (a generous bound, not a timing assertion)
        while not glob.glob(str(outdir / '*' / 'training-state-000001.pt')) and proc.is_alive() and time.time() < deadline:
            time.sleep(0.05)
        assert proc.is_alive(), output.read_text()
        os.kill(proc.pid, signal.SIGTERM)
    finally:
        result = finish_forked(proc, output, timeout=120)
    output = result.stdout
    assert result.returncode == 0 and 'Stopping early on request' in output and 'Exiting...' in output, output
    run_dir, = glob.glob(str(outdir / '*'))
    assert load_training_state(os.path.join(run_dir, 'training-state-000001.pt'))['cur_nimg'] == 1100 # tick 1: 100 + 1000 images
    last = sorted(glob.glob(os.path.join(run_dir, 'training-state-*.pt')), key=os.path.getmtime)[-1]
    stopped_at = load_training_state(last)['cur_nimg']
    if stopped_at // 1000 == 1: # the stop came before tick 2: the name that was taken gets the exact count
        assert os.path.basename(last) == f'training-state-000001.{stopped_at % 1000:03d}.pt'
        assert os.path.isfile(os.path.join(run_dir, f'network-snapshot-000001.{stopped_at % 1000:03d}.pkl'))
    assert os.path.isfile(os.path.join(run_dir, 'network-snapshot-000001.pkl'))
    # The exact-count state resumes like any other.
    assert launch.resume_kwargs(last).resume_kimg == stopped_at / 1000

#----------------------------------------------------------------------------
