"""The checkerboard toy experiment of the paper (Fig. 1 and Fig. 2), the project's `make demo`.

Trains the same small DDPM twice on grayscale checkerboards, once with the plain epsilon MSE
and once with the amplitude+phase Fourier term added (for a few training seeds), samples both,
and compares their power spectra with the ground truth."""

import copy
import glob
import json
import os
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
# Experiment sizes. `demo` fits the 10-minute budget of `make demo` on 2 CPU cores, `full` is
# the paper's 64x64 setting, `smoke` is the test suite's end-to-end check.

PRESETS = {
    'smoke': dict(resolution=16, checker_sizes=[2, 4],  num_images=64,   model_channels=8,  channel_mult=[1, 2],       kimg=0.064, batch=8,  num_samples=8,   steps=8,   tick=0.032, num_seeds=1),
    'demo':  dict(resolution=16, checker_sizes=[2, 4],  num_images=1024, model_channels=32, channel_mult=[1, 2],       kimg=24,    batch=32, num_samples=256, steps=50,  tick=6,     num_seeds=3),
    'full':  dict(resolution=64, checker_sizes=[8, 16], num_images=4096, model_channels=64, channel_mult=[1, 2, 2, 2], kimg=400,   batch=64, num_samples=256, steps=100, tick=20,    num_seeds=3),
}

# The regularized model's spectral term: the paper's amplitude+phase loss in its printed
# product form, "unweighted" (constant lambda = 1), at every noise level.
DEFAULT_SPECTRAL = dict(kind='fourier-amp-phase', weight=1.0)

#----------------------------------------------------------------------------
# Ground-truth data: +-1 checkerboards with a random checker size from `checker_sizes` and a
# random offset along each axis, so every image has the same amplitude spectrum but its own
# phase. Returned as uint8 [N, 1, R, R].

