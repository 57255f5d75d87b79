"""Audio metrics: known answers (identical sets give 0, shifted sets give > 0), Frechet distance
of known Gaussians, K-means, and clear messages for missing optional models."""

import builtins
import os

import numpy as np
import pytest
from click.testing import CliRunner

from edm_spectral.audio import data as data_lib
from edm_spectral.audio import metrics

RATE = 22050

def tone(freq, seconds=0.5, seed=0, shift=0):
    t = np.arange(int(seconds * RATE)) / RATE
    x = 0.3 * np.sin(2 * np.pi * freq * t) * (1 + 0.3 * np.sin(2 * np.pi * 4 * t)) + 0.01 * np.random.RandomState(seed).randn(len(t))
    return np.roll(x, shift).astype(np.float32)

def write_set(folder, freqs, gain=1.0, shift=0, pitch=1.0, seconds=0.5):
    os.makedirs(folder, exist_ok=True)
    for i, f in enumerate(freqs):
        data_lib.write_wav(os.path.join(folder, f'LJ001-{i:04d}.wav'), gain * tone(f * pitch, seconds=seconds, seed=i, shift=shift), RATE)

def test_mrstft_known_answers():
    x = tone(300)
    assert metrics.mr_stft(x, x) == 0
    assert metrics.mr_stft(x, np.roll(x, 37)) > 0
    assert metrics.mr_stft(tone(300), tone(600)) > metrics.mr_stft(tone(300), tone(310))

def test_frechet_and_kmeans():
    # 1-D Gaussians: (mu1 - mu2)^2 + (s1 - s2)^2.
    d = metrics.frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([3.0]), np.array([[1.0]]))
    assert abs(d - (4 + 1)) < 1e-9
    rnd = np.random.RandomState(0)
    centres = np.array([[0, 0], [10, 0], [0, 10]], dtype=float)
    x = np.concatenate([c + rnd.randn(100, 2) * 0.5 for c in centres])
    found = metrics.kmeans(x, 3, seed=1)
    assert np.abs(np.sort(found, axis=0) - np.sort(centres, axis=0)).max() < 0.3

def test_ndb_known_answers():
    rnd = np.random.RandomState(0)
    ref = rnd.randn(1000, 4)
    assert metrics.ndb(ref, ref, k=10)['ndb'] == 0
    shifted = metrics.ndb(ref, rnd.randn(1000, 4) + 1.0, k=10)
    assert shifted['ndb'] > 0 and 0 < shifted['ndb_k'] <= 1

def test_folder_metrics_cli(tmp_path):
    freqs = [220, 330, 440, 550]
    write_set(str(tmp_path / 'ref'), freqs)
    write_set(str(tmp_path / 'same' / 'seed000'), freqs)
    write_set(str(tmp_path / 'same' / 'seed001'), freqs)
    write_set(str(tmp_path / 'shifted'), freqs, pitch=1.5)
    runner = CliRunner()
    out = str(tmp_path / 'm.json')
    res = runner.invoke(metrics.main, ['--gen', str(tmp_path / 'same'), '--gen', str(tmp_path / 'shifted'), '--ref', str(tmp_path / 'ref'),
        '--metrics=mrstft,ndb,fad,psd', '--ndb-k=8', '--out', out, '--device=cpu'])
    assert res.exit_code == 0, res.output
    import json
    results = json.load(open(out))['results']
    same, shifted = results[str(tmp_path / 'same')], results[str(tmp_path / 'shifted')]
    assert same['mrstft']['values'] == [0.0, 0.0] and same['ndb_k']['mean'] == 0 and same['fad_logmel']['mean'] < 1e-6
    assert shifted['mrstft']['mean'] > 0.5 and shifted['ndb_k']['mean'] > 0 and shifted['fad_logmel']['mean'] > 0.1
    assert same['psd_dist']['values'] == [0.0, 0.0] and same['psd_dist_high']['mean'] == 0
    assert shifted['psd_dist']['mean'] > 0.1

def test_psd_distance_known_answers():
    rnd = np.random.RandomState(0)
    ref = [(rnd.randn(4000) * 0.1, RATE) for _ in range(3)]
    d = metrics.psd_distance([(2 * a, r) for a, r in ref], ref)
    assert abs(d['psd_dist'] - np.log10(4)) < 1e-9 and abs(d['psd_dist_high'] - np.log10(4)) < 1e-9
    # Low-passed noise: the gap is in the upper half of the band.
    lowpassed = [(np.convolve(a, np.ones(8) / 8, mode='same'), r) for a, r in ref]
    d = metrics.psd_distance(lowpassed, ref)
    assert d['psd_dist_high'] > d['psd_dist'] > 0
    with pytest.raises(ValueError, match='one sample rate'):
        metrics.psd_distance([(ref[0][0], 16000)], ref)

#----------------------------------------------------------------------------
# Optional models and packages: a clear message, not a traceback.

