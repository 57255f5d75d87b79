"""Fixtures shared by the test files: tiny image datasets and WAV corpora, a released-format
network snapshot and a tiny one, the training loop's tiny options, a free port, a two-process torchrun
launcher and the suite's one shared launch (gloo_runs), commands in one process (run_commands), a
function in a forked process (run_forked), a click invoker, modules written from source, hostile
pickles, and the run order for pytest-xdist.

Helpers without state are plain functions and classes: `from conftest import make_dataset`
(also from a worker script that a test starts with tests/ on its path). What needs pytest's
temporary folders, monkeypatch or a failure message is a fixture. Test modules never import
each other."""

import json
import os
import pickle
import socket
import subprocess
import sys
import zipfile

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

# One intra-op thread for the tests and their children, unless the caller chose: the tensors
# are tiny, and on a busy 2-core machine a second thread that waits for a taken core makes a
# small convolution 100 to 300 times slower. Set before torch starts its thread pool; a test
# that needs another count sets it itself (tests/test_golden.py: its baseline's 2 threads).
os.environ.setdefault('OMP_NUM_THREADS', '1')
if 'torch' in sys.modules:
    sys.modules['torch'].set_num_threads(int(os.environ['OMP_NUM_THREADS']))

#----------------------------------------------------------------------------
# Hostile pickles: unpickling the payload runs code that writes a marker file, so a test can
# tell whether a loader executed it. Only a loader told to trust the file may.

class HostilePayload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f'open({self.marker!r}, "w").write("payload ran")',))

class HostileFiles:
    def __init__(self, root):
        self.root = root
        self.marker = root / 'payload-ran'

    def payload(self):
        return HostilePayload(self.marker)

    # A plain pickle; `wrap` puts the payload inside a container (e.g. a snapshot-shaped dict).
    def pickle(self, name='evil.pkl', wrap=lambda payload: dict(ema=payload)):
        path = self.root / name
        with open(path, 'wb') as f:
            pickle.dump(wrap(self.payload()), f)
        return str(path)

    # A torch.save file, shaped like a training state.
    def torch_save(self, name='training-state-000000.pt', wrap=lambda payload: dict(net=payload, optimizer_state={})):
        import torch
        path = self.root / name
        torch.save(wrap(self.payload()), path)
        return str(path)

    def ran(self):
        return self.marker.exists()

@pytest.fixture
def hostile(tmp_path):
    root = tmp_path / 'hostile'
    root.mkdir()
    return HostileFiles(root)

#----------------------------------------------------------------------------
# Tiny datasets in dataset_tool.py's layout (00000/img00000000.png, ..., dataset.json): smooth
# random images (a few low frequencies) that a net can learn something from. A path ending in
# .zip gets the same files in a zip archive; num_classes > 0 adds random labels.

def make_dataset(path, num=16, res=8, channels=3, num_classes=0, seed=0):
    import PIL.Image
    rnd = np.random.RandomState(seed)
    files, labels = {}, []
    yy, xx = np.mgrid[0:res, 0:res] / res
    for idx in range(num):
        name = f'{idx // 1000:05d}/img{idx:08d}.png'
        img = np.stack([np.sin(2 * np.pi * (rnd.uniform(0.5, 2) * xx + rnd.uniform(0.5, 2) * yy) + rnd.uniform(0, 6)) for _ in range(channels)], axis=-1)
        img = np.clip(img * 100 + 128, 0, 255).astype(np.uint8)
        files[name] = PIL.Image.fromarray(img[:, :, 0] if channels == 1 else img)
        labels.append([name, int(rnd.randint(num_classes))] if num_classes else None)
    meta = json.dumps({'labels': labels if num_classes else None})
    if path.endswith('.zip'):
        import io
        os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
        with zipfile.ZipFile(path, 'w', compression=zipfile.ZIP_STORED) as z:
            for name, image in files.items():
                buf = io.BytesIO()
                image.save(buf, format='png')
                z.writestr(name, buf.getvalue())
            z.writestr('dataset.json', meta)
        return path
    for name, image in files.items():
        os.makedirs(os.path.join(path, os.path.dirname(name)), exist_ok=True)
        image.save(os.path.join(path, name))
    with open(os.path.join(path, 'dataset.json'), 'w') as f:
        f.write(meta)
    return path

