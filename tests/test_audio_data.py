"""Audio data: mel spectrogram against a direct numpy restatement of LMNT's preprocessing, WAV
reading and its errors, the LJSpeech layout and split, training crops."""

import os

import numpy as np
import pytest
import scipy.io.wavfile
import torch

from edm_spectral.audio import data as data_lib
from edm_spectral.audio import model as model_lib
from conftest import make_wav_corpus

#----------------------------------------------------------------------------
# Straightforward numpy version: explicit loops over frames and filters, no shared code.

def numpy_lmnt_mel(x, sr=22050, n_fft=1024, hop=256, n_mels=80, fmin=20.0, fmax=None):
    fmax = sr / 2 if fmax is None else fmax
    win = 4 * hop
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win) # Periodic Hann.
    pad = n_fft // 2
    xp = np.pad(x.astype(np.float64), pad, mode='reflect')
    frames = 1 + len(x) // hop
    mag = np.zeros([n_fft // 2 + 1, frames])
    for t in range(frames):
        seg = xp[t * hop: t * hop + n_fft] * np.pad(window, ((n_fft - win) // 2, (n_fft - win + 1) // 2))
        mag[:, t] = np.abs(np.fft.rfft(seg)) / np.sqrt(np.sum(window ** 2))
    mel_of = lambda f: 2595 * np.log10(1 + f / 700)
    hz_of = lambda m: 700 * (10 ** (m / 2595) - 1)
    pts = [hz_of(m) for m in np.linspace(mel_of(fmin), mel_of(fmax), n_mels + 2)]
    bins = np.linspace(0, sr // 2, n_fft // 2 + 1)
    fb = np.zeros([n_mels, len(bins)])
    for m in range(n_mels):
        lo, c, hi = pts[m], pts[m + 1], pts[m + 2]
        for i, f in enumerate(bins):
            if lo < f <= c:
                fb[m, i] = (f - lo) / (c - lo)
            elif c < f < hi:
                fb[m, i] = (hi - f) / (hi - c)
    mel = fb @ mag
    db = 20 * np.log10(np.maximum(mel, 1e-5)) - 20
    return np.clip((db + 100) / 100, 0, 1)

def test_mel_matches_numpy_restatement():
    rnd = np.random.RandomState(0)
    t = np.arange(5000) / 22050
    x = 0.5 * np.sin(2 * np.pi * 440 * t) + 0.05 * rnd.randn(len(t))
    ours = data_lib.mel_spectrogram(torch.from_numpy(x.astype(np.float32)), model_lib.make_params()).numpy()
    ref = numpy_lmnt_mel(x)
    assert ours.shape == (80, 1 + 5000 // 256) == ref.shape
    assert np.abs(ours - ref).max() < 2e-4
    assert 0.3 < ours.mean() < 1 # Not trivially clipped.
    # Batched input gives the same frames.
    both = data_lib.mel_spectrogram(torch.from_numpy(np.stack([x, x]).astype(np.float32)), model_lib.make_params())
    assert torch.allclose(both[1], torch.from_numpy(ours), atol=1e-6)

def test_filterbank_properties():
    fb = data_lib.mel_filterbank(22050, 1024, 80, 20.0, None)
    assert fb.shape == (513, 80)
    assert fb.max() <= 1 + 1e-6 and fb.min() == 0
    peaks = fb.argmax(0)
    assert np.all(np.diff(peaks) >= 0) # Centres increase with the mel index.
    # HTK mel scale: the centre of filter m is at 2595 log10(1 + f/700) equally spaced.
    slaney = data_lib.mel_filterbank(22050, 1024, 80, 20.0, None, norm='slaney')
    assert not np.allclose(slaney, fb)
    with pytest.raises(ValueError):
        data_lib.mel_filterbank(22050, 1024, 80, 20.0, 30000)

#----------------------------------------------------------------------------
# WAV reading: int16 scaling and clear errors.

def test_read_wav_scaling_and_errors(tmp_path):
    path = str(tmp_path / 'a.wav')
    scipy.io.wavfile.write(path, 22050, np.array([0, 16384, -32768, 32767], dtype=np.int16))
    audio, rate = data_lib.read_wav(path, expected_rate=22050)
    assert rate == 22050
    assert np.allclose(audio, [0, 16384 / 32767.5, -1.0, 32767 / 32767.5])
    data_lib.write_wav(str(tmp_path / 'b.wav'), audio, 22050)
    back, _ = data_lib.read_wav(str(tmp_path / 'b.wav'))
    assert np.abs(back - audio).max() < 1e-4

    with pytest.raises(FileNotFoundError):
        data_lib.read_wav(str(tmp_path / 'missing.wav'))
    (tmp_path / 'corrupt.wav').write_bytes(b'RIFF1234WAVEjunkjunk')
    with pytest.raises(ValueError, match='Cannot read'):
        data_lib.read_wav(str(tmp_path / 'corrupt.wav'))
    scipy.io.wavfile.write(str(tmp_path / 'empty.wav'), 22050, np.zeros(0, dtype=np.int16))
    with pytest.raises(ValueError, match='no samples'):
        data_lib.read_wav(str(tmp_path / 'empty.wav'))
    scipy.io.wavfile.write(str(tmp_path / 'rate.wav'), 16000, np.zeros(100, dtype=np.int16))
    with pytest.raises(ValueError, match='16000 Hz, expected 22050'):
        data_lib.read_wav(str(tmp_path / 'rate.wav'), expected_rate=22050)

#----------------------------------------------------------------------------
# LJSpeech layout: held-out split, missing files, mel cache, crops.

def test_corpus_split_cache_and_crops(tmp_path):
    root = str(tmp_path / 'lj')
    make_wav_corpus(root, ['LJ001-0001', 'LJ002-0003', 'LJ003-0001', 'LJ010-0002'])
    assert [c[0] for c in data_lib.list_clips(root, 'heldout')] == ['LJ001-0001', 'LJ002-0003']
    assert [c[0] for c in data_lib.list_clips(root, 'train')] == ['LJ003-0001', 'LJ010-0002']
    assert len(data_lib.list_clips(root, 'all')) == 4
    params = model_lib.make_params()
    corpus = data_lib.AudioCorpus(root, params, split='train', cache_dir=str(tmp_path / 'cache'))
    clip_id, audio, mel = corpus[0]
    assert clip_id == 'LJ003-0001' and mel.shape == (80, len(audio) // 256 + 1)
    assert len(os.listdir(corpus.cache_dir)) == 1
    assert np.array_equal(corpus.mel(0), mel) # Served from the cache.
    # A rewritten WAV (same id, new content) gets a new mel, not the cached one.
    data_lib.write_wav(corpus.clips[0][1], np.zeros(len(audio)), 22050)
    os.utime(corpus.clips[0][1], ns=(0, os.stat(corpus.clips[0][1]).st_mtime_ns + 10**9))
    fresh = data_lib.AudioCorpus(root, params, split='train', cache_dir=str(tmp_path / 'cache'))
    assert fresh.mel(0).max() == 0 and len(os.listdir(corpus.cache_dir)) == 2

    stream = iter(data_lib.CropStream(corpus, crop_frames=16, seed=1))
    a, m = next(stream)
    assert a.shape == (16 * 256,) and m.shape == (80, 16)
    with pytest.raises(ValueError, match='long enough'):
        next(iter(data_lib.CropStream(corpus, crop_frames=1000)))

    os.remove(os.path.join(root, 'wavs', 'LJ010-0002.wav'))
    with pytest.raises(FileNotFoundError, match='missing'):
        data_lib.list_clips(root, 'train')
    with pytest.raises(FileNotFoundError, match='LJSpeech-layout'):
        data_lib.list_clips(str(tmp_path), 'train')
    with pytest.raises(ValueError, match='Unknown split'):
        data_lib.list_clips(root, 'test')

#----------------------------------------------------------------------------

def test_too_short_clip_names_the_file(tmp_path):
    root = str(tmp_path / 'lj')
    make_wav_corpus(root, ['LJ003-0001'], seconds=0.01)
    corpus = data_lib.AudioCorpus(root, model_lib.make_params(), split='train')
    with pytest.raises(ValueError, match='LJ003-0001.wav.*too short'):
        corpus.mel(0)

#----------------------------------------------------------------------------