def test_missing_optional_models(tmp_path, monkeypatch):
    write_set(str(tmp_path / 'ref'), [220])
    runner = CliRunner()
    args = ['--gen', str(tmp_path / 'ref'), '--ref', str(tmp_path / 'ref'), '--device=cpu']
    res = runner.invoke(metrics.main, args + ['--metrics=utmos'])
    assert res.exit_code == 1 and 'UTMOS needs a model file' in res.output and 'Traceback' not in res.output
    res = runner.invoke(metrics.main, args + ['--metrics=fad', '--vggish', str(tmp_path / 'vggish.pt')])
    assert res.exit_code == 1 and 'model file not found' in res.output
    (tmp_path / 'junk.pt').write_bytes(b'junk')
    res = runner.invoke(metrics.main, args + ['--metrics=fad', '--vggish', str(tmp_path / 'junk.pt')])
    assert res.exit_code == 1 and 'neither a VGGish state dict' in res.output

    real_import = builtins.__import__
    def no_pesq(name, *a, **k):
        if name == 'pesq':
            raise ImportError('No module named pesq')
        return real_import(name, *a, **k)
    monkeypatch.setattr(builtins, '__import__', no_pesq)
    res = runner.invoke(metrics.main, args + ['--metrics=pesq'])
    assert res.exit_code == 1 and 'pip install pesq' in res.output
    assert 'pesq' not in metrics.available_metrics()
    res = runner.invoke(metrics.main, args + ['--metrics=nonsense'])
    assert res.exit_code == 1 and 'Unknown metric' in res.output

#----------------------------------------------------------------------------
# VGGish: a torchvggish-format state dict loads strictly; the front end gives one 96x64
# example per 0.96 s; FAD of a set against itself is 0.

def test_vggish_state_dict_and_frontend(tmp_path, monkeypatch):
    import torch
    from edm_spectral.audio import vggish
    with torch.device('meta'):
        keys = {k: list(v.shape) for k, v in vggish.VGGish().state_dict().items()}
    assert keys['features.0.weight'] == [64, 1, 3, 3] and keys['features.13.weight'] == [512, 512, 3, 3]
    assert keys['embeddings.0.weight'] == [4096, 12288] and keys['embeddings.4.weight'] == [128, 4096]
    path = str(tmp_path / 'vggish-test.pth')
    # Weights at 1/64 of the default init's scale: the embedding stays finite and non-zero.
    gen = torch.Generator().manual_seed(0)
    weights = {k: torch.empty(v).normal_(0, 0.02, generator=gen) if k.endswith('weight') else torch.zeros(v) for k, v in keys.items()}
    torch.save(dict(weights, pca_eigen_vectors=torch.zeros(128, 128)), path)
    # The 72M weights are read once: by evaluate (FAD of a set against itself is 0), whose
    # loaded network the checks below then use.
    loads = []
    def load_vggish(*args, **kwargs):
        loads.append(real_load(*args, **kwargs))
        return loads[-1]
    real_load = vggish.load_vggish
    monkeypatch.setattr(vggish, 'load_vggish', load_vggish)
    write_set(str(tmp_path / 'ref'), [220, 330], seconds=2.0)
    res = metrics.evaluate(str(tmp_path / 'ref'), str(tmp_path / 'ref'), metrics=['fad'], vggish=path)
    assert abs(res['fad']['mean']) < 1e-6
    assert len(loads) == 1
    loaded = loads[0]
    wave = np.sin(2 * np.pi * 440 * np.arange(16000 * 2) / 16000)
    ex = vggish.log_mel_examples(wave)
    assert ex.shape == (2, 1, 96, 64)
    # The 440 Hz tone peaks in the mel band whose centre is nearest 440 Hz (mel = 1127 ln(1 + f/700)).
    to_mel = lambda f: 1127 * np.log(1 + f / 700)
    centres = np.linspace(to_mel(125), to_mel(7500), 66)[1:-1]
    assert int(ex[0, 0, 50].argmax()) == int(np.abs(centres - to_mel(440)).argmin())
    assert torch.equal(loaded.embeddings[2].weight, weights['embeddings.2.weight']) and not loaded.features[0].weight.is_meta
    emb = loaded.embed(wave)
    assert emb.shape == (2, 128) and torch.isfinite(emb).all() and emb.abs().max() > 0
    # Clips under ~1 s give no embeddings: an error, not a FAD (the folder path with this network).
    write_set(str(tmp_path / 'short'), [220, 330])
    short = metrics.read_folder(str(tmp_path / 'short'))
    with pytest.raises(ValueError, match='at least 2 embeddings'):
        metrics.evaluate_folder(short, short, metrics=['fad'], fad_model=loaded)

#----------------------------------------------------------------------------
# A TorchScript embedding model is used when given (here a scripted stand-in).

def test_torchscript_embedding(tmp_path):
    import torch

    class Frames(torch.nn.Module):
        def forward(self, wave):
            n = wave.shape[0] // 160
            return wave[:n * 160].reshape(n, 160)[:, :8].abs()

    path = str(tmp_path / 'emb.pt')
    torch.jit.script(Frames()).save(path)
    write_set(str(tmp_path / 'ref'), [220, 330])
    res = metrics.evaluate(str(tmp_path / 'ref'), str(tmp_path / 'ref'), metrics=['fad'], vggish=path)
    assert abs(res['fad']['mean']) < 1e-6

#----------------------------------------------------------------------------