# tiny_dataset(name='tiny-8x8', root=None, num=16, res=8, channels=3, num_classes=0, seed=0):
# the dataset's path, in a fresh temporary folder unless root is given. The name matters to
# train.py, whose run folders are named after the dataset.
@pytest.fixture(scope='session')
def tiny_dataset(tmp_path_factory):
    def make(name='tiny-8x8', root=None, **kwargs):
        root = tmp_path_factory.mktemp('data') if root is None else root
        return make_dataset(os.path.join(str(root), name), **kwargs)
    return make

#----------------------------------------------------------------------------
# A WAV corpus in LJSpeech's layout (wavs/<id>.wav, metadata.csv): one sine tone per clip.

def make_wav_corpus(root, ids, seconds=0.5, rate=22050):
    from edm_spectral.audio import data as data_lib
    os.makedirs(os.path.join(root, 'wavs'), exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    with open(os.path.join(root, 'metadata.csv'), 'w') as f:
        for i, cid in enumerate(ids):
            data_lib.write_wav(os.path.join(root, 'wavs', cid + '.wav'), 0.3 * np.sin(2 * np.pi * (200 + 50 * i) * t), rate)
            f.write(f'{cid}|Text {i}.|Text {i}.\n')
    return root

#----------------------------------------------------------------------------
# A network snapshot written the way EDM wrote its released files: a plain pickle of a dict
# with our persistent EDMPrecond (a small DDPM++ with augment inputs), EDMLoss and
# AugmentPipe. The weights are moved off the initialisation (no exactly-zero tensors).

def write_released_snapshot(path, res=8, seed=0):
    import torch
    from training.networks import EDMPrecond
    from training.loss import EDMLoss
    from training.augment import AugmentPipe
    torch.manual_seed(seed)
    net = EDMPrecond(img_resolution=res, img_channels=3, label_dim=0, use_fp16=False, **tiny_ddpmpp(augment_dim=9, dropout=0.13))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    data = dict(ema=net.eval().requires_grad_(False), loss_fn=EDMLoss(P_mean=-1.0),
        augment_pipe=AugmentPipe(p=0.12, xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1),
        dataset_kwargs=dict(class_name='training.dataset.ImageFolderDataset', path='/authors/datasets/tiny.zip'))
    with open(path, 'wb') as f:
        pickle.dump(data, f)
    return str(path)

# A tiny network snapshot written by training.snapshots (EDMPrecond, tiny_ddpmpp), its weights
# moved off their (partly zero) init by a fixed generator so that the outputs depend on all of
# them; returns the network in eval mode.
def write_tiny_snapshot(path, channels=3, label_dim=0):
    import torch
    from training.networks import EDMPrecond
    from training.snapshots import save_snapshot
    net = EDMPrecond(img_resolution=8, img_channels=channels, label_dim=label_dim, **tiny_ddpmpp())
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    save_snapshot(str(path), net, dataset_kwargs=dict(class_name='training.dataset.ImageFolderDataset'))
    return net.eval()

#----------------------------------------------------------------------------
# Options of training_loop.training_loop for a few steps of a tiny net on the CPU, with
# training.launch's preconditioner and augmentation tables and the safe snapshot readers;
# overrides replace any option.

# The tests' tiny networks: --arch's table (training.launch) at 16 channels, two levels and
# attention at 4x4; tiny_ddpmpp is training.launch.small_ddpmpp at that size, the other keywords
# (augment_dim, dropout, ...) passed on.
def tiny_ddpmpp(**overrides):
    from training import launch
    return launch.small_ddpmpp(model_channels=16, channel_mult=[1,2], attn_resolutions=[4], **overrides)

def tiny_arch(arch='ddpmpp'):
    from training import launch
    if arch == 'ddpmpp':
        return tiny_ddpmpp()
    return dict(launch.ARCHS[arch], model_channels=16, channel_mult=[1,2], num_blocks=1, attn_resolutions=[4])

def loop_kwargs(run_dir, data, precond='edm', arch='ddpmpp', augment=None, **overrides):
    from edm_spectral import checkpoints
    from training import launch
    net_class, loss_class = launch.PRECONDS[precond]
    network_kwargs = dict(class_name=net_class, dropout=0.1, **tiny_arch(arch))
    if augment:
        network_kwargs['augment_dim'] = 9
    kwargs = dict(
        run_dir=run_dir,
        dataset_kwargs=dict(class_name='training.dataset.ImageFolderDataset', path=data, use_labels=False, xflip=False, cache=True),
        data_loader_kwargs=dict(num_workers=0),
        network_kwargs=network_kwargs,
        loss_kwargs=dict(class_name=loss_class),
        optimizer_kwargs=dict(class_name='torch.optim.Adam', lr=1e-3, betas=[0.9, 0.999], eps=1e-8),
        augment_kwargs=launch.augment_pipe_kwargs(augment) if augment else None,
        seed=1, batch_size=4, total_kimg=0.008, kimg_per_tick=0.004, snapshot_ticks=1, state_dump_ticks=1,
        ema_halflife_kimg=0.01, lr_rampup_kimg=0, device='cpu', stop_on_signal=False,
        load_snapshot=checkpoints.load_snapshot, load_training_state=checkpoints.load_training_state,
    )
    kwargs.update(overrides)
    os.makedirs(run_dir, exist_ok=True)
    return kwargs

# The per-tick statistics of a run folder (stats.jsonl), one dict per tick.
def read_stats(run_dir):
    with open(os.path.join(run_dir, 'stats.jsonl')) as f:
        return [json.loads(line) for line in f]

#----------------------------------------------------------------------------
# Child processes: a free TCP port for a hand-made process group, and torchrun with two CPU
# processes. Children import this checkout, run one thread each (two ranks share the cores,
# and CPU kernels round differently per thread count) and inherit no launcher variables.

def find_free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]

