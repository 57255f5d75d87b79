"""DiffWave diffusion and training: x0 estimates, inference schedules, the spectral term on
waveforms, and a few training steps + vocoding end to end through the CLIs."""

import json
import os

import numpy as np
import pytest
import torch

from edm_spectral.audio import data as data_lib
from edm_spectral.audio import diffusion
from edm_spectral.audio import model as model_lib
from training.spectral_loss import SpectralLoss

from conftest import GLOO_ARGS, make_wav_corpus

TINY = dict(residual_layers=2, residual_channels=8, dilation_cycle_length=2)

#----------------------------------------------------------------------------
# With the true noise as the prediction, the one-step estimate and every DDIM roll-out recover
# x0 exactly.

class Oracle(torch.nn.Module):
    """Predicts the exact noise from the clean audio: a fixed x0, or (hop given) x0 read off the
    mel, whose row 0 holds each frame's constant sample value."""
    def __init__(self, abar, x0=None, hop=None):
        super().__init__()
        self.abar, self.x0, self.hop = abar, x0, hop
    def forward(self, x, t, mel):
        ab = self.abar[t][:, None]
        x0 = self.x0 if self.hop is None else mel[:, 0].repeat_interleave(self.hop, dim=-1)
        return ((x - ab.sqrt() * x0) / (1 - ab).sqrt())[:, None]

def test_x0_estimate_exact_with_oracle():
    abar = torch.as_tensor(diffusion.alpha_bars(np.linspace(1e-4, 0.05, 50)), dtype=torch.float64)
    x0 = torch.randn(3, 64, dtype=torch.float64)
    t = torch.tensor([0, 20, 49])
    x_t = abar[t][:, None].sqrt() * x0 + (1 - abar[t][:, None]).sqrt() * torch.randn(3, 64, dtype=torch.float64)
    for k in [1, 2, 5]:
        est = diffusion.estimate_x0(Oracle(abar, x0), x_t, t, None, abar, rollout_steps=k)
        assert torch.allclose(est, x0, atol=1e-10)

# mel_reliance: a model that reads the clean audio off its mel predicts the noise exactly from
# its own mel only; a model that ignores the mel scores the same with every mel.

def test_mel_reliance():
    betas = np.linspace(1e-4, 0.05, 50)
    abar = torch.as_tensor(diffusion.alpha_bars(betas), dtype=torch.float32)
    mel = torch.rand(4, 3, 5) - 0.5
    audio = mel[:, 0].repeat_interleave(8, dim=-1)
    l1 = diffusion.mel_reliance(Oracle(abar, hop=8), audio, mel, betas, steps=(0, 10, 49))
    assert l1['own'] < 1e-4 and l1['other'] > 0.05 and l1['zero'] > 0.05
    params = model_lib.make_params(dict(TINY, unconditional=True))
    l1 = diffusion.mel_reliance(model_lib.DiffWave(params), audio, mel, betas)
    assert l1['own'] == l1['other'] == l1['zero'] > 0
    with pytest.raises(ValueError, match='at least two'):
        diffusion.mel_reliance(Oracle(abar, hop=8), audio[:1], mel[:1], betas)

def test_inference_steps():
    betas = np.linspace(1e-4, 0.05, 50)
    assert np.allclose(diffusion.inference_steps(betas, betas), np.arange(50), atol=1e-4)
    fast = diffusion.inference_steps(betas, [0.0001, 0.001, 0.01, 0.05, 0.2, 0.5])
    assert len(fast) == 6 and np.all(np.diff(fast) > 0) and fast[0] == 0 and 0 < fast[-1] < 49
    with pytest.raises(ValueError, match='outside the training schedule'):
        diffusion.inference_steps(betas, [0.5, 0.9, 0.9])

#----------------------------------------------------------------------------
# The 1-D spectral kinds on waveforms: finite, differentiable through the network, and the
# total is exactly base + lambda * mean(L_S).

