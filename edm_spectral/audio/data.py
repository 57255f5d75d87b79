"""Audio data: WAV I/O (scipy), the mel spectrogram of LMNT's DiffWave preprocessing (written
here with torch.stft and our own filterbank, no torchaudio), and an LJSpeech-layout corpus reader
(wavs/*.wav + metadata.csv) with the paper's held-out split and cached mels.

LMNT's preprocessing is torchaudio's MelSpectrogram with: win_length = n_fft = 1024, hop 256,
periodic Hann window, centred frames with reflect padding, magnitude (power 1) divided by
sqrt(sum(window^2)) ("normalized"), HTK mel scale with unnormalised triangular filters (the
torchaudio defaults, not Slaney), fmin 20 Hz, fmax sr/2, then
    S = clamp((20 log10(max(mel, 1e-5)) - 20 + 100) / 100, 0, 1)."""

import csv
import hashlib
import json
import os
import warnings

import numpy as np
import torch

#----------------------------------------------------------------------------
# WAV I/O. Integer PCM is scaled as LMNT does (int16 / 32767.5, clamped); float WAVs are taken
# as they are. Multi-channel files use the first channel, as LMNT. The one WAV reader: the
# spectrum tool takes every channel ([C, T]) and float samples unclipped (all_channels, clip).

def read_wav(path, expected_rate=None, all_channels=False, clip=True):
    import scipy.io.wavfile
    if not os.path.isfile(path):
        raise FileNotFoundError(f'WAV file not found: {path}')
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', scipy.io.wavfile.WavFileWarning)
            rate, data = scipy.io.wavfile.read(path)
    except Exception as e:
        raise ValueError(f'Cannot read {path} as a .wav file: {e}') from e
    if data.ndim == 2:
        data = data.T if all_channels else data[:, 0]
    if data.size == 0:
        raise ValueError(f'{path} contains no samples')
    if expected_rate is not None and rate != expected_rate:
        raise ValueError(f'{path} has sample rate {rate} Hz, expected {expected_rate} Hz (resample the corpus first)')
    if data.dtype == np.int16:
        audio = data.astype(np.float32) / 32767.5
    elif data.dtype == np.int32:
        audio = data.astype(np.float32) / 2147483647.5
    elif data.dtype == np.uint8:
        audio = (data.astype(np.float32) - 128.0) / 127.5
    elif data.dtype.kind == 'f':
        audio = data.astype(np.float32)
    else:
        raise ValueError(f'{path}: unsupported WAV sample format {data.dtype}')
    return (np.clip(audio, -1.0, 1.0) if clip else audio), rate

def write_wav(path, audio, rate):
    import scipy.io.wavfile
    audio = np.asarray(audio.detach().cpu() if isinstance(audio, torch.Tensor) else audio, dtype=np.float32).reshape(-1)
    pcm = np.round(np.clip(audio, -1.0, 1.0) * 32767.0).astype(np.int16)
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    scipy.io.wavfile.write(path, int(rate), pcm)

#----------------------------------------------------------------------------
# Triangular mel filterbank [n_freqs, n_mels] on the rfft bins of n_fft. HTK mel scale
# (2595 log10(1 + f/700)); norm=None leaves the triangles at peak 1 (torchaudio's default),
# norm='slaney' scales each to unit area (librosa's default). The bin frequencies are
# linspace(0, sr // 2, n_freqs) as torchaudio computes them.

