"""The audio demo (`make demo-audio`): on the embedded espeak-ng corpus, train a small DiffWave
briefly, fine-tune it without and with spectral terms, vocode the held-out clips with several
seeds and tabulate MR-STFT, NDB/K and the stand-in FAD (plus PESQ when installed).

Writes <outdir>/corpus/, runs/, vocoded/<variant>/, spectrograms.png, summary.json, summary.md.
The demo preset fits in about 15 minutes on 2 CPU cores; its model is tiny and its training
short, so differences between variants are small and mostly within seed noise: it exercises
the full pipeline, it does not reproduce Table 2 (see docs/audio.md for that)."""

import json
import os
import shutil
import time

import click
import torch

from edm_spectral.audio import data as data_lib
from edm_spectral.audio import make_corpus, metrics, train, vocode

#----------------------------------------------------------------------------
# Sizes. `demo` is `make demo-audio`; `smoke` is the test suite's end-to-end check. The base
# model starts its mel upsampler as interpolation ('interp') and trains at lr 1e-3: with LMNT's
# init and lr 2e-4 it barely used the mel within the demo's budget (docs/audio.md, Demo).

PRESETS = {
    'smoke': dict(clips=6, heldout=2, layers=2, channels=8, cycle=2, batch=2, crop=8, base_steps=4, ft_steps=2, seeds=[0, 1], ndb_k=5, lr=2e-4, upsampler_init='interp'),
    'demo':  dict(clips=64, heldout=8, layers=6, channels=16, cycle=3, batch=4, crop=16, base_steps=4000, ft_steps=600, seeds=[0, 1, 2], ndb_k=10, lr=1e-3, upsampler_init='interp'),
}

# Fine-tuning variants: name -> spectral kwargs (None = plain L1 objective).
VARIANTS = {
    'baseline':        None,
    'fourier-amp':     dict(kind='fourier-amp', weight=1e-4),
    'wavelet-haar':    dict(kind='wavelet', weight=1e-4, wavelet='haar'),
}

#----------------------------------------------------------------------------

