"""DiffWave: LMNT state-dict names and shapes, checkpoint round trips, embedding and upsampler."""

import math

import numpy as np
import pytest
import torch

from edm_spectral.audio import model as model_lib

#----------------------------------------------------------------------------
# The published LMNT 22 kHz model's state dict, written out from its architecture description:
# every name and shape (30 layers, 64 channels, 80 mels, 512-d step embedding).

def lmnt_22k_shapes(layers=30, C=64, n_mels=80):
    shapes = {
        'input_projection.weight': [C, 1, 1], 'input_projection.bias': [C],
        'diffusion_embedding.projection1.weight': [512, 128], 'diffusion_embedding.projection1.bias': [512],
        'diffusion_embedding.projection2.weight': [512, 512], 'diffusion_embedding.projection2.bias': [512],
        'spectrogram_upsampler.conv1.weight': [1, 1, 3, 32], 'spectrogram_upsampler.conv1.bias': [1],
        'spectrogram_upsampler.conv2.weight': [1, 1, 3, 32], 'spectrogram_upsampler.conv2.bias': [1],
        'skip_projection.weight': [C, C, 1], 'skip_projection.bias': [C],
        'output_projection.weight': [1, C, 1], 'output_projection.bias': [1],
    }
    for i in range(layers):
        p = f'residual_layers.{i}.'
        shapes.update({
            p + 'dilated_conv.weight': [2 * C, C, 3], p + 'dilated_conv.bias': [2 * C],
            p + 'diffusion_projection.weight': [C, 512], p + 'diffusion_projection.bias': [C],
            p + 'conditioner_projection.weight': [2 * C, n_mels, 1], p + 'conditioner_projection.bias': [2 * C],
            p + 'output_projection.weight': [2 * C, C, 1], p + 'output_projection.bias': [2 * C],
        })
    return shapes

def test_state_dict_matches_lmnt_naming():
    net = model_lib.DiffWave(model_lib.make_params())
    ours = {k: list(v.shape) for k, v in net.state_dict().items()}
    assert ours == lmnt_22k_shapes()
    assert sum(v.numel() for v in net.state_dict().values()) == 333_251 + 30 * 76_224 # Shared layers + 30 residual layers.
    for i, layer in enumerate(net.residual_layers):
        assert layer.dilated_conv.dilation == (2 ** (i % 10),)
    assert torch.all(net.output_projection.weight == 0) # Zero init, as LMNT.

#----------------------------------------------------------------------------
# A checkpoint in LMNT's format (random weights in the published naming) loads strictly, and
# our saved checkpoints carry exactly LMNT's keys.

def test_lmnt_checkpoint_round_trip(tmp_path):
    gen = torch.Generator().manual_seed(0)
    state = {k: torch.randn(s, generator=gen) for k, s in lmnt_22k_shapes().items()}
    params = dict(batch_size=16, learning_rate=2e-4, max_grad_norm=None, sample_rate=22050, n_mels=80, n_fft=1024,
        hop_samples=256, crop_mel_frames=62, residual_layers=30, residual_channels=64, dilation_cycle_length=10,
        unconditional=False, noise_schedule=np.linspace(1e-4, 0.05, 50).tolist(),
        inference_noise_schedule=[0.0001, 0.001, 0.01, 0.05, 0.2, 0.5])
    path = str(tmp_path / 'weights-1000578.pt')
    torch.save({'step': 1000578, 'model': state, 'optimizer': {}, 'params': params, 'scaler': {}}, path)
    net, loaded_params, data = model_lib.load_checkpoint(path)
    assert data['step'] == 1000578
    assert loaded_params['residual_layers'] == 30 and loaded_params['upsample_factors'] == [16, 16]
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]), k

    out = str(tmp_path / 'ours.pt')
    model_lib.save_checkpoint(out, net, loaded_params, step=7)
    saved = torch.load(out, weights_only=True)
    assert set(saved['model']) == set(state)
    assert {'step', 'model', 'optimizer', 'params', 'scaler'} <= set(saved)
    assert set(params) <= set(saved['params']) # LMNT's params keys are all there.
    strict = model_lib.DiffWave(saved['params'])
    strict.load_state_dict(saved['model'], strict=True)
    # LMNT's learner restores the optimizer unconditionally: a model saved without one still
    # carries a valid (fresh) Adam state.
    torch.optim.Adam(strict.parameters()).load_state_dict(saved['optimizer'])
    # ... and an fp16 learner its grad scaler, which refuses the empty state of a disabled one.
    scaler = torch.amp.GradScaler('cpu')
    scaler.load_state_dict(saved['scaler'])
    assert scaler.get_scale() == 2.0 ** 16

    # A fork that stored the (non-persistent in LMNT) embedding table still loads.
    state_with_table = dict(state, **{'diffusion_embedding.embedding': net.diffusion_embedding.embedding.clone()})
    torch.save({'step': 1, 'model': state_with_table, 'params': params}, path)
    model_lib.load_checkpoint(path)

