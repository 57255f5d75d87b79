"""The checkerboard toy experiment of the paper (Fig. 1 and Fig. 2), the project's `make demo`.

Trains the same small DDPM twice on grayscale checkerboards, once with the plain epsilon MSE
and once with the amplitude+phase Fourier term added, for a few training seeds; samples both
from the same noise and scores the samples against the ground truth with three metrics that
stay well defined for a sparse spectrum (see `evaluate`), reported per model and as paired
differences per training seed."""

import contextlib
import copy
import json
import os
import re
import shutil
import sys
import time

import click
import numpy as np
import PIL.Image
import torch

import dnnlib
from edm_spectral.cli import spectral_options, spectral_kwargs_from_options

#----------------------------------------------------------------------------
# Experiment sizes. `demo` is the setting edm_spectral/toy_search.py picked (its r16-c16), for
# the 10-minute budget of `make demo` on 2 CPU cores; `full` is the paper's 64x64 setting,
# `smoke` the test suite's end-to-end check. Training writes `ticks` status lines (the
# progress line's steps) per run.

PRESETS = {
    'smoke': dict(resolution=16, checker_sizes=[2, 4],  num_images=64,   model_channels=8,  channel_mult=[1, 2],       kimg=0.064, batch=8,  num_samples=8,   steps=8,   ticks=2,  num_seeds=1),
    'demo':  dict(resolution=16, checker_sizes=[2, 4],  num_images=1024, model_channels=16, channel_mult=[1, 2],       kimg=12,    batch=32, num_samples=256, steps=32,  ticks=12, num_seeds=3),
    'full':  dict(resolution=64, checker_sizes=[8, 16], num_images=4096, model_channels=64, channel_mult=[1, 2, 2, 2], kimg=400,   batch=64, num_samples=256, steps=100, ticks=40, num_seeds=3),
}

# The regularized model's spectral term: the paper's amplitude+phase loss in its printed
# product form, "unweighted" (constant lambda = 1), only where sigma < 1. At every noise level
# (the paper's wording) it leaves no valid sample in the search: at high noise the one-step
# estimate is a blur, and matching its amplitudes to the target's fights the MSE.
DEFAULT_SPECTRAL = dict(kind='fourier-amp-phase', weight=1.0, sigma_max=1.0)

# A sample is a valid checkerboard when an ideal one of a training checker size lies within
# this mean absolute pixel error (images in [-1, 1]: 0.1 is 5 % of the range, e.g. 2.5 % of
# the pixels flipped, or every pixel 13 grey levels off).
VALID_TOLERANCE = 0.1

#----------------------------------------------------------------------------
# Ground-truth data: +-1 checkerboards with a random checker size from `checker_sizes` and a
# random offset along each axis, so every image has the same amplitude spectrum as the other
# images of its checker size, but its own phase. Returned as uint8 [N, 1, R, R].