def run_demo(outdir, preset='demo', device='cpu', seed=0, verbose=True):
    cfg = PRESETS[preset]
    device = torch.device(device)
    t0 = time.time()
    corpus = os.path.join(outdir, 'corpus')
    if not os.path.isfile(os.path.join(corpus, 'metadata.csv')):
        make_corpus.make_corpus(corpus, cfg['clips'], cfg['heldout'], seed=seed, verbose=False)
    timings = dict(corpus=time.time() - t0)
    params = dict(residual_layers=cfg['layers'], residual_channels=cfg['channels'], dilation_cycle_length=cfg['cycle'],
        crop_mel_frames=cfg['crop'])
    common = dict(data=corpus, batch=cfg['batch'], lr=cfg['lr'], seed=seed, workers=0, tick=max(cfg['base_steps'] // 10, 1),
        cache_dir=os.path.join(outdir, 'mel-cache'), device=device, verbose=verbose)

    # Base model from scratch, then one fine-tune per variant from the same weights.
    runs = os.path.join(outdir, 'runs')
    shutil.rmtree(runs, ignore_errors=True)
    t = time.time()
    base_dir = os.path.join(runs, 'base')
    os.makedirs(base_dir)
    base_ckpt, _ = train.training_run(run_dir=base_dir, params=params, steps=cfg['base_steps'], snap=cfg['base_steps'],
        upsampler_init=cfg['upsampler_init'], **common)
    timings['base'] = time.time() - t
    results, columns, summary = {}, {}, dict(preset=preset, config=cfg, variants={})
    for name, spectral_kwargs in VARIANTS.items():
        t = time.time()
        run_dir = os.path.join(runs, name)
        os.makedirs(run_dir)
        ckpt, moved = train.training_run(run_dir=run_dir, params=params, steps=cfg['ft_steps'], snap=cfg['ft_steps'],
            init=base_ckpt, spectral_kwargs=spectral_kwargs, **dict(common, tick=max(cfg['ft_steps'] // 5, 1)))
        train_time = time.time() - t
        last = [json.loads(line) for line in open(os.path.join(run_dir, 'stats.jsonl'))][-1]
        t = time.time()
        voc = os.path.join(outdir, 'vocoded', name)
        shutil.rmtree(voc, ignore_errors=True)
        ids = vocode.vocode_corpus(ckpt, corpus, voc, split='heldout', seeds=cfg['seeds'], fast=True, device=device, verbose=False)
        results[name] = metrics.evaluate(voc, os.path.join(voc, 'reference'), metrics=metrics.available_metrics(), ndb_k=cfg['ndb_k'])
        summary['variants'][name] = dict(spectral_kwargs=spectral_kwargs, metrics=results[name], weights_moved=moved,
            final_l1=last['Loss/base']['mean'], final_spectral=last['Loss/spectral']['mean'] if last.get('Loss/spectral', {}).get('num') else None,
            train_seconds=train_time, vocode_metrics_seconds=time.time() - t)
        columns[name] = [data_lib.mel_spectrogram(torch.from_numpy(data_lib.read_wav(os.path.join(voc, f'seed{cfg["seeds"][0]:03d}', i + '.wav'))[0]),
            train.model_lib.make_params()).numpy() for i in ids[:3]]
        if verbose:
            print(f'{name}: {json.dumps({k: round(v["mean"], 4) for k, v in results[name].items()})}')
    ref_cols = [data_lib.mel_spectrogram(torch.from_numpy(data_lib.read_wav(os.path.join(outdir, 'vocoded', 'baseline', 'reference', i + '.wav'))[0]),
        train.model_lib.make_params()).numpy() for i in ids[:3]]
    vocode.save_spectrogram_grid(os.path.join(outdir, 'spectrograms.png'), dict(reference=ref_cols, **columns), ids[:3])
    timings['total'] = time.time() - t0
    summary['timings_seconds'] = timings
    summary['torch_threads'] = torch.get_num_threads()

    with open(os.path.join(outdir, 'summary.json'), 'w') as f:
        json.dump(summary, f, indent=2)
    lines = [f'# Audio demo ({preset} preset)', '',
        f'DiffWave {cfg["layers"]} layers x {cfg["channels"]} channels; base {cfg["base_steps"]} steps, then {cfg["ft_steps"]} '
        f'fine-tuning steps per variant (batch {cfg["batch"]}, {cfg["crop"]} mel frames); {len(ids)} held-out clips x '
        f'{len(cfg["seeds"])} seeds, fast 6-step sampling. mean +- std over seeds. fad_logmel uses the log-mel stand-in '
        f'embedding (not comparable to VGGish FAD).', '', metrics.format_table(results), '',
        f'Total time {timings["total"] / 60:.1f} min on {device} ({torch.get_num_threads()} threads).']
    with open(os.path.join(outdir, 'summary.md'), 'w') as f:
        f.write('\n'.join(lines) + '\n')
    if verbose:
        print('\n'.join(lines))
    return summary

#----------------------------------------------------------------------------

@click.command(help=__doc__)
@click.option('--outdir',   help='Output directory', metavar='DIR', type=str, default='out/demo-audio', show_default=True)
@click.option('--preset',   help='Experiment size', type=click.Choice(list(PRESETS)), default='demo', show_default=True)
@click.option('--seed',     help='Random seed', metavar='INT', type=int, default=0, show_default=True)
@click.option('--device',   help='Device [default: cuda if available, else cpu]', metavar='STR', type=str)
def main(outdir, preset, seed, device):
    from torch_utils import distributed as dist
    try:
        run_demo(outdir, preset=preset, device=dist.resolve_device(device), seed=seed)
    except (ValueError, FileNotFoundError, metrics.MissingDependency) as e:
        raise click.ClickException(str(e))

#----------------------------------------------------------------------------

if __name__ == '__main__':
    main()

#----------------------------------------------------------------------------
