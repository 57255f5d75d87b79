"""Vocode a corpus split (by default the held-out LJ001/LJ002 clips) from its mel spectrograms
with a DiffWave checkpoint; write one WAV per clip and seed, the reference clips, and a PNG grid
of reference vs. generated mel spectrograms.

Layout of --outdir: reference/<id>.wav, seed<NNN>/<id>.wav, spectrograms.png, vocode.json.

Examples:

\b
python -m edm_spectral.audio.vocode --ckpt=training-runs/00000-.../weights.pt \\
    --data=datasets/LJSpeech-1.1 --outdir=out/vocoded --seeds=0-4
"""

import json
import os
import time

import click
import numpy as np
import torch

from torch_utils import distributed as dist
from training.sampling import parse_int_list
from edm_spectral.audio import model as model_lib
from edm_spectral.audio import diffusion
from edm_spectral.audio import data as data_lib

#----------------------------------------------------------------------------
# PNG grid of mel spectrograms: one row per clip, one column per entry of `columns`
# (name -> list of [n_mels, F] arrays, same clip order).

def save_spectrogram_grid(path, columns, clip_ids, max_rows=4):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    rows = min(len(clip_ids), max_rows)
    names = list(columns)
    fig, axes = plt.subplots(rows, len(names), figsize=(3.2 * len(names), 2.0 * rows), squeeze=False)
    for r in range(rows):
        for c, name in enumerate(names):
            ax = axes[r][c]
            ax.imshow(np.asarray(columns[name][r]), origin='lower', aspect='auto', vmin=0, vmax=1, cmap='magma')
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=9)
            if c == 0:
                ax.set_ylabel(clip_ids[r], fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)

#----------------------------------------------------------------------------
# Vocode every clip of the split for every seed. Clips are spread over processes; a clip's
# noise depends only on (seed, clip index), so the output does not depend on the number of
# processes. Returns the list of clip ids.

def vocode_corpus(ckpt, data, outdir, split='heldout', seeds=(0,), fast=True, max_clips=None, device=None,
        grid=True, verbose=True):
    device = dist.init(device) if not isinstance(device, torch.device) else device
    rank, world = dist.get_rank(), dist.get_world_size()
    net, params, _ = model_lib.load_checkpoint(ckpt, device=device)
    net.eval().requires_grad_(False)
    corpus = data_lib.AudioCorpus(data, params, split=split, max_clips=max_clips)
    ids = [c[0] for c in corpus.clips]
    if rank == 0:
        os.makedirs(os.path.join(outdir, 'reference'), exist_ok=True)
    dist.barrier()
    grid_ref, grid_gen = [], []
    start = time.time()
    for idx in range(rank, len(corpus), world):
        clip_id, audio, mel = corpus[idx]
        data_lib.write_wav(os.path.join(outdir, 'reference', clip_id + '.wav'), audio, params['sample_rate'])
        mel_t = torch.from_numpy(mel)[None].to(device)
        for seed in seeds:
            gen = torch.Generator(device=device).manual_seed(int(seed) * 1000003 + idx)
            wave = diffusion.sample(net, mel_t, params, fast=fast, generator=gen)[0, :len(audio)]
            data_lib.write_wav(os.path.join(outdir, f'seed{int(seed):03d}', clip_id + '.wav'), wave, params['sample_rate'])
            if seed == seeds[0] and idx < 4 * world:
                grid_ref.append(mel)
                grid_gen.append(data_lib.mel_spectrogram(wave.float().cpu(), params).numpy())
        if verbose:
            dist.print0(f'{clip_id}: {len(audio) / params["sample_rate"]:.2f} s x {len(seeds)} seed(s), {time.time() - start:.1f} s elapsed')
    dist.barrier()
    if rank == 0:
        if grid and grid_ref:
            save_spectrogram_grid(os.path.join(outdir, 'spectrograms.png'), {'reference': grid_ref, 'generated': grid_gen}, ids[::world])
        with open(os.path.join(outdir, 'vocode.json'), 'w') as f:
            json.dump(dict(ckpt=ckpt, data=data, split=split, seeds=list(seeds), schedule='fast' if fast else 'full',
                clips=ids, sample_rate=params['sample_rate']), f, indent=2)
    return ids

#----------------------------------------------------------------------------

@click.command(help=__doc__)
@click.option('--ckpt',       help='DiffWave checkpoint (LMNT format)', metavar='PT', type=str, required=True)
@click.option('--data',       help='LJSpeech-layout corpus', metavar='DIR', type=str, required=True)
@click.option('--outdir',     help='Output directory', metavar='DIR', type=str, required=True)
@click.option('--split',      help='Which clips to vocode', type=click.Choice(['heldout', 'train', 'all']), default='heldout', show_default=True)
@click.option('--seeds',      help='Noise seeds, e.g. 0-4', metavar='LIST', type=parse_int_list, default='0', show_default=True)
@click.option('--schedule',   help='fast: LMNT 6-step schedule; full: the 50 training steps', type=click.Choice(['fast', 'full']), default='fast', show_default=True)
@click.option('--max-clips',  help='Vocode only the first N clips', metavar='INT', type=click.IntRange(min=1))
@click.option('--device',     help='Device [default: cuda if available, else cpu]', metavar='STR', type=str)
def main(ckpt, data, outdir, split, seeds, schedule, max_clips, device):
    try:
        vocode_corpus(ckpt, data, outdir, split=split, seeds=seeds, fast=(schedule == 'fast'), max_clips=max_clips, device=device)
    except (ValueError, FileNotFoundError) as e:
        raise click.ClickException(str(e))

#----------------------------------------------------------------------------

if __name__ == '__main__':
    main()

#----------------------------------------------------------------------------