def test_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        model_lib.load_checkpoint(str(tmp_path / 'missing.pt'))
    bad = tmp_path / 'bad.pt'
    bad.write_bytes(b'not a checkpoint')
    with pytest.raises(ValueError, match='Cannot read'):
        model_lib.load_checkpoint(str(bad))
    small = model_lib.DiffWave(model_lib.make_params(residual_layers=2, residual_channels=8))
    path = str(tmp_path / 'mismatch.pt')
    torch.save({'model': small.state_dict(), 'params': {'residual_layers': 2, 'residual_channels': 16}}, path)
    with pytest.raises(ValueError, match='do not match'):
        model_lib.load_checkpoint(path)
    with pytest.raises(ValueError, match='Unknown DiffWave parameter'):
        model_lib.make_params(residual_channel=3)
    with pytest.raises(ValueError, match='multiply to hop_samples'):
        model_lib.make_params(upsample_factors=[16, 8])

#----------------------------------------------------------------------------
# Step embedding: sin/cos table with frequencies 10^(4k/63); fractional steps interpolate.

def test_diffusion_embedding_table_and_lerp():
    emb = model_lib.DiffusionEmbedding(50)
    t, k = 7, 13
    assert emb.embedding.shape == (50, 128)
    assert math.isclose(float(emb.embedding[t, k]), math.sin(t * 10 ** (4 * k / 63)), rel_tol=1e-4, abs_tol=1e-4)
    assert math.isclose(float(emb.embedding[t, 64 + k]), math.cos(t * 10 ** (4 * k / 63)), rel_tol=1e-4, abs_tol=1e-4)
    a = emb(torch.tensor([3]))
    b = emb(torch.tensor([3.0]))
    assert torch.allclose(a, b)
    frac = emb.embedding[3] * 0.75 + emb.embedding[4] * 0.25
    x = torch.nn.functional.silu(emb.projection2(torch.nn.functional.silu(emb.projection1(frac[None]))))
    assert torch.allclose(emb(torch.tensor([3.25])), x, atol=1e-6)
    # Bitwise: SiLU as x * sigmoid(x), LMNT's arithmetic (F.silu rounds differently).
    h = emb.projection1(emb.embedding[[5]])
    h = emb.projection2(h * torch.sigmoid(h))
    assert torch.equal(emb(torch.tensor([5])), h * torch.sigmoid(h))

#----------------------------------------------------------------------------
# Forward pass of a tiny model: output shape, upsampler length, conditioning actually used,
# gradients reach every parameter.

def test_forward_shapes_and_gradients():
    params = model_lib.make_params(residual_layers=3, residual_channels=8, dilation_cycle_length=2, n_mels=16,
        hop_samples=32, upsample_factors=[4, 8])
    net = model_lib.DiffWave(params)
    torch.nn.init.normal_(net.output_projection.weight) # Non-zero so every parameter gets a gradient.
    mel = torch.rand(2, 16, 5)
    audio = torch.randn(2, 5 * 32)
    assert net.spectrogram_upsampler(mel).shape == (2, 16, 5 * 32)
    out = net(audio, torch.tensor([0, 49]), mel)
    assert out.shape == (2, 1, 160)
    assert not torch.allclose(out, net(audio, torch.tensor([0, 49]), mel * 0.5))
    out.square().sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    with pytest.raises(ValueError, match='does not match'):
        net(audio, torch.tensor([0, 1]), torch.rand(2, 16, 4))
    # One step for the whole batch (the samplers' form) equals that step given per item.
    assert torch.allclose(net(audio, torch.tensor([7.5]), mel), net(audio, torch.tensor([7.5, 7.5]), mel), atol=1e-6)

#----------------------------------------------------------------------------

#----------------------------------------------------------------------------
# The optional 'interp' mel upsampler init is linear interpolation at unit gain (a ramp in time
# stays a ramp, each mel row stays separate); the default keeps PyTorch's init; neither changes
# the state dict's names or shapes.

def test_upsampler_interp_init():
    torch.manual_seed(0)
    up = model_lib.SpectrogramUpsampler([16, 16], init='interp')
    frames = torch.arange(6, dtype=torch.float32)
    mel = torch.zeros(1, 4, 6)
    mel[0, 1] = frames           # Ramp in time.
    mel[0, 2] = 0.5              # Constant.
    with torch.no_grad():
        y = up(mel)
    assert y.shape == (1, 4, 6 * 256)
    inner = slice(256, 5 * 256)  # Away from the edges (half-weighted there, as zero padding).
    d = y[0, 1, inner].diff()
    assert torch.allclose(d, torch.full_like(d, 1 / 256), atol=1e-5)
    assert torch.allclose(y[0, 2, inner], torch.full_like(y[0, 2, inner], 0.5), atol=1e-6)
    assert y[0, 0].abs().max() == 0 and y[0, 3].abs().max() == 0
    # Frame k's value sits at the centre of its hop (the ramp passes k at sample 256 k + 127.5).
    assert abs(float(y[0, 1, 2 * 256 + 127] + y[0, 1, 2 * 256 + 128]) / 2 - 2.0) < 1e-4

    lmnt = model_lib.SpectrogramUpsampler([16, 16])
    with torch.no_grad():
        gain = lmnt(mel)[0, 1, inner].diff().mean() * 256
    assert abs(float(gain)) < 0.2 # PyTorch's default: the mel's variation strongly attenuated.
    a = model_lib.DiffWave(model_lib.make_params(residual_layers=2, residual_channels=8), upsampler_init='interp')
    b = model_lib.DiffWave(model_lib.make_params(residual_layers=2, residual_channels=8))
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}
    with pytest.raises(ValueError, match='upsampler init'):
        model_lib.SpectrogramUpsampler([16, 16], init='nearest')

#----------------------------------------------------------------------------