@pytest.fixture
def free_port():
    return find_free_port()

def child_env(**extra):
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=REPO)
    for key in ['RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'LOCAL_WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT']:
        env.pop(key, None)
    env.update(extra)
    return env

def _tail(text, limit=4000):
    return text if len(text) <= limit else '...' + text[-limit:]

# torchrun(*args, cwd=REPO, timeout=300, fails=False): `python -m torch.distributed.run
# --standalone --nproc_per_node=2 *args` (a script and its options, or -m and a module); asserts
# a zero exit code (with fails=True: a non-zero one), showing the output otherwise, and returns
# the CompletedProcess.
def run_torchrun(*args, cwd=REPO, timeout=300, fails=False):
    args = [str(a) for a in args]
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', *args]
    proc = subprocess.run(cmd, cwd=str(cwd), env=child_env(), capture_output=True, text=True, timeout=timeout)
    _assert_exit(proc, fails, f'torchrun {" ".join(args)}')
    return proc

# A zero exit code (with fails=True: a non-zero one), showing the output otherwise.
def _assert_exit(proc, fails, what):
    assert (proc.returncode != 0) == fails, (f'{what} exited with {proc.returncode}\n'
        f'--- stdout ---\n{_tail(proc.stdout)}\n--- stderr ---\n{_tail(proc.stderr)}')

@pytest.fixture(scope='session')
def torchrun():
    return run_torchrun

# Several commands in one torchrun launch (one start-up of the two processes and of their
# process group), or with torchrun=False in one plain Python process: each command (a script
# and its options, or -m and a module) runs as `python` would run it, in order; the group lives
# until the last one (their dist.shutdown waits for the end). Rank 0 marks the start of each
# command on stdout and stderr after a barrier, so that the output splits per command; after
# it, an argument {glob:PATTERN} becomes the one file that matches (a file an earlier command
# made). A command that exits non-zero ends the launch with its exit code. Returns the
# CompletedProcess and, per command started, its (stdout, stderr).
_COMMANDS_DRIVER = """
import glob, json, os, runpy, sys
import torch
from torch_utils import distributed as dist

def resolve(arg):
    if not (arg.startswith('{glob:') and arg.endswith('}')):
        return arg
    found = glob.glob(arg[len('{glob:'):-1])
    if len(found) != 1:
        sys.exit(f'{arg} matches {found}, not one file')
    return found[0]

commands = json.load(open(sys.argv[1]))
shutdown, dist.shutdown = dist.shutdown, lambda: None
for index, argv in enumerate(commands):
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    if int(os.environ.get('RANK', '0')) == 0:
        for stream in (sys.stdout, sys.stderr):
            print(f'@@@ command {index}', file=stream, flush=True)
    argv = [resolve(arg) for arg in argv]
    try:
        if argv[0] == '-m':
            sys.argv = argv[1:]
            runpy.run_module(argv[1], run_name='__main__', alter_sys=True)
        else:
            sys.argv = argv
            runpy.run_path(argv[0], run_name='__main__')
    except SystemExit as e:
        if e.code not in (0, None):
            sys.stdout.flush()
            shutdown()
            sys.exit(e.code)
    sys.stdout.flush()
    sys.stderr.flush()
shutdown()
"""

def run_commands(commands, root, timeout=300, fails=False, torchrun=True, cwd=REPO, env=None):
    commands = [[str(a) for a in argv] for argv in commands]
    with open(os.path.join(str(root), 'commands.json'), 'w') as f:
        json.dump(commands, f)
    driver = os.path.join(str(root), 'commands_driver.py')
    with open(driver, 'w') as f:
        f.write(_COMMANDS_DRIVER)
    if torchrun:
        proc = run_torchrun(driver, os.path.join(str(root), 'commands.json'), cwd=cwd, timeout=timeout, fails=fails)
    else:
        proc = subprocess.run([sys.executable, driver, os.path.join(str(root), 'commands.json')], cwd=str(cwd),
            env=env or child_env(), capture_output=True, text=True, timeout=timeout)
        _assert_exit(proc, fails, str(commands))
    split = lambda text: [part.split('\n', 1)[1] if '\n' in part else '' for part in text.split('@@@ command ')[1:]]
    return proc, list(zip(split(proc.stdout), split(proc.stderr)))

# The training loop with a deterministic loss, so that the per-rank noise streams do not enter
# a comparison of two processes with one: `python ddp_driver.py RUN_DIR DATA`. The loop
# imports the loss from this file by name (ddp_driver.DeterministicLoss), so nothing runs on
# import; tests/test_train.py runs train_deterministic in its own process too.
DETERMINISTIC_DRIVER = '''
import os, sys
import torch
from training import launch, training_loop

class DeterministicLoss:
    def __call__(self, net, images, labels=None, augment_pipe=None):
        sigma = (images.mean(dim=[1, 2, 3], keepdim=True).abs() + 0.5)
        y = images + torch.sin(images * 7 + 1) * sigma
        return (net(y, sigma.flatten(), labels) - images) ** 2 / sigma ** 2

def train_deterministic(run_dir, data):
    os.makedirs(run_dir, exist_ok=True)
    training_loop.training_loop(run_dir=run_dir,
        dataset_kwargs=dict(class_name='training.dataset.ImageFolderDataset', path=data, cache=True),
        data_loader_kwargs=dict(num_workers=0),
        network_kwargs=dict(class_name='training.networks.EDMPrecond', **launch.small_ddpmpp(model_channels=16, channel_mult=[1,2],
            attn_resolutions=[4], dropout=0)),
        loss_kwargs=dict(class_name='ddp_driver.DeterministicLoss'),
        optimizer_kwargs=dict(class_name='torch.optim.Adam', lr=1e-3, betas=[0.9, 0.999], eps=1e-8),
        seed=0, batch_size=8, batch_gpu=2, total_kimg=0.024, kimg_per_tick=0.008, snapshot_ticks=1, state_dump_ticks=100,
        ema_halflife_kimg=0.01, lr_rampup_kimg=0, export_net='raw', device='cpu')

if __name__ == '__main__':
    train_deterministic(sys.argv[1], sys.argv[2])
'''

# One two-process (Gloo) launch checked by several test files, each against the same command
# in one process or against what one process must give: generate.py (PNGs, grid), fid.py ref
# (statistics, features), fid.py calc --network (FID, KID), the sweep's eval step, the
# training loop with a deterministic loss (weights), train.py with the real stochastic loss
# and a spectral term (one run folder, per-rank streams, both ranks' statistics, a grid), the
# DiffWave trainer and then the vocoder on its checkpoint (both ranks' crops, the clips spread
# over the ranks), and last fid.py calc with a reference of another detector, which must end every rank with one
# error line. The inputs: a tiny network snapshot, 24 random 16x16 images, their reference
# statistics (with features, for KID), the sweep's prepare output for a tiny 8x8 dataset, two
# 8x8 datasets of 16 and 64 images, and a corpus of five WAV clips in LJSpeech's layout. GLOO_ARGS holds the options the tests repeat in one
# process (without input and output paths); `outputs` each command's (stdout, stderr).
GLOO_ARGS = dict(
    generate=['--seeds=0-6', '--batch=2', '--steps=3', '--S_churn=5', '--device=cpu'],
    fid_ref=['ref', '--detector=standin', '--workers=0', '--device=cpu', '--batch=5', '--features'],
    fid_calc=['calc', '--seeds=0-12', '--batch=3', '--steps=3', '--S_churn=5', '--kid', '--detector=standin', '--workers=0', '--device=cpu'],
    sweep_eval=['eval', '--seeds=0-7', '--repeats=3', '--steps=2', '--batch=8', '--detector=standin', '--device=cpu'],
    audio_train=['--residual-layers=2', '--residual-channels=8', '--dilation-cycle=2', '--batch=4', '--crop-frames=8', '--workers=0',
        '--tick-steps=1', '--steps=2', '--device=cpu', '--spectral=wavelet', '--spectral-weight=1e-4'],
    audio_seeds=[0, 1],
)

@pytest.fixture(scope='session')
def gloo_runs(tmp_path_factory):
    return built_once(tmp_path_factory, 'gloo', _build_gloo_runs)

def _build_gloo_runs(root):
    import PIL.Image
    import fid
    from edm_spectral import sweep
    net = str(root / 'net.pkl')
    write_tiny_snapshot(net)
    rnd = np.random.RandomState(0)
    os.makedirs(root / 'images')
    for i in range(24):
        PIL.Image.fromarray(rnd.randint(0, 256, size=[16, 16, 3], dtype=np.uint8)).save(root / 'images' / f'{i:03d}.png')
    images, ref = str(root / 'images'), str(root / 'ref.npz')
    invoke_cli(fid.main, GLOO_ARGS['fid_ref'] + [f'--data={images}', f'--dest={ref}'])       # the one-process statistics
    sweep_data = make_dataset(str(root / 'sweep-data'), res=8)   # the resolution of the network, for the spectrum
    invoke_cli(sweep.cmdline, ['prepare', f'--data={sweep_data}', f'--outdir={root / "sweep"}', '--detector=standin', '--device=cpu'])
    sweep_run = root / 'sweep' / 'run'
    os.makedirs(sweep_run)
    write_tiny_snapshot(sweep_run / 'network-snapshot-000000.pkl')
    with open(sweep_run / 'weight-movement.json', 'w') as f:
        json.dump(dict(snapshot='network-snapshot-000000.pkl', relative_l2=0.0), f)
    np.savez(root / 'inception.npz', mu=np.zeros(8), sigma=np.eye(8))   # no 'detector' key: Inception statistics
    (root / 'ddp_driver.py').write_text(DETERMINISTIC_DRIVER)   # beside the launch's driver: importable by name
    train_data, deterministic_data = make_dataset(str(root / 'data' / 'tiny-8x8')), make_dataset(str(root / 'data64' / 'tiny-8x8'), num=64)
    corpus = make_wav_corpus(str(root / 'lj'), ['LJ001-0001', 'LJ001-0002', 'LJ002-0001', 'LJ003-0001', 'LJ003-0002'], seconds=0.4)
    sweep_inputs = [f'--ref={root / "sweep" / "ref.npz"}', f'--spectrum={root / "sweep" / "dataset-spectrum.json"}']
    workers = os.path.join(REPO, 'tests', 'gloo_workers')
    commands = dict(
        two_ranks=[os.path.join(workers, 'two_ranks.py'), root / 'two-ranks'],
        generate=['generate.py', f'--network={net}', *GLOO_ARGS['generate'], f'--outdir={root / "generate"}', f'--grid={root / "grid.png"}'],
        fid_ref=['fid.py', *GLOO_ARGS['fid_ref'], f'--data={images}', f'--dest={root / "ref-two.npz"}'],
        fid_calc=['fid.py', *GLOO_ARGS['fid_calc'], f'--network={net}', f'--ref={ref}'],
        sweep_eval=['-m', 'edm_spectral.sweep', *GLOO_ARGS['sweep_eval'], f'--run-dir={sweep_run}', *sweep_inputs],
        train_deterministic=[root / 'ddp_driver.py', root / 'ddp', deterministic_data],
        stop_poll=[os.path.join(workers, 'stop_poll.py'), root / 'stop-poll', train_data, root / 'stop-poll-result'],
        train=['train.py', f'--outdir={root / "runs"}', f'--data={train_data}', '--device=cpu', '--cbase=16', '--cres=1,2', '--batch=8',
            '--batch-gpu=2', '--duration=0.000016', '--tick=1', '--snap=1', '--dump=1', '--spectral=fourier-amp', '--arch=ncsnpp', '--grid-seeds=0-3'],
        audio_train=['-m', 'edm_spectral.audio.train', '--data', corpus, '--outdir', root / 'audio-runs', *GLOO_ARGS['audio_train']],
        audio_vocode=['-m', 'edm_spectral.audio.vocode', '--ckpt', f'{{glob:{root / "audio-runs" / "*" / "weights.pt"}}}', '--data', corpus,
            '--outdir', root / 'vocoded', '--seeds=' + ','.join(map(str, GLOO_ARGS['audio_seeds'])), '--device=cpu'],
        bad_ref=['fid.py', 'calc', f'--network={net}', '--seeds=0-3', f'--ref={root / "inception.npz"}', '--detector=standin', '--workers=0', '--device=cpu'],
    )
    proc, outputs = run_commands(list(commands.values()), root, fails=True)
    assert len(outputs) == len(commands), proc.stdout + proc.stderr
    return dict(root=str(root), net=net, images=images, ref=ref, two_ref=str(root / 'ref-two.npz'), generate=str(root / 'generate'),
        grid=str(root / 'grid.png'), sweep_run=str(sweep_run), sweep_inputs=sweep_inputs, ddp_driver=str(root / 'ddp_driver.py'),
        ddp_run=str(root / 'ddp'), deterministic_data=deterministic_data, train_runs=str(root / 'runs'), corpus=corpus,
        audio_runs=str(root / 'audio-runs'), vocoded=str(root / 'vocoded'), two_ranks=str(root / 'two-ranks'),
        stop_poll_run=str(root / 'stop-poll'), stop_poll=str(root / 'stop-poll-result'), returncode=proc.returncode,
        outputs=dict(zip(commands, outputs)))

#----------------------------------------------------------------------------
# fn(*args) in a process forked from this one (no second start-up of Python and torch):
# start_forked starts it with its stdout in the file `out` and its stderr in `err` (default:
# the same file) and returns the multiprocessing process, for a test that signals it;
# finish_forked waits (killing it after timeout s) and returns a CompletedProcess. The exit
# code is fn's return value (None: 0), a SystemExit's code, or 1 after an exception, whose
# traceback goes to stderr. run_forked does both.

def _forked_main(fn, args, out, err):
    code = 1
    for path, fds in ([(out, (1, 2))] if err is None else [(out, (1,)), (err, (2,))]):
        with open(path, 'w') as f:
            for fd in fds:
                os.dup2(f.fileno(), fd)
    sys.stdout, sys.stderr = open(1, 'w', buffering=1, closefd=False), open(2, 'w', buffering=1, closefd=False)
    try:
        result = fn(*args)
        code = 0 if result is None else int(result)
    except SystemExit as e:
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
        code = e.code if isinstance(e.code, int) else int(e.code is not None)
    except BaseException:
        import traceback
        traceback.print_exc()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

def start_forked(fn, args, out, err=None):
    import multiprocessing
    proc = multiprocessing.get_context('fork').Process(target=_forked_main, args=(fn, tuple(args), str(out), err and str(err)))
    proc.start()
    return proc

def finish_forked(proc, out, err=None, timeout=300):
    proc.join(timeout)
    if proc.is_alive():
        proc.kill()
        proc.join()
    with open(out) as f:
        stdout = f.read()
    stderr = '' if err is None else open(err).read()
    return subprocess.CompletedProcess([], proc.exitcode, stdout, stderr)

def run_forked(fn, args, out, err=None, timeout=300):
    return finish_forked(start_forked(fn, args, out, err), out, err, timeout)

#----------------------------------------------------------------------------
# Under pytest-xdist (`make test` runs two workers, -n 2 --dist loadfile: most of the suite's
# time is Python and torch starting in child processes, which the second core overlaps), a
# session fixture would be built once per worker. built_once(tmp_path_factory, name, build)
# builds it once per run instead: the first worker to ask calls build(folder) under a file lock
# in the run's shared temporary folder and stores its JSON result (or its failure, which every
# worker then reports); the others wait for it and read it. In one process it just builds.

def built_once(tmp_path_factory, name, build):
    if not os.environ.get('PYTEST_XDIST_WORKER'):
        return build(tmp_path_factory.mktemp(name))
    import fcntl
    shared = tmp_path_factory.getbasetemp().parent   # pytest-N/, above each worker's popen-gwK/
    result = shared / f'{name}.json'
    with open(shared / f'{name}.lock', 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not result.exists():
            (shared / name).mkdir()
            try:
                result.write_text(json.dumps(dict(value=build(shared / name))))
            except BaseException as e:
                result.write_text(json.dumps(dict(error=f'{type(e).__name__}: {e}')))
                raise
    stored = json.loads(result.read_text())
    if 'error' in stored:
        pytest.fail(f'the shared fixture {name} failed in another worker: {stored["error"]}', pytrace=False)
    return stored['value']

# xdist's loadfile hands the files out in collection order, each to the next free worker: the
# long ones go first, so that the many short ones even out the two workers' ends (measured
# order, longest first; the rest keep pytest's order).
_LONG_FILES = ['test_generate.py', 'test_install.py', 'test_speed.py', 'test_train.py', 'test_sweep.py', 'test_train_failures.py',
    'test_networks.py', 'test_audio_metrics.py', 'test_metrics_during_training.py', 'test_fid.py', 'test_toy.py', 'test_fine_tune.py']

def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(_LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))

#----------------------------------------------------------------------------
# cli(command, args): invoke a click command in this process. Without fails_with, asserts
# exit code 0 and shows the output and any traceback otherwise. With fails_with, asserts a
# non-zero exit with that text in the output and no exception other than click's exit (a
# message, not a traceback). Returns click's Result.

def invoke_cli(command, args, fails_with=None, **kwargs):
    from click.testing import CliRunner
    args = [str(a) for a in args]
    result = CliRunner().invoke(command, args, **kwargs)
    where = f'{command.name} {" ".join(args)}'
    crash = ''
    if result.exc_info is not None and not isinstance(result.exception, SystemExit):
        import traceback
        crash = '--- exception ---\n' + ''.join(traceback.format_exception(*result.exc_info))
    if fails_with is None:
        assert result.exit_code == 0, f'{where}\nexited with {result.exit_code}\n--- output ---\n{_tail(result.output)}\n{crash}'
    else:
        assert result.exit_code != 0, f'{where}\nsucceeded; expected an error with {fails_with!r}\n--- output ---\n{_tail(result.output)}'
        assert not crash, f'{where}\nraised instead of printing an error\n{crash}'
        assert fails_with in result.output, f'{where}\nerror without {fails_with!r}\n--- output ---\n{_tail(result.output)}'
    return result

@pytest.fixture(scope='session')
def cli():
    return invoke_cli

#----------------------------------------------------------------------------
# Persistent classes need their module's source on disk: source_module(src, prefix) writes
# src to a module in tmp_path, imports it and forgets it after the test.

@pytest.fixture
def source_module(tmp_path, monkeypatch):
    import importlib
    names = []
    def load(src, prefix='tiny'):
        name = f'{prefix}_{os.path.basename(str(tmp_path)).replace("-", "_")}'
        (tmp_path / f'{name}.py').write_text(src)
        monkeypatch.syspath_prepend(str(tmp_path))
        names.append(name)
        return importlib.import_module(name)
    yield load
    for name in names:
        sys.modules.pop(name, None)

# An object that pickles the way torch_utils.persistence writes a persistent object in the
# released format, from a hand-made meta dict (type, version, module_src, class_name, state).
class PersistentMeta:
    def __init__(self, meta):
        self.meta = meta

    def __reduce__(self):
        from torch_utils import persistence
        return (persistence._reconstruct_persistent_obj, (self.meta,))