def checkerboard(resolution, size, dy, dx):
    coords = np.arange(resolution)
    rows = ((coords + dy) // size) % 2
    cols = ((coords + dx) // size) % 2
    return (rows[:, None] ^ cols[None, :]).astype(np.uint8) * 255

def make_checkerboards(num_images, resolution, checker_sizes, seed=0):
    rnd = np.random.RandomState(seed)
    images = np.empty([num_images, 1, resolution, resolution], dtype=np.uint8)
    for i in range(num_images):
        size = int(rnd.choice(checker_sizes))
        dy, dx = rnd.randint(2 * size, size=2)
        images[i, 0] = checkerboard(resolution, size, dy, dx)
    return images

# Every distinct ideal checkerboard of the given checker sizes (all offsets), uint8 [B, 1, R, R].
def all_checkerboards(resolution, checker_sizes):
    boards = [checkerboard(resolution, int(size), dy, dx) for size in checker_sizes for dy in range(2 * int(size)) for dx in range(2 * int(size))]
    return np.stack(boards)[:, None]

#----------------------------------------------------------------------------
# Metrics. Spectra are the mean-removed 2-D power spectra of edm_spectral.spectrum, averaged
# over the set. A checkerboard's power sits on a sparse lattice of frequencies (odd
# multiples of R/2c along each axis); the ground-truth set's "support" is where its mean
# power is not zero. Radial averaging would mix those frequencies with empty ones, and a
# log-spectrum distance would be dominated by the logarithm of the empty bins' round-off.

def _mean_power(images):
    from edm_spectral.spectrum import power_spectrum_2d
    return power_spectrum_2d(images).mean(dim=(0, 1))

def lattice_support(gt_images, rel_threshold=1e-6):
    power_gt = _mean_power(gt_images)
    return power_gt > rel_threshold * power_gt.max()

# Fraction of a set's power at frequencies where the ground truth has none: the paper's
# "leaks energy around the checkerboard frequencies" (0 = none leaks).
def leaked_power_fraction(images, gt_images, rel_threshold=1e-6):
    power = _mean_power(images)
    empty = ~lattice_support(gt_images, rel_threshold)
    return float(power[empty].sum() / power.sum().clamp(min=1e-30))

# Relative L1 error of the set's mean power on the ground-truth support:
# sum_S |P - P_gt| / sum_S P_gt. 0 = the lattice frequencies carry the right power (right
# contrast and the right mix of checker sizes); a blank set scores 1.
def lattice_power_error(images, gt_images, rel_threshold=1e-6):
    power, power_gt = _mean_power(images), _mean_power(gt_images)
    support = lattice_support(gt_images, rel_threshold)
    return float((power - power_gt)[support].abs().sum() / power_gt[support].sum())

# Per sample: the mean absolute pixel error (images in [-1, 1]) to the nearest ideal
# checkerboard of the given checker sizes, any offset. float64 [N].
def nearest_checkerboard_error(images, checker_sizes):
    from edm_spectral.spectrum import _to_float_images
    x = _to_float_images(images)
    if x.shape[1] != 1 or x.shape[2] != x.shape[3]:
        raise ValueError(f'expected square grayscale images [N, 1, R, R], got shape {list(x.shape)}')
    boards = _to_float_images(all_checkerboards(x.shape[2], checker_sizes)).reshape(1, -1, x.shape[2] * x.shape[3])
    x = x.reshape(x.shape[0], 1, -1)
    return torch.cat([(chunk - boards).abs().mean(dim=2).min(dim=1).values for chunk in x.split(16)])

# The three scores of a set of samples against the ground truth (the training set).
def evaluate(images, gt_images, checker_sizes, tolerance=VALID_TOLERANCE):
    errors = nearest_checkerboard_error(images, checker_sizes)
    return dict(
        valid           = float((errors <= tolerance).to(torch.float64).mean()),
        leaked_power    = leaked_power_fraction(images, gt_images),
        lattice_error   = lattice_power_error(images, gt_images),
        board_error     = float(errors.mean()),
    )

# What the summary reports, and which direction is better.
METRICS = [
    ('valid',           'valid samples',                'higher'),
    ('leaked_power',    'leaked power',                 'lower'),
    ('lattice_error',   'power error on the lattice',   'lower'),
]

def _mean_std(values):
    values = np.asarray(values, dtype=np.float64)
    return dict(mean=float(values.mean()), std=float(values.std(ddof=1)) if len(values) > 1 else 0.0)

# Paired differences spectral - baseline per training seed (both runs of a seed share
# initial weights, data order, training noise and sampling noise), and in how many seeds the
# spectral model is better (a tie is not better).
def paired_differences(baseline_rows, spectral_rows):
    by_seed = {row['seed']: row for row in baseline_rows}
    pairs = [(by_seed[row['seed']], row) for row in spectral_rows if row['seed'] in by_seed]
    if not pairs:
        raise ValueError('no training seed has both a baseline and a spectral run')
    out = {}
    for key, _label, better in METRICS:
        d = np.array([s[key] - b[key] for b, s in pairs])
        wins = int((d > 0).sum() if better == 'higher' else (d < 0).sum())
        out[key] = dict(_mean_std(d), per_seed=d.tolist(), better=wins, seeds=len(pairs))
    return out

#----------------------------------------------------------------------------
# Write images in the dataset_tool.py folder layout that ImageFolderDataset reads.

def write_image_folder(images, path):
    os.makedirs(path, exist_ok=True)
    for idx, img in enumerate(images):
        name = f'{idx // 1000:05d}/img{idx:08d}.png'
        os.makedirs(os.path.join(path, os.path.dirname(name)), exist_ok=True)
        PIL.Image.fromarray(img[0], 'L').save(os.path.join(path, name), compress_level=0)
    with open(os.path.join(path, 'dataset.json'), 'w') as f:
        json.dump({'labels': None}, f)

#----------------------------------------------------------------------------
# A quiet console: while a run trains and samples, everything it prints goes to its
# log.txt, and the console shows one progress line (updated in place on a terminal, printed
# once when the run ends otherwise).

class RunConsole:
    def __init__(self, log_path, label, total_kimg, stream=None):
        self.log_path, self.label, self.total_kimg = log_path, label, total_kimg
        self.stream = stream if stream is not None else sys.stdout
        self.tty = hasattr(self.stream, 'isatty') and self.stream.isatty()
        self.pending = ''
        self.t_start = self.t_phase = time.time()
        self.phase = None
        self.line = ''

    def __enter__(self):
        self.log = open(self.log_path, 'a')
        self._redirects = contextlib.ExitStack()
        self._redirects.enter_context(contextlib.redirect_stdout(self))
        self._redirects.enter_context(contextlib.redirect_stderr(self))
        self.show('train', 0, self.total_kimg, 'kimg')
        return self

    def __exit__(self, exc_type, exc, tb):
        self._redirects.close()
        self.log.close()
        status = f'done in {_format_seconds(time.time() - self.t_start)}' if exc_type is None else f'FAILED, see {self.log_path}'
        self._draw(f'{self.line}  {status}', final=True)
        return False

    # File protocol for the redirected prints; the training loop's status lines carry "kimg X".
    def write(self, text):
        self.log.write(text)
        if '\n' in text:
            self.log.flush() # the log can be followed while the run goes on
        self.pending += text
        *lines, self.pending = self.pending.split('\n')
        for line in lines:
            m = re.match(r'tick\s+\d+\s+kimg\s+([0-9.]+)', line)
            if m:
                self.show('train', min(float(m.group(1)), self.total_kimg), self.total_kimg, 'kimg')
        return len(text)

    def flush(self):
        self.log.flush()

    def isatty(self):
        return False

    def show(self, phase, done, total, unit):
        if phase != self.phase:
            self.phase, self.t_phase = phase, time.time()
        elapsed = time.time() - self.t_phase
        eta = _format_seconds(elapsed / done * (total - done)) if done > 0 else '?'
        filled = int(round(20 * done / total)) if total > 0 else 20
        self.line = f'{self.label:<24s} {phase:<6s} [{"#" * filled}{"." * (20 - filled)}] {done:g}/{total:g} {unit}  ETA {eta:>5s}'
        self._draw(self.line)

    def _draw(self, text, final=False):
        if self.tty:
            self.stream.write('\r' + text.ljust(100) + ('\n' if final else ''))
            self.stream.flush()
        elif final:
            self.stream.write(text + '\n')
            self.stream.flush()

def _format_seconds(seconds):
    seconds = int(round(seconds))
    return f'{seconds // 60}:{seconds % 60:02d}'

#----------------------------------------------------------------------------
# One training run with the project's real training loop: VPPrecond + a small DDPM++-style
# SongUNet + DDPMLoss (discrete linear-beta DDPM, see docs/ARCHITECTURE.md). Returns the
# path of the final snapshot.

def train_ddpm(run_dir, data_dir, cfg, spectral_kwargs, seed, device):
    from training import launch, snapshots, training_loop
    network_kwargs = dnnlib.EasyDict(class_name='training.networks.VPPrecond',
        **launch.small_ddpmpp(model_channels=cfg.model_channels, channel_mult=cfg.channel_mult, dropout=0.0))
    loss_kwargs = dnnlib.EasyDict(class_name='training.loss.DDPMLoss', spectral_kwargs=spectral_kwargs)
    total_kimg = cfg.kimg
    training_loop.training_loop(
        run_dir             = run_dir,
        dataset_kwargs      = dnnlib.EasyDict(class_name='training.dataset.ImageFolderDataset', path=data_dir, use_labels=False, xflip=False, cache=True),
        data_loader_kwargs  = dnnlib.EasyDict(pin_memory=False, num_workers=0),
        network_kwargs      = network_kwargs,
        loss_kwargs         = loss_kwargs,
        optimizer_kwargs    = dnnlib.EasyDict(class_name='torch.optim.Adam', lr=cfg.lr, betas=[0.9, 0.999], eps=1e-8),
        augment_kwargs      = None,
        seed                = seed,
        batch_size          = cfg.batch,
        total_kimg          = total_kimg,
        ema_halflife_kimg   = total_kimg / 20,      # short-run EMA: a stock 500 kimg half-life would export the init
        ema_rampup_ratio    = 0.05,
        lr_rampup_kimg      = total_kimg / 20,
        kimg_per_tick       = total_kimg / cfg.ticks,
        snapshot_ticks      = 10**9,                # snapshots only at tick 0 and at the end
        state_dump_ticks    = 10**9,
        cudnn_benchmark     = True,
        device              = device,
    )
    return snapshots.latest_file(run_dir, 'network-snapshot', '.pkl')

#----------------------------------------------------------------------------
# Sample a trained model with deterministic DDIM (the ablation sampler's Euler/VP setting),
# sampling seeds 0 .. num_samples-1: every model starts from the same noise.

def sample_ddim(snapshot_path, num_samples, num_steps, device, console=None):
    from edm_spectral.checkpoints import load_network
    from training.sampling import generate_images
    net = load_network(snapshot_path, device=device)
    batches = []
    for start in range(0, num_samples, 64): # the batches generate_images would form, one at a time for the progress line
        batches.append(generate_images(net, seeds=list(range(start, min(start + 64, num_samples))), device=device,
            max_batch_size=64, num_steps=num_steps, solver='euler', discretization='vp', schedule='vp', scaling='vp'))
        if console is not None:
            console.show('sample', start + len(batches[-1]), num_samples, 'images')
    return torch.cat(batches)

#----------------------------------------------------------------------------
# Train one model and sample it, quietly (see RunConsole). With `reuse`, a run folder that
# holds the samples of the same settings is read back instead (the search script resumes).
# Returns uint8 samples [num_samples, 1, R, R].

def train_and_sample(run_dir, data_dir, cfg, spectral_kwargs, train_seed, device, label, reuse=False):
    settings = json.loads(json.dumps(dict(config=dict(cfg), spectral=spectral_kwargs, seed=train_seed)))
    settings_path, samples_path = os.path.join(run_dir, 'run.json'), os.path.join(run_dir, 'samples.npy')
    if reuse and os.path.isfile(samples_path) and os.path.isfile(settings_path) and json.load(open(settings_path)) == settings:
        print(f'{label:<24s} reused {samples_path}')
        return torch.from_numpy(np.load(samples_path))
    shutil.rmtree(run_dir, ignore_errors=True)
    os.makedirs(run_dir)
    with RunConsole(os.path.join(run_dir, 'log.txt'), label, cfg.kimg) as console:
        snapshot = train_ddpm(run_dir, data_dir, cfg, copy.deepcopy(spectral_kwargs), seed=train_seed, device=device)
        images = sample_ddim(snapshot, cfg.num_samples, cfg.steps, device, console=console).cpu()
    np.save(samples_path, images.numpy())
    with open(settings_path, 'w') as f:
        json.dump(settings, f, indent=2)
    return images

# The training set of a setting, written once per output folder; returns (folder, images).
def prepare_data(outdir, cfg, data_seed):
    data_dir = os.path.join(outdir, 'data')
    gt = make_checkerboards(cfg.num_images, cfg.resolution, cfg.checker_sizes, seed=data_seed)
    shutil.rmtree(data_dir, ignore_errors=True)  # results of an earlier run are replaced, never mixed
    write_image_folder(gt, data_dir)
    return data_dir, torch.as_tensor(gt)

def make_config(preset='demo', overrides=None):
    cfg = dnnlib.EasyDict(PRESETS[preset], lr=2e-3)
    cfg.update(overrides or {})
    return cfg

#----------------------------------------------------------------------------

def run_experiment(outdir, preset='demo', spectral_kwargs=None, seed=0, num_seeds=None, data_seed=0, device=None, overrides=None):
    from torch_utils import distributed as dist

    cfg = make_config(preset, overrides)
    num_seeds = cfg.num_seeds if num_seeds is None else num_seeds
    device = dist.resolve_device(device)
    os.makedirs(outdir, exist_ok=True)
    t_start, cpu_start = time.time(), time.process_time()
    data_dir, gt = prepare_data(outdir, cfg, data_seed)

    # Train baseline and regularized models with identical settings; for each training seed
    # both see the same initial weights, data order and noise draws.
    spectral_kwargs = dict(DEFAULT_SPECTRAL, **(spectral_kwargs or {}))
    runs = {'baseline': None, 'spectral': spectral_kwargs}
    print(f'Training {len(runs)} models x {num_seeds} training seeds ({cfg.kimg:g} kimg each); full logs in {outdir}/run-*/log.txt')
    samples = {name: {} for name in runs}
    per_seed = {name: [] for name in runs}
    timings = {name: 0.0 for name in runs}
    for train_seed in range(seed, seed + num_seeds):
        for name, kwargs in runs.items():
            t0 = time.time()
            run_dir = os.path.join(outdir, f'run-{name}-seed{train_seed}')
            images = train_and_sample(run_dir, data_dir, cfg, kwargs, train_seed, device, label=f'{name} (seed {train_seed})')
            per_seed[name].append(dict(evaluate(images, gt, cfg.checker_sizes), seed=train_seed))
            samples[name][train_seed] = images
            timings[name] += time.time() - t0
    reference = dict(evaluate(gt[:cfg.num_samples], gt, cfg.checker_sizes), seed=None)

    # Figures of the first training seed, and spectra of all samples.
    figures = save_figures(outdir, cfg, gt, {name: s[seed] for name, s in samples.items()},
        {name: torch.cat(list(s.values())) for name, s in samples.items()}, {name: rows[0] for name, rows in per_seed.items()}, seed)

    summary = dict(
        preset=preset, config=dict(cfg), spectral=spectral_kwargs, seed=seed, num_seeds=num_seeds, data_seed=data_seed,
        device=str(device), valid_tolerance=VALID_TOLERANCE,
        metrics={name: {key: _mean_std([row[key] for row in rows]) for key in ['valid', 'leaked_power', 'lattice_error', 'board_error']} for name, rows in per_seed.items()},
        ground_truth=reference, per_seed=per_seed, paired=paired_differences(per_seed['baseline'], per_seed['spectral']),
        figures=figures, seconds=dict(timings, total=time.time() - t_start, cpu=time.process_time() - cpu_start), threads=torch.get_num_threads(),
        load_average=list(os.getloadavg()))
    with open(os.path.join(outdir, 'summary.json'), 'w') as f:
        json.dump(summary, f, indent=2)
    with open(os.path.join(outdir, 'summary.md'), 'w') as f:
        f.write(format_summary_md(summary))
    print()
    print(format_summary_md(summary))
    return summary

#----------------------------------------------------------------------------
# Figures: captioned grids (paper Fig. 1), single samples side by side, enlarged, and the
# spectra (Fig. 2): radially averaged with the checker frequencies marked, and 2-D.

def save_figures(outdir, cfg, gt, first_seed_samples, all_samples, first_seed_scores, seed):
    from edm_spectral.images import make_captioned_grid
    shown = {'ground truth': gt[:cfg.num_samples], **first_seed_samples}
    figures = {}
    zoom = max(1, 48 // cfg.resolution)
    for name, images in shown.items():
        if name == 'ground truth':
            caption = f'ground truth: {min(64, len(images))} training images'
        else:
            caption = f'{name}, training seed {seed}: {first_seed_scores[name]["valid"]:.0%} of {cfg.num_samples} valid'
        path = os.path.join(outdir, f'grid-{name.replace(" ", "-")}.png')
        make_captioned_grid(images[:64], grid_w=8, zoom=zoom, gutter=2, caption=caption).save(path)
        figures[name] = os.path.basename(path)
    figures['samples'] = save_samples_figure(shown, os.path.join(outdir, 'samples.png'), cfg.checker_sizes, seed)
    figures['spectra'] = save_spectrum_figure({'ground truth': gt, **all_samples}, os.path.join(outdir, 'spectra.png'), cfg)
    return figures

def _new_figure(figsize):
    from matplotlib.figure import Figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig

# Rows: ground truth, then each model from the same sampling seeds (the same noise); each
# sample titled with the error to its nearest ideal checkerboard (green: valid).
def save_samples_figure(shown, path, checker_sizes, seed, count=6):
    fig = _new_figure((1.3 * count + 0.8, 1.45 * len(shown)))
    for row, (name, images) in enumerate(shown.items()):
        errors = nearest_checkerboard_error(images[:count], checker_sizes)
        for col in range(min(count, len(images))):
            ax = fig.add_subplot(len(shown), count, row * count + col + 1)
            ax.imshow(images[col, 0].numpy(), cmap='gray', vmin=0, vmax=255, interpolation='nearest')
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f'err {errors[col]:.2f}', fontsize=8, color='green' if errors[col] <= VALID_TOLERANCE else 'red')
            if col == 0:
                ax.set_ylabel(name if name == 'ground truth' else f'{name}\nseed {seed}', fontsize=9)
    fig.suptitle(f'Samples from sampling seeds 0-{count - 1} (same noise for both models); err: mean |error| to the nearest checkerboard', fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return os.path.basename(path)

def save_spectrum_figure(sets, path, cfg):
    from edm_spectral import spectrum
    gt = sets['ground truth']
    support = lattice_support(gt).numpy()
    fig = _new_figure((4.2 + 2.6 * len(sets), 3.8))
    grid = fig.add_gridspec(1, len(sets) + 2)
    ax = fig.add_subplot(grid[0, :2])
    for name, images in sets.items():
        freqs, psd = spectrum.radial_power_spectrum(images)
        ok = psd > 0
        style = dict(color='black', linestyle='--', linewidth=2) if name == 'ground truth' else dict(linewidth=1.5)
        ax.semilogy(freqs[ok], psd[ok], label=name, marker='o', markersize=3, **style)
    for size in cfg.checker_sizes: # a checkerboard's strongest frequency: (1/2c, 1/2c) cycles/pixel
        ax.axvline(np.sqrt(2) / (2 * size), color='gray', linestyle=':', linewidth=1)
        ax.text(np.sqrt(2) / (2 * size), ax.get_ylim()[1], f' {size} px', fontsize=7, color='gray', va='top')
    ax.set_xlabel('frequency (cycles/pixel)')
    ax.set_ylabel('power')
    ax.set_title('Radially averaged power spectrum', fontsize=10)
    ax.grid(True, which='both', alpha=0.3)
    ax.legend(fontsize=8)
    powers = {name: _mean_power(images).numpy() for name, images in sets.items()}
    vmax = np.log10(max(p.max() for p in powers.values()))
    ky, kx = np.nonzero(support)
    for i, (name, power) in enumerate(powers.items()):
        ax2 = fig.add_subplot(grid[0, i + 2])
        ax2.imshow(np.log10(np.maximum(power, 10 ** (vmax - 6))), cmap='magma', vmin=vmax - 6, vmax=vmax, interpolation='nearest')
        ax2.scatter(kx, ky, s=14, facecolors='none', edgecolors='cyan', linewidths=0.6)
        ax2.set_xticks([])
        ax2.set_yticks([])
        ax2.set_title(f'{name}\nleaked {leaked_power_fraction(sets[name], gt):.3f}', fontsize=9)
    fig.suptitle(f'Mean power spectra of {cfg.resolution}x{cfg.resolution} checkerboards (2-D: log10, 6 decades; circles: the ground-truth lattice)', fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return os.path.basename(path)

#----------------------------------------------------------------------------

def format_summary_md(summary):
    cfg, spec = summary['config'], summary['spectral']
    relevant = ['weight', 'reduction', 'warmup_kimg', 'sigma_max'] + (['wavelet', 'levels', 'level_weights', 'wavelet_mode']
        if spec['kind'] == 'wavelet' else ['fft_norm'] + (['ap_form', 'phase_wrap'] if spec['kind'] == 'fourier-amp-phase' else []))
    term = ', '.join(f'{k}={spec[k]}' for k in relevant if k in spec)
    n = summary['num_seeds']
    seeds = f'training seeds {summary["seed"]}..{summary["seed"] + n - 1}' if n > 1 else f'training seed {summary["seed"]}'
    lines = [
        '# Checkerboard experiment',
        '',
        f'{cfg["resolution"]}x{cfg["resolution"]} grayscale checkerboards (checker sizes {cfg["checker_sizes"]} px, {cfg["num_images"]} training images), '
        f'DDPM (T=1000, linear betas), SongUNet with {cfg["model_channels"]} channels x {cfg["channel_mult"]}, {cfg["kimg"]} kimg at batch {cfg["batch"]} per model, '
        f'DDIM sampling with {cfg["steps"]} steps, {cfg["num_samples"]} samples per model, {seeds}. Spectral term: {spec["kind"]} ({term}).',
        '',
        f'Valid samples: the fraction within {summary["valid_tolerance"]} mean absolute pixel error (images in [-1, 1]) of an ideal checkerboard of a training '
        'checker size. Leaked power: the fraction of the mean 2-D power at frequencies where the ground truth has none. Power error on the lattice: '
        'sum |P - P_gt| / sum P_gt over the frequencies where it has power. Mean +- std over training seeds; the ground-truth row scores '
        f'the first {cfg["num_samples"]} training images (the floor set by the mix of checker sizes).',
        '',
        '| model | ' + ' | '.join(f'{label} ({better})' for _key, label, better in METRICS) + ' |',
        '|---|' + '---:|' * len(METRICS),
    ]
    gt = summary['ground_truth']
    lines.append('| ground truth | ' + ' | '.join(f'{gt[key]:.4f}' for key, _, _ in METRICS) + ' |')
    for name, m in summary['metrics'].items():
        lines.append(f'| {name} | ' + ' | '.join(f'{m[key]["mean"]:.4f} +- {m[key]["std"]:.4f}' for key, _, _ in METRICS) + ' |')
    paired = summary['paired']
    lines.append('| **spectral - baseline** (paired) | ' + ' | '.join(f'**{paired[key]["mean"]:+.4f}** +- {paired[key]["std"]:.4f}' for key, _, _ in METRICS) + ' |')
    lines.append('| spectral better in | ' + ' | '.join(f'{paired[key]["better"]} of {paired[key]["seeds"]} seeds' for key, _, _ in METRICS) + ' |')
    lines += ['', 'Per training seed (baseline / spectral):', '',
        '| seed | ' + ' | '.join(label for _key, label, _ in METRICS) + ' |', '|---|' + '---:|' * len(METRICS)]
    for b, s in zip(summary['per_seed']['baseline'], summary['per_seed']['spectral']):
        lines.append(f'| {b["seed"]} | ' + ' | '.join(f'{b[key]:.4f} / {s[key]:.4f}' for key, _, _ in METRICS) + ' |')
    verdict = '; '.join(f'{label} {paired[key]["better"]} of {n}' for key, label, _ in METRICS)
    lines += ['', f'Result: the spectral model is better in, per metric: {verdict} training seeds.', '',
        f'Total time: {summary["seconds"]["total"]:.0f} s on {summary["device"]}, {summary["seconds"]["cpu"]:.0f} s of CPU time '
        f'over {summary["threads"]} threads (load average at the end: {", ".join(f"{v:.1f}" for v in summary["load_average"])}).', '']
    return '\n'.join(lines)

#----------------------------------------------------------------------------

@click.command()
@click.option('--outdir',   help='Where to write grids, spectra and the summary', metavar='DIR', type=str, default='out/demo', show_default=True)
@click.option('--preset',   help="Experiment size: demo (make demo, about 10 minutes on 2 CPU cores), full (the paper's 64x64, much longer), smoke (a quick end-to-end check)", type=click.Choice(['demo', 'full', 'smoke']), default='demo', show_default=True)
@click.option('--full',     help='Deprecated spelling of --preset=full', is_flag=True, hidden=True)
@click.option('--smoke',    help='Deprecated spelling of --preset=smoke', is_flag=True, hidden=True)
@click.option('--kimg',     help='Override the training length per model', metavar='KIMG', type=click.FloatRange(min=0, min_open=True))
@click.option('--seed',     help='First training seed', metavar='INT', type=int, default=0, show_default=True)
@click.option('--num-seeds', help='Training seeds per model (results are mean +- std)  [default: 3; --preset=smoke: 1]', metavar='INT', type=click.IntRange(min=1))
@click.option('--data-seed', help='Random seed of the checkerboard data set', metavar='INT', type=int, default=0, show_default=True)
@click.option('--device',   help='Device (default: cuda if available, else cpu)', metavar='STR', type=str)
@spectral_options(**{f'spectral_{k}' if k != 'kind' else 'spectral': v for k, v in DEFAULT_SPECTRAL.items()})
def main(outdir, preset, full, smoke, kimg, seed, num_seeds, data_seed, device, **spectral_opts):
    """Checkerboard experiment: DDPM with and without a spectral loss (default: Fourier amplitude+phase).

    \b
    Examples:
    python -m edm_spectral.toy --outdir=out/demo           # the default demo (make demo)
    python -m edm_spectral.toy --outdir=out/full --preset=full    # 64x64, as in the paper
    python -m edm_spectral.toy --spectral=wavelet --spectral-wavelet=bior1.3
    """
    sys.stdout.reconfigure(line_buffering=True) # progress shows up promptly when piped to a file
    aliases = [name for name, given in [('full', full), ('smoke', smoke)] if given]
    if len(aliases) > 1 or (aliases and preset not in ('demo', aliases[0])):
        raise click.ClickException('--preset, --full and --smoke are mutually exclusive (--full and --smoke are old spellings of --preset)')
    preset = aliases[0] if aliases else preset
    spectral_kwargs = spectral_kwargs_from_options(spectral_opts)
    if spectral_kwargs is None:
        raise click.ClickException('--spectral=none: the experiment compares a baseline with a regularized model; pick a regularizer')
    overrides = {} if kimg is None else dict(kimg=kimg)
    run_experiment(outdir, preset=preset, spectral_kwargs=spectral_kwargs, seed=seed, num_seeds=num_seeds, data_seed=data_seed, device=device, overrides=overrides)

#----------------------------------------------------------------------------

if __name__ == '__main__':
    main()

#----------------------------------------------------------------------------
