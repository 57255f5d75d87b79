"""Synthesise a small LJSpeech-layout speech corpus with espeak-ng: the embedded default of the
audio experiment, so that training, vocoding and metrics run without downloading LJSpeech.

Clips are 22.05 kHz mono int16 WAVs of our own sentences, each with a random voice (several
English accents and espeak-ng voice variants), pitch and speed. The first --heldout clips get
ids LJ001-*/LJ002-* (the paper's evaluation split), the rest LJ003-* onwards.

A faint white noise floor (--noise-floor, RMS 1e-3 of full scale, about -60 dBFS) is added, as
every real recording has one: espeak-ng's pauses are digital zeros, and against those the
log-magnitude part of MR-STFT measures little but how silent the pauses are (the reference plus
-60 dB noise scores about 2 against the reference itself).

Needs the espeak-ng program (Debian/Ubuntu: apt-get install espeak-ng).

Example:

\b
python -m edm_spectral.audio.make_corpus --outdir=out/espeak-corpus --clips=96 --heldout=8
"""

import os
import shutil
import subprocess
import tempfile

import click
import numpy as np

from edm_spectral.audio import data as data_lib

#----------------------------------------------------------------------------
# Sentences (written for this corpus) and the voice space.

SENTENCES = [
    'The printer worked late into the night.',
    'A small boat crossed the quiet harbour at dawn.',
    'Every letter was set by hand in the old shop.',
    'She opened the window and listened to the rain.',
    'Numbers on the page were printed in bright red ink.',
    'The committee met again on Thursday morning.',
    'Three clocks in the hall struck noon together.',
    'He carried the heavy books up the narrow stairs.',
    'Fresh bread was sold at the corner every day.',
    'The river rose slowly after the long storm.',
    'They measured the distance with a simple rope.',
    'Bright lamps lined the path to the station.',
    'The old map showed a road that no longer exists.',
    'Children played near the fountain until dusk.',
    'A gentle wind moved the tall grass in waves.',
    'The report was signed and sent the next week.',
    'Six ships waited outside the port for the tide.',
    'Her voice was calm, clear and very patient.',
    'The machine hummed softly as the pages turned.',
    'Winter arrived early in the northern valleys.',
    'Please place the cups on the wooden shelf.',
    'We counted seven birds resting on the wire.',
    'The teacher wrote a long question on the board.',
    'Music drifted from an open door down the street.',
    'An engineer checked every bolt on the bridge.',
    'The garden smelled of mint after the shower.',
    'Our train left the city a little after nine.',
    'He paused, then answered the question slowly.',
    'Thin clouds covered the moon for an hour.',
    'The library closed its doors at half past five.',
    'A yellow kite climbed high above the field.',
    'Quiet footsteps echoed in the empty hall.',
]

VOICES = ['en-us', 'en-gb', 'en-gb-scotland', 'en-gb-x-rp', 'en-029']
VARIANTS = ['', '+m1', '+m3', '+m7', '+f1', '+f2', '+f4']

def clip_ids(num_clips, heldout):
    ids = [f'LJ00{1 + i % 2}-{i // 2 + 1:04d}' for i in range(heldout)]
    ids += [f'LJ{3 + i // 100:03d}-{i % 100 + 1:04d}' for i in range(num_clips - heldout)]
    return sorted(ids)

#----------------------------------------------------------------------------
# Synthesise one clip to a float array at `rate` Hz.

def synthesise(text, voice, pitch, speed, rate=22050):
    exe = shutil.which('espeak-ng')
    if exe is None:
        raise FileNotFoundError('espeak-ng not found: install it (Debian/Ubuntu: apt-get install espeak-ng) '
            'or use a real LJSpeech-layout corpus with --data')
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'clip.wav')
        subprocess.run([exe, '-v', voice, '-p', str(int(pitch)), '-s', str(int(speed)), '-w', path, text],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        audio, src_rate = data_lib.read_wav(path)
    if src_rate != rate:
        from edm_spectral.audio.metrics import resample
        audio = resample(audio, src_rate, rate)
    return audio

#----------------------------------------------------------------------------
# Write the corpus. Returns the list of (id, text).

def make_corpus(outdir, num_clips=96, heldout=8, seed=0, rate=22050, noise_floor=1e-3, verbose=True):
    if not 0 < heldout < num_clips:
        raise ValueError(f'Need 0 < heldout < clips, got heldout={heldout}, clips={num_clips}')
    if not 0 <= noise_floor < 0.1:
        raise ValueError(f'--noise-floor is an RMS level in [0, 0.1), got {noise_floor}')
    rnd = np.random.RandomState(seed)
    noise_rnd = np.random.RandomState([seed, 1]) # its own stream: the texts and voices do not depend on the floor
    os.makedirs(os.path.join(outdir, 'wavs'), exist_ok=True)
    rows = []
    for clip_id in clip_ids(num_clips, heldout):
        text = SENTENCES[rnd.randint(len(SENTENCES))]
        voice = VOICES[rnd.randint(len(VOICES))] + VARIANTS[rnd.randint(len(VARIANTS))]
        pitch, speed = rnd.randint(30, 71), rnd.randint(140, 201)
        audio = synthesise(text, voice, pitch, speed, rate)
        audio = audio * (0.8 / max(float(np.abs(audio).max()), 1e-6))
        audio = audio + noise_floor * noise_rnd.randn(len(audio))
        data_lib.write_wav(os.path.join(outdir, 'wavs', clip_id + '.wav'), audio, rate)
        rows.append((clip_id, text))
        if verbose:
            print(f'{clip_id}: {voice:<20s} pitch {pitch:3d} speed {speed:3d} {len(audio) / rate:.2f} s  {text}')
    with open(os.path.join(outdir, 'metadata.csv'), 'w', encoding='utf-8') as f:
        for clip_id, text in rows:
            f.write(f'{clip_id}|{text}|{text}\n')
    return rows

#----------------------------------------------------------------------------

@click.command(help=__doc__)
@click.option('--outdir',   help='Corpus directory to write', metavar='DIR', type=str, required=True)
@click.option('--clips',    help='Number of clips', metavar='INT', type=click.IntRange(min=2), default=96, show_default=True)
@click.option('--heldout',  help='Clips in the held-out split (LJ001/LJ002)', metavar='INT', type=click.IntRange(min=1), default=8, show_default=True)
@click.option('--seed',     help='Random seed for texts, voices and noise', metavar='INT', type=int, default=0, show_default=True)
@click.option('--noise-floor', help='RMS of the added white noise floor (0 = digital silence in pauses)', metavar='FLOAT', type=float, default=1e-3, show_default=True)
def main(outdir, clips, heldout, seed, noise_floor):
    try:
        make_corpus(outdir, clips, heldout, seed, noise_floor=noise_floor)
    except (ValueError, FileNotFoundError, subprocess.CalledProcessError) as e:
        raise click.ClickException(str(e))

#----------------------------------------------------------------------------

if __name__ == '__main__':
    main()

#----------------------------------------------------------------------------