@pytest.mark.parametrize('kind,extra', [('fourier-amp', {}), ('fourier-amp-phase', {}), ('wavelet', dict(wavelet='haar')),
    ('wavelet', dict(wavelet='bior1.3'))])
def test_spectral_term_on_waveforms(kind, extra):
    params = model_lib.make_params(**TINY)
    net = model_lib.DiffWave(params)
    torch.nn.init.normal_(net.output_projection.weight, std=0.1)
    audio = torch.randn(4, 8 * 256) * 0.3
    mel = torch.rand(4, 80, 8)
    spectral = SpectralLoss(kind=kind, weight=1e-3, **extra)
    gen = torch.Generator().manual_seed(5)
    total, base, ls = diffusion.diffwave_loss(net, audio, mel, params['noise_schedule'], spectral=spectral, generator=gen)
    assert ls.shape == (4,) and torch.all(ls > 0) and torch.isfinite(total)
    assert torch.allclose(total, base + 1e-3 * ls.mean())
    gen = torch.Generator().manual_seed(5)
    base_only, _, none = diffusion.diffwave_loss(net, audio, mel, params['noise_schedule'], generator=gen)
    assert none is None and torch.equal(base_only, base) # Same draws, same base loss.
    grad_s = torch.autograd.grad(total, net.input_projection.weight)[0]
    grad_b = torch.autograd.grad(base_only, net.input_projection.weight)[0]
    assert torch.isfinite(grad_s).all() and not torch.allclose(grad_s, grad_b)
    with pytest.raises(ValueError, match='constant spectral weight'):
        diffusion.diffwave_loss(net, audio, mel, params['noise_schedule'], spectral=SpectralLoss(kind=kind, weight='weighted'))

#----------------------------------------------------------------------------
# Train a few steps with a spectral term, resume, vocode the held-out clips: CLIs end to end.

# A 3-clip corpus (one held out) and the train CLI options of a tiny model on it.
def tiny_train_setup(tmp_path, *extra):
    root = str(tmp_path / 'lj')
    make_wav_corpus(root, ['LJ001-0001', 'LJ003-0001', 'LJ003-0002'], seconds=0.4)
    return root, ['--data', root, '--outdir', str(tmp_path / 'runs'), '--residual-layers=2', '--residual-channels=8',
        '--dilation-cycle=2', '--batch=2', '--crop-frames=8', '--workers=0', '--device=cpu', *extra]

def test_train_resume_vocode_end_to_end(tmp_path, cli):
    from edm_spectral.audio import train, vocode
    root, common = tiny_train_setup(tmp_path, '--tick-steps=2')
    cli(train.main, common + ['--steps=3', '--snap-steps=2', '--spectral=fourier-amp-phase', '--spectral-weight=1e-4'])
    run = os.path.join(str(tmp_path / 'runs'), sorted(os.listdir(tmp_path / 'runs'))[0])
    assert sorted(f for f in os.listdir(run) if f.startswith('weights')) == ['weights-2.pt', 'weights-3.pt', 'weights.pt']
    stats = [json.loads(line) for line in open(os.path.join(run, 'stats.jsonl'))]
    assert stats[-1]['step'] == 3 and stats[-1]['Loss/spectral']['num'] > 0
    ckpt = torch.load(os.path.join(run, 'weights.pt'), weights_only=True)
    assert ckpt['step'] == 3 and ckpt['spectral_kwargs']['kind'] == 'fourier-amp-phase'

    cli(train.main, common + ['--steps=5', '--resume', os.path.join(run, 'weights.pt')])
    run2 = os.path.join(str(tmp_path / 'runs'), sorted(d for d in os.listdir(tmp_path / 'runs') if d[0].isdigit())[-1])
    assert torch.load(os.path.join(run2, 'weights.pt'), weights_only=True)['step'] == 5

    cli(train.main, common + ['--steps=1', '--spectral=fourier-amp'], fails_with='constant spectral weight')
    cli(train.main, common + ['--steps=1', '--init', str(tmp_path / 'nope.pt')], fails_with='no such file')

    out = str(tmp_path / 'voc')
    cli(vocode.main, ['--ckpt', os.path.join(run2, 'weights.pt'), '--data', root, '--outdir', out, '--seeds=0-1', '--device=cpu'])
    ref, rate = data_lib.read_wav(os.path.join(out, 'reference', 'LJ001-0001.wav'))
    gen, _ = data_lib.read_wav(os.path.join(out, 'seed001', 'LJ001-0001.wav'))
    assert rate == 22050 and len(gen) == len(ref) == int(0.4 * 22050)
    assert np.abs(gen).max() > 0 and os.path.isfile(os.path.join(out, 'spectrograms.png'))
    gen0, _ = data_lib.read_wav(os.path.join(out, 'seed000', 'LJ001-0001.wav'))
    assert not np.array_equal(gen0, gen) # Seeds differ.