def make_checkerboards(num_images, resolution, checker_sizes, seed=0):
    rnd = np.random.RandomState(seed)
    coords = np.arange(resolution)
    images = np.empty([num_images, 1, resolution, resolution], dtype=np.uint8)
    for i in range(num_images):
        size = int(rnd.choice(checker_sizes))
        dy, dx = rnd.randint(2 * size, size=2)
        rows = ((coords + dy) // size) % 2
        cols = ((coords + dx) // size) % 2
        images[i, 0] = (rows[:, None] ^ cols[None, :]).astype(np.uint8) * 255
    return images

#----------------------------------------------------------------------------
# Fraction of a set's power (mean-removed, 2-D spectrum averaged over the set) that lies at
# frequencies where the ground truth has none. A checkerboard's energy sits on a sparse
# lattice of frequencies, so this measures the paper's "leaks energy around the checkerboard
# frequencies" directly; radial averaging would mix those frequencies with empty ones.

def leaked_power_fraction(images, gt_images, rel_threshold=1e-6):
    from edm_spectral.spectrum import power_spectrum_2d
    power = power_spectrum_2d(images).mean(dim=(0, 1))
    power_gt = power_spectrum_2d(gt_images).mean(dim=(0, 1))
    empty = power_gt <= rel_threshold * power_gt.max()
    return float(power[empty].sum() / power.sum().clamp(min=1e-30))

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
# One training run with the project's real training loop: VPPrecond + a small DDPM++-style
# SongUNet + DDPMLoss (discrete linear-beta DDPM, see docs/ARCHITECTURE.md). Returns the
# path of the final snapshot.

def train_ddpm(run_dir, data_dir, cfg, spectral_kwargs, seed, device):
    from training import training_loop
    network_kwargs = dnnlib.EasyDict(class_name='training.networks.VPPrecond', model_type='SongUNet',
        embedding_type='positional', encoder_type='standard', decoder_type='standard', channel_mult_noise=1,
        resample_filter=[1, 1], model_channels=cfg.model_channels, channel_mult=cfg.channel_mult,
        num_blocks=1, attn_resolutions=[], dropout=0.0)
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
        kimg_per_tick       = cfg.tick,
        snapshot_ticks      = 10**9,                # snapshots only at tick 0 and at the end
        state_dump_ticks    = 10**9,
        cudnn_benchmark     = True,
        device              = device,
    )
    return sorted(glob.glob(os.path.join(run_dir, 'network-snapshot-*.pkl')))[-1]

#----------------------------------------------------------------------------
# Sample a trained model with deterministic DDIM (the ablation sampler's Euler/VP setting).

def sample_ddim(snapshot_path, num_samples, num_steps, device):
    from edm_spectral.checkpoints import load_network
    from training.sampling import generate_images
    net = load_network(snapshot_path, device=device)
    return generate_images(net, seeds=list(range(num_samples)), device=device, max_batch_size=64,
        num_steps=num_steps, solver='euler', discretization='vp', schedule='vp', scaling='vp')

#----------------------------------------------------------------------------

def run_experiment(outdir, preset='demo', spectral_kwargs=None, seed=0, num_seeds=None, device=None, overrides=None):
    from edm_spectral import spectrum
    from edm_spectral.images import save_image_grid
    from torch_utils import distributed as dist

    cfg = dnnlib.EasyDict(PRESETS[preset], lr=2e-3)
    cfg.update(overrides or {})
    num_seeds = cfg.num_seeds if num_seeds is None else num_seeds
    device = dist.resolve_device(device)
    os.makedirs(outdir, exist_ok=True)
    t_start = time.time()

    # Ground truth: the training set, and its first images as the reference for the metrics.
    data_dir = os.path.join(outdir, 'data')
    gt = make_checkerboards(cfg.num_images, cfg.resolution, cfg.checker_sizes, seed=seed)
    shutil.rmtree(data_dir, ignore_errors=True)  # results of an earlier run are replaced, never mixed
    write_image_folder(gt, data_dir)
    gt_samples = torch.as_tensor(gt[:cfg.num_samples])
    gt_spectrum = spectrum.radial_power_spectrum(gt_samples)

    # Train baseline and regularized models with identical settings; for each training seed
    # both see the same initial weights, data order and noise draws.
    spectral_kwargs = dict(DEFAULT_SPECTRAL, **(spectral_kwargs or {}))
    runs = {'baseline': None, 'spectral': spectral_kwargs}
    samples = {name: [] for name in runs}
    per_seed = {name: [] for name in runs}
    timings = {name: 0.0 for name in runs}
    for train_seed in range(seed, seed + num_seeds):
        for name, kwargs in runs.items():
            t0 = time.time()
            run_dir = os.path.join(outdir, f'run-{name}-seed{train_seed}')
            shutil.rmtree(run_dir, ignore_errors=True)
            os.makedirs(run_dir)
            print(f'Training {name} model (seed {train_seed}) in {run_dir} ...')
            snapshot = train_ddpm(run_dir, data_dir, cfg, copy.deepcopy(kwargs), seed=train_seed, device=device)
            print(f'Sampling {cfg.num_samples} images from {snapshot} ...')
            images = sample_ddim(snapshot, cfg.num_samples, cfg.steps, device).cpu()
            d = spectrum.spectral_distance(spectrum.radial_power_spectrum(images)[1], gt_spectrum[1])
            d['leaked_power'] = leaked_power_fraction(images, gt_samples)
            d['seed'] = train_seed
            per_seed[name].append(d)
            samples[name].append(images)
            timings[name] += time.time() - t0

    # Figures: sample grids of the first seed (Fig. 1) and spectra of all samples (Fig. 2).
    figures = {}
    shown = {'ground truth': gt_samples, **{name: images[0] for name, images in samples.items()}}
    for name, images in shown.items():
        path = os.path.join(outdir, f'grid-{name.replace(" ", "-")}.png')
        save_image_grid(images[:64], path)
        grid = PIL.Image.open(path)
        zoom = max(1, 512 // grid.width) # small images: enlarge (nearest neighbour) for viewing
        grid.resize((grid.width * zoom, grid.height * zoom), PIL.Image.NEAREST).save(path)
        figures[name] = os.path.basename(path)
    spectra = {'ground truth': gt_spectrum, **{name: spectrum.radial_power_spectrum(torch.cat(images)) for name, images in samples.items()}}
    spectrum.plot_spectra(spectra, os.path.join(outdir, 'spectra.png'), ref_name='ground truth',
        title=f'Radially averaged power spectrum ({cfg.resolution}x{cfg.resolution} checkerboards)')

    # Metrics: mean and standard deviation over the training seeds.
    distances = {}
    for name, rows in per_seed.items():
        distances[name] = {}
        for key in ['overall', 'high', 'leaked_power']:
            values = np.array([row[key] for row in rows])
            distances[name][key] = float(values.mean())
            distances[name][key + '_std'] = float(values.std())
    summary = dict(
        preset=preset, config=dict(cfg), spectral=spectral_kwargs, seed=seed, num_seeds=num_seeds, device=str(device),
        distances=distances, per_seed=per_seed, grids=figures, spectra_plot='spectra.png',
        spectral_closer=bool(distances['spectral']['overall'] < distances['baseline']['overall']),
        spectral_leaks_less=bool(distances['spectral']['leaked_power'] < distances['baseline']['leaked_power']),
        seconds=dict(timings, total=time.time() - t_start))
    with open(os.path.join(outdir, 'summary.json'), 'w') as f:
        json.dump(summary, f, indent=2)
    with open(os.path.join(outdir, 'summary.md'), 'w') as f:
        f.write(format_summary_md(summary))
    print(format_summary_md(summary))
    return summary

#----------------------------------------------------------------------------

def format_summary_md(summary):
    cfg, spec = summary['config'], summary['spectral']
    relevant = ['weight', 'reduction', 'warmup_kimg', 'sigma_max'] + (['wavelet', 'levels', 'level_weights', 'wavelet_mode']
        if spec['kind'] == 'wavelet' else ['fft_norm'] + (['ap_form', 'phase_wrap'] if spec['kind'] == 'fourier-amp-phase' else []))
    term = ', '.join(f'{k}={spec[k]}' for k in relevant if k in spec)
    seeds = f'training seeds {summary["seed"]}..{summary["seed"] + summary["num_seeds"] - 1}' if summary['num_seeds'] > 1 else f'training seed {summary["seed"]}'
    lines = [
        '# Checkerboard experiment',
        '',
        f'{cfg["resolution"]}x{cfg["resolution"]} grayscale checkerboards (checker sizes {cfg["checker_sizes"]} px), '
        f'DDPM (T=1000, linear betas), {cfg["kimg"]} kimg at batch {cfg["batch"]} per model, DDIM sampling with {cfg["steps"]} steps, '
        f'{cfg["num_samples"]} samples per model, {seeds}. Spectral term: {spec["kind"]} ({term}).',
        '',
        'Distances to the ground truth, mean +- std over training seeds (lower is better): mean',
        '|log10 PSD difference| over the radial frequency bins, overall and over the upper half of',
        'the frequencies; and the fraction of the power at frequencies where the ground truth has',
        'none (leaked power).',
        '',
        '| model | log-PSD distance | high-frequency half | leaked power |',
        '|---|---:|---:|---:|',
    ]
    for name, d in summary['distances'].items():
        lines.append(f'| {name} | {d["overall"]:.3f} +- {d["overall_std"]:.3f} | {d["high"]:.3f} +- {d["high_std"]:.3f} '
            f'| {d["leaked_power"]:.4f} +- {d["leaked_power_std"]:.4f} |')
    yes_no = lambda flag: '**yes**' if flag else '**no**'
    lines += ['', f'Spectral model closer to the ground-truth spectrum (mean): {yes_no(summary["spectral_closer"])}; '
        f'leaks less power (mean): {yes_no(summary["spectral_leaks_less"])}.',
        '', f'Total time: {summary["seconds"]["total"]:.0f} s on {summary["device"]}.', '']
    return '\n'.join(lines)

#----------------------------------------------------------------------------

@click.command()
@click.option('--outdir',   help='Where to write grids, spectra and the summary', metavar='DIR', type=str, default='out/demo', show_default=True)
@click.option('--full',     help='Run the paper-size 64x64 experiment (much longer)', is_flag=True)
@click.option('--smoke',    help='Tiny sizes for a quick end-to-end check', is_flag=True)
@click.option('--kimg',     help='Override the training length per model', metavar='KIMG', type=click.FloatRange(min=0, min_open=True))
@click.option('--seed',     help='Random seed of the data and of the first training run', metavar='INT', type=int, default=0, show_default=True)
@click.option('--num-seeds', help='Training seeds per model (results are mean +- std)  [default: 3; --smoke: 1]', metavar='INT', type=click.IntRange(min=1))
@click.option('--device',   help='Device (default: cuda if available, else cpu)', metavar='STR', type=str)
@spectral_options(**{f'spectral_{k}' if k != 'kind' else 'spectral': v for k, v in DEFAULT_SPECTRAL.items()})
def main(outdir, full, smoke, kimg, seed, num_seeds, device, **spectral_opts):
    """Checkerboard experiment: DDPM with and without a spectral loss (default: Fourier amplitude+phase).

    \b
    Examples:
    python -m edm_spectral.toy --outdir=out/demo           # the default demo (make demo)
    python -m edm_spectral.toy --outdir=out/full --full    # 64x64, as in the paper
    python -m edm_spectral.toy --spectral=wavelet --spectral-wavelet=bior1.3
    """
    sys.stdout.reconfigure(line_buffering=True) # progress shows up promptly when piped to a file
    if full and smoke:
        raise click.ClickException('--full and --smoke are mutually exclusive')
    spectral_kwargs = spectral_kwargs_from_options(spectral_opts)
    if spectral_kwargs is None:
        raise click.ClickException('--spectral=none: the experiment compares a baseline with a regularized model; pick a regularizer')
    preset = 'full' if full else 'smoke' if smoke else 'demo'
    overrides = {} if kimg is None else dict(kimg=kimg, tick=kimg / 6)
    run_experiment(outdir, preset=preset, spectral_kwargs=spectral_kwargs, seed=seed, num_seeds=num_seeds, device=device, overrides=overrides)

#----------------------------------------------------------------------------

if __name__ == '__main__':
    main()

#----------------------------------------------------------------------------