def mel_filterbank(sample_rate, n_fft, n_mels, fmin=0.0, fmax=None, norm=None):
    fmax = sample_rate / 2.0 if fmax is None else float(fmax)
    if not 0 <= fmin < fmax <= sample_rate / 2.0:
        raise ValueError(f'Need 0 <= fmin < fmax <= sample_rate/2, got fmin={fmin}, fmax={fmax}')
    hz_to_mel = lambda f: 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)
    mel_to_hz = lambda m: 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)
    freqs = np.linspace(0, sample_rate // 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (freqs[:, None] - lower[None, :]) / (centre - lower)[None, :]
    falling = (upper[None, :] - freqs[:, None]) / (upper - centre)[None, :]
    fb = np.maximum(0.0, np.minimum(rising, falling))
    if norm == 'slaney':
        fb *= (2.0 / (upper - lower))[None, :]
    elif norm is not None:
        raise ValueError(f'Unknown mel filterbank norm "{norm}"')
    return fb.astype(np.float32)

#----------------------------------------------------------------------------
# LMNT's log-mel in [0, 1]: audio [..., T] (float, [-1, 1]) -> [..., n_mels, T // hop + 1].

_fb_cache = {}

def mel_spectrogram(audio, params):
    audio = torch.as_tensor(audio, dtype=torch.float32)
    sr, n_fft, hop, n_mels = params['sample_rate'], params['n_fft'], params['hop_samples'], params['n_mels']
    win = hop * 4
    if win > n_fft:
        raise ValueError(f'Window 4*hop={win} exceeds n_fft={n_fft}')
    if audio.shape[-1] <= n_fft // 2:
        raise ValueError(f'Audio of {audio.shape[-1]} samples is too short for n_fft={n_fft} (reflect padding)')
    key = (sr, n_fft, n_mels, float(params.get('mel_fmin', 20.0)), params.get('mel_fmax'), str(audio.device))
    if key not in _fb_cache:
        fb = mel_filterbank(sr, n_fft, n_mels, params.get('mel_fmin', 20.0), params.get('mel_fmax'))
        _fb_cache[key] = torch.from_numpy(fb).to(audio.device)
    fb = _fb_cache[key]
    window = torch.hann_window(win, periodic=True, device=audio.device)
    lead = audio.shape[:-1]
    spec = torch.stft(audio.reshape(-1, audio.shape[-1]), n_fft=n_fft, hop_length=hop, win_length=win, window=window,
        center=True, pad_mode='reflect', return_complex=True)
    mag = spec.abs() / window.square().sum().sqrt()
    mel = torch.einsum('fm,bft->bmt', fb, mag)
    db = 20.0 * torch.log10(mel.clamp(min=1e-5)) - 20.0
    out = ((db + 100.0) / 100.0).clamp(0.0, 1.0)
    return out.reshape(*lead, n_mels, out.shape[-1])

#----------------------------------------------------------------------------
# LJSpeech layout: <root>/metadata.csv (id|transcript|normalised transcript) and
# <root>/wavs/<id>.wav. The paper holds out LJ001-* and LJ002-* for evaluation.

HELDOUT_PREFIXES = ('LJ001', 'LJ002')

def list_clips(root, split='train'):
    if split not in ('train', 'heldout', 'all'):
        raise ValueError(f'Unknown split "{split}" (train, heldout or all)')
    if not os.path.isdir(root):
        raise FileNotFoundError(f'Corpus directory not found: {root}')
    meta = os.path.join(root, 'metadata.csv')
    wav_dir = os.path.join(root, 'wavs')
    if os.path.isfile(meta):
        with open(meta, encoding='utf-8', newline='') as f:
            ids = [row[0].strip() for row in csv.reader(f, delimiter='|', quoting=csv.QUOTE_NONE) if row and row[0].strip()]
    elif os.path.isdir(wav_dir):
        ids = sorted(name[:-4] for name in os.listdir(wav_dir) if name.lower().endswith('.wav'))
    else:
        raise FileNotFoundError(f'{root} is not an LJSpeech-layout corpus: expected metadata.csv and wavs/*.wav')
    is_heldout = lambda i: i.startswith(HELDOUT_PREFIXES)
    if split == 'train':
        ids = [i for i in ids if not is_heldout(i)]
    elif split == 'heldout':
        ids = [i for i in ids if is_heldout(i)]
    if not ids:
        raise ValueError(f'{root}: no clips in split "{split}" (held-out = ids starting with {"/".join(HELDOUT_PREFIXES)})')
    clips = [(i, os.path.join(wav_dir, i + '.wav')) for i in ids]
    missing = [p for _, p in clips if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f'{len(missing)} clip(s) listed in {meta} are missing, e.g. {missing[0]}')
    return clips

#----------------------------------------------------------------------------
# A corpus split with mels cached on disk (one .npy per clip and WAV version under
# cache_dir/mel-<hash of the mel settings>/), or in memory when cache_dir is None. Items are
# (id, audio [T], mel [n_mels, F]).

class AudioCorpus:
    def __init__(self, root, params, split='train', cache_dir=None, max_clips=None):
        self.root = root
        self.params = params
        self.split = split
        self.clips = list_clips(root, split)
        if max_clips is not None:
            self.clips = self.clips[:max_clips]
        settings = {k: params.get(k) for k in ['sample_rate', 'n_fft', 'hop_samples', 'n_mels', 'mel_fmin', 'mel_fmax']}
        self.mel_key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
        self.cache_dir = None
        if cache_dir is not None:
            self.cache_dir = os.path.join(cache_dir, f'mel-{self.mel_key}')
            os.makedirs(self.cache_dir, exist_ok=True)
        self._mem = {}

    def __len__(self):
        return len(self.clips)

    def audio(self, idx):
        return read_wav(self.clips[idx][1], expected_rate=self.params['sample_rate'])[0]

    def mel(self, idx, audio=None):
        clip_id = self.clips[idx][0]
        if clip_id in self._mem:
            return self._mem[clip_id]
        path = None
        if self.cache_dir:
            # The WAV's size and mtime are part of the name: a rewritten corpus never gets stale mels.
            st = os.stat(self.clips[idx][1])
            path = os.path.join(self.cache_dir, f'{clip_id}-{st.st_size}-{st.st_mtime_ns}.npy')
        if path and os.path.isfile(path):
            mel = np.load(path)
        else:
            audio = self.audio(idx) if audio is None else audio
            try:
                mel = mel_spectrogram(torch.from_numpy(audio), self.params).numpy()
            except ValueError as e:
                raise ValueError(f'{self.clips[idx][1]}: {e}') from None
            if path:
                tmp = f'{path}.{os.getpid()}.tmp.npy'
                np.save(tmp, mel)
                os.replace(tmp, path)
        if not path:
            self._mem[clip_id] = mel
        return mel

    def __getitem__(self, idx):
        audio = self.audio(idx)
        return self.clips[idx][0], audio, self.mel(idx, audio)

#----------------------------------------------------------------------------
# Endless stream of random training crops as LMNT's collator: crop_mel_frames mel frames and
# the matching crop_mel_frames * hop samples (zero-padded past the end of the clip). Clips
# shorter than the crop are skipped. Each (rank, worker) draws its own random sequence.

class CropStream(torch.utils.data.IterableDataset):
    def __init__(self, corpus, crop_frames, seed=0, rank=0):
        super().__init__()
        self.corpus = corpus
        self.crop_frames = int(crop_frames)
        self.seed = seed
        self.rank = rank
        self.frames = None

    def _lengths(self):
        if self.frames is None:
            self.frames = np.array([self.corpus.mel(i).shape[-1] for i in range(len(self.corpus))])
            if not np.any(self.frames >= self.crop_frames):
                raise ValueError(f'No clip in {self.corpus.root} is long enough for crops of {self.crop_frames} mel frames '
                    f'({self.crop_frames * self.corpus.params["hop_samples"]} samples)')
        return self.frames

    def __iter__(self):
        frames = self._lengths()
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        rnd = np.random.RandomState([self.seed, self.rank, worker])
        usable = np.flatnonzero(frames >= self.crop_frames)
        hop = self.corpus.params['hop_samples']
        while True:
            idx = int(usable[rnd.randint(len(usable))])
            mel = self.corpus.mel(idx)
            audio = self.corpus.audio(idx)
            start = rnd.randint(mel.shape[-1] - self.crop_frames + 1)
            a, m = crop_clip(audio, mel, start, self.crop_frames, hop)
            yield torch.from_numpy(a), torch.from_numpy(m)

# `frames` mel frames from `start` and the matching samples, zero-padded past the clip's end.
def crop_clip(audio, mel, start, frames, hop):
    end = start + frames
    crop = audio[start * hop:end * hop]
    crop = np.pad(crop, (0, frames * hop - len(crop)))
    return crop.astype(np.float32), np.ascontiguousarray(mel[:, start:end])

#----------------------------------------------------------------------------