#----------------------------------------------------------------------------

# --upsampler-init=interp trains a new model whose upsampler starts as linear interpolation; it
# is rejected when the weights come from a checkpoint.
def test_train_upsampler_init_option(tmp_path, cli):
    from edm_spectral.audio import train
    _, common = tiny_train_setup(tmp_path, '--lr=1e-12')
    cli(train.main, common + ['--steps=1', '--upsampler-init=interp'])
    run = os.path.join(str(tmp_path / 'runs'), sorted(os.listdir(tmp_path / 'runs'))[0])
    assert json.load(open(os.path.join(run, 'training_options.json')))['upsampler_init'] == 'interp'
    w = torch.load(os.path.join(run, 'weights.pt'), weights_only=True)['model']['spectrogram_upsampler.conv1.weight']
    ref = model_lib.SpectrogramUpsampler([16, 16], init='interp').conv1.weight.detach()
    assert torch.allclose(w, ref, atol=1e-6) # Tiny lr: still the interpolation kernel after one step.
    cli(train.main, common + ['--steps=1', '--upsampler-init=interp', '--init', os.path.join(run, 'weights.pt')], fails_with='only applies to new models')
    cli(train.main, common + ['--steps=1', '--upsampler-init=cubic'], fails_with='upsampler-init')

#----------------------------------------------------------------------------
# torchrun with two Gloo processes (the suite's shared launch, conftest.gloo_runs, which runs
# both commands as `python -m` would, the vocoder on the new checkpoint): training writes one
# run with both ranks' losses, and vocoding spreads the clips over the ranks with exactly the
# WAVs of a single process.

def test_train_and_vocode_under_torchrun(gloo_runs, tmp_path):
    root = gloo_runs['corpus']
    run, = [os.path.join(gloo_runs['audio_runs'], d) for d in os.listdir(gloo_runs['audio_runs']) if d[0].isdigit()]
    assert 'gpus2-batch4' in run
    stats = [json.loads(line) for line in open(os.path.join(run, 'stats.jsonl'))]
    assert stats[-1]['step'] == 2 and stats[-1]['Loss/spectral']['num'] == 4 # both ranks' crops are collected
    ckpt = os.path.join(run, 'weights.pt')
    from edm_spectral.audio import vocode
    threads = torch.get_num_threads()
    torch.set_num_threads(1) # as each torchrun process (OMP_NUM_THREADS=1): CPU kernels round differently per thread count
    try:
        ids = vocode.vocode_corpus(ckpt, root, str(tmp_path / 'voc1'), seeds=GLOO_ARGS['audio_seeds'], device=torch.device('cpu'), verbose=False)
    finally:
        torch.set_num_threads(threads)
    assert ids == ['LJ001-0001', 'LJ001-0002', 'LJ002-0001']
    for seed in ['seed000', 'seed001']:
        for clip in ids:
            one = data_lib.read_wav(os.path.join(tmp_path, 'voc1', seed, clip + '.wav'))[0]
            two = data_lib.read_wav(os.path.join(gloo_runs['vocoded'], seed, clip + '.wav'))[0]
            assert np.array_equal(one, two), (seed, clip)

#----------------------------------------------------------------------------
