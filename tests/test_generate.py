"""Tests for training/sampling.py (samplers, per-seed RNG, seed batching), generate.py (CLI) and training/images.py."""

import itertools
import math
import os
import zipfile

import numpy as np
import PIL.Image
import pytest
import torch

import generate
from training import sampling
from training import images as img
from training.dataset import ImageFolderDataset

from conftest import GLOO_ARGS, write_tiny_snapshot

ALL_CONFIGS = list(itertools.product(['euler', 'heun'], ['vp', 've', 'iddpm', 'edm'], ['vp', 've', 'linear'], ['vp', 'none']))

#----------------------------------------------------------------------------
# Exact denoiser for data ~ N(0, s^2): D(x; sigma) = x s^2 / (s^2 + sigma^2), with the attributes
# the samplers use. It records every noise level and label it is called with.

class GaussianDenoiser(torch.nn.Module):
    def __init__(self, std=0.5, resolution=8, channels=1, label_dim=0, sigma_grid=None):
        super().__init__()
        self.std = std
        self.img_resolution = resolution
        self.img_channels = channels
        self.label_dim = label_dim
        self.sigma_min = 0
        self.sigma_max = float('inf')
        self.sigma_grid = sigma_grid
        self.sigmas, self.labels = [], []

    def round_sigma(self, sigma):
        sigma = torch.as_tensor(sigma)
        if self.sigma_grid is None:
            return sigma
        grid = self.sigma_grid.to(sigma.device, sigma.dtype)
        return grid[(sigma.reshape(-1, 1) - grid.reshape(1, -1)).abs().argmin(1)].reshape(sigma.shape)

    def forward(self, x, sigma, class_labels=None):
        x = x.to(torch.float32)
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1, 1, 1, 1)
        self.sigmas.append(sigma.flatten()[0].item())
        self.labels.append(class_labels)
        return x * self.std ** 2 / (self.std ** 2 + sigma ** 2)

# Exact probability-flow map of the Gaussian from sigma_start to 0: x0 = x * s / sqrt(s^2 + sigma^2).
def exact_factor(sigma_start, std=0.5):
    return sigma_start * std / math.sqrt(sigma_start ** 2 + std ** 2)

def latents(n=4, channels=1, resolution=8, seed=0):
    return torch.randn(n, channels, resolution, resolution, generator=torch.Generator().manual_seed(seed))

# Relative error of a deterministic sampler on the Gaussian (the output is latents * a constant).
def gaussian_error(sampler, **kwargs):
    net, z = GaussianDenoiser(), latents()
    x = sampler(net, z, **kwargs)
    return ((x / z).mean().item() / exact_factor(net.sigmas[0]) - 1), net

#----------------------------------------------------------------------------
# Noise levels and network calls.

def test_edm_sigma_steps_known_values():
    s = sampling.edm_sigma_steps(18, 0.002, 80, 7)
    assert s.dtype == torch.float64 and s.shape == (18,)
    assert s[0].item() == pytest.approx(80, rel=1e-12) and s[-1].item() == pytest.approx(0.002, rel=1e-12)
    assert torch.all(s[1:] < s[:-1])
    mid = sampling.edm_sigma_steps(3, 0.002, 80, 7)[1].item()
    assert mid == pytest.approx(2.5152190, rel=1e-6)  # ((80^(1/7) + 0.002^(1/7)) / 2)^7

def test_edm_sampler_calls_and_levels():
    net = GaussianDenoiser()
    sampling.edm_sampler(net, latents(), num_steps=6)
    levels = sampling.edm_sigma_steps(6, 0.002, 80, 7).tolist()
    expected = [levels[0]] + [s for s in levels[1:] for _ in range(2)]  # Heun: each t_next twice, 2N-1 calls
    assert net.sigmas == pytest.approx(expected, rel=1e-6)

def test_sigma_range_clamped_to_network():
    net = GaussianDenoiser()
    net.sigma_min, net.sigma_max = 0.01, 20.0
    sampling.edm_sampler(net, latents(), num_steps=5)
    assert net.sigmas[0] == pytest.approx(20.0) and net.sigmas[-1] == pytest.approx(0.01)

@pytest.mark.parametrize('disc,first,last', [
    ('vp', math.sqrt(math.expm1(0.5 * 19.9 + 0.1)), math.sqrt(math.expm1(0.5 * 19.9 * 1e-6 + 0.1 * 1e-3))),
    ('ve', 100, 0.02), ('edm', 80, 0.002)])
def test_ablation_default_ranges(disc, first, last):
    net = GaussianDenoiser()
    sampling.ablation_sampler(net, latents(), num_steps=8, solver='euler', discretization=disc)
    assert len(net.sigmas) == 8
    assert net.sigmas[0] == pytest.approx(first, rel=1e-6) and net.sigmas[-1] == pytest.approx(last, rel=1e-5)

def test_iddpm_levels_match_network_buffer():
    from training.networks import iDDPMPrecond
    pre = iDDPMPrecond(img_resolution=8, img_channels=1, model_channels=16, channel_mult=[1], num_blocks=1, attn_resolutions=[])
    u = sampling.iddpm_sigma_levels(M=1000)
    assert u.dtype == torch.float64 and u[-1] == 0 and torch.all(u[1:] < u[:-1])
    assert torch.allclose(u.float(), pre.u, rtol=2e-4, atol=0)  # the network recurses in float32, the sampler in float64
    net = GaussianDenoiser()
    sampling.ablation_sampler(net, latents(), num_steps=10, solver='euler', discretization='iddpm')
    on_grid = lambda s: (u - s).abs().min().item() < 1e-5 * s
    assert net.sigmas[0] <= 81 and net.sigmas[-1] >= 0.002 and all(on_grid(s) for s in net.sigmas)

def test_samplers_only_query_rounded_sigmas():
    grid = torch.logspace(-3, 2, 40, dtype=torch.float64)
    for sampler, kwargs in [(sampling.edm_sampler, {}), (sampling.ablation_sampler, dict(solver='heun'))]:
        net = GaussianDenoiser(sigma_grid=grid)
        rnd = sampling.StackedRandomGenerator('cpu', [0, 1, 2, 3])
        sampler(net, latents(), randn_like=rnd.randn_like, num_steps=12, S_churn=5, **kwargs)
        assert all((grid - s).abs().min().item() <= 1e-6 * s for s in net.sigmas)

#----------------------------------------------------------------------------
# Known answers on Gaussian data.

def test_edm_sampler_recovers_gaussian():
    err, net = gaussian_error(sampling.edm_sampler, num_steps=128)
    assert abs(err) < 2e-3
    assert len(net.sigmas) == 2 * 128 - 1

def test_edm_sampler_matches_ablation_edm_config():
    for S_churn in [0, 30]:
        z = latents(n=3)
        a = sampling.edm_sampler(GaussianDenoiser(), z, randn_like=sampling.StackedRandomGenerator('cpu', [5, 6, 7]).randn_like,
            num_steps=10, S_churn=S_churn)
        b = sampling.ablation_sampler(GaussianDenoiser(), z, randn_like=sampling.StackedRandomGenerator('cpu', [5, 6, 7]).randn_like,
            num_steps=10, S_churn=S_churn, solver='heun', discretization='edm', schedule='linear', scaling='none')
        assert a.dtype == b.dtype == torch.float64
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)

def test_convergence_order():
    # Heun's global error falls ~4x per step doubling, Euler's ~2x.
    heun = [abs(gaussian_error(sampling.edm_sampler, num_steps=n)[0]) for n in (18, 36, 72)]
    assert 3.3 < heun[0] / heun[1] < 5.5 and 3.3 < heun[1] / heun[2] < 5.5
    ddim = dict(solver='euler', discretization='vp', schedule='vp', scaling='vp')
    euler = [abs(gaussian_error(sampling.ablation_sampler, num_steps=n, **ddim)[0]) for n in (36, 72, 144)]
    assert 1.6 < euler[0] / euler[1] < 2.4 and 1.6 < euler[1] / euler[2] < 2.4

@pytest.mark.parametrize('solver,disc,schedule,scaling', ALL_CONFIGS)
def test_ablation_converges_to_gaussian(solver, disc, schedule, scaling):
    # Every configuration integrates the same ODE; its error is small or shrinks with more steps.
    kw = dict(solver=solver, discretization=disc, schedule=schedule, scaling=scaling)
    coarse, _ = gaussian_error(sampling.ablation_sampler, num_steps=64, **kw)
    fine, net = gaussian_error(sampling.ablation_sampler, num_steps=256, **kw)
    assert abs(fine) < 2e-3 or abs(fine) < abs(coarse) / 3, (coarse, fine)
    assert abs(fine) < 0.35
    assert len(net.sigmas) == (256 if solver == 'euler' else 2 * 256 - 1)

def test_stochastic_sampler_statistics():
    # With churn the images are no longer a fixed multiple of the latents, yet the data std is kept.
    net, z = GaussianDenoiser(), latents(n=256)
    rnd = sampling.StackedRandomGenerator('cpu', range(256))
    x = sampling.edm_sampler(net, z, randn_like=rnd.randn_like, num_steps=64, S_churn=40, S_min=0.05, S_max=50)
    assert abs(x.std().item() - 0.5) < 0.015 and abs(x.mean().item()) < 0.01
    assert np.corrcoef(x.flatten().numpy(), z.flatten().numpy())[0, 1] < 0.95

#----------------------------------------------------------------------------
# Every configuration runs with churn, is deterministic per seed, and draws noise once per step.

class CountingRandom(sampling.StackedRandomGenerator):
    def __init__(self, *args):
        super().__init__(*args)
        self.calls = 0
    def randn_like(self, input):
        self.calls += 1
        return super().randn_like(input)

@pytest.mark.parametrize('churn', [0, 10])
def test_all_configs_deterministic(churn):
    results = {}
    for solver, disc, schedule, scaling in [('edm',) * 4] + ALL_CONFIGS:
        outs = []
        for _ in range(2):
            rnd = CountingRandom('cpu', [11, 12])
            kw = dict(randn_like=rnd.randn_like, num_steps=5, S_churn=churn)
            if solver == 'edm':
                x = sampling.edm_sampler(GaussianDenoiser(), latents(n=2, seed=3), **kw)
            else:
                x = sampling.ablation_sampler(GaussianDenoiser(), latents(n=2, seed=3), solver=solver,
                    discretization=disc, schedule=schedule, scaling=scaling, **kw)
            assert rnd.calls == 5 and x.dtype == torch.float64 and torch.isfinite(x).all()
            outs.append(x)
        assert torch.equal(outs[0], outs[1])
        results[(solver, disc, schedule, scaling)] = outs[0]
    assert len({tuple(x.flatten()[:4].tolist()) for x in results.values()}) > 30  # the options matter

def test_churn_changes_result_only_when_enabled():
    z = latents(n=2)
    run = lambda **kw: sampling.edm_sampler(GaussianDenoiser(), z, num_steps=8,
        randn_like=sampling.StackedRandomGenerator('cpu', [1, 2]).randn_like, **kw)
    base = run()
    assert torch.equal(base, run(S_churn=10, S_min=1000))      # outside [S_min, S_max]: no churn
    assert not torch.allclose(base, run(S_churn=10), atol=1e-3)

def test_sampler_argument_errors():
    net, z = GaussianDenoiser(), latents()
    with pytest.raises(ValueError, match='solver'):
        sampling.ablation_sampler(net, z, solver='rk4')
    with pytest.raises(ValueError, match='discretization'):
        sampling.ablation_sampler(net, z, discretization='cosine')
    with pytest.raises(ValueError, match='num_steps'):
        sampling.edm_sampler(net, z, num_steps=1)

#----------------------------------------------------------------------------
# Per-seed random streams, seed lists and the split over ranks.

def test_stacked_random_generator_known_answer():
    rnd = sampling.StackedRandomGenerator('cpu', [7, 2 ** 32 + 9])
    x = rnd.randn([2, 3, 4])
    assert torch.equal(x[0], torch.randn([3, 4], generator=torch.Generator().manual_seed(7)))
    assert torch.equal(x[1], torch.randn([3, 4], generator=torch.Generator().manual_seed(9)))  # seed % 2**32
    g = torch.Generator().manual_seed(7)
    torch.randn([3, 4], generator=g)
    labels = rnd.randint(10, size=[2])
    assert labels.shape == (2,) and labels[0] == torch.randint(10, size=[], generator=g)
    y = rnd.randn_like(torch.zeros(2, 5, dtype=torch.float64))
    assert y.dtype == torch.float64 and y.shape == (2, 5)
    with pytest.raises(ValueError, match='seeds'):
        rnd.randn([3, 4])

def test_parse_int_list():
    assert sampling.parse_int_list('0-3,10') == [0, 1, 2, 3, 10]
    assert sampling.parse_int_list('5') == [5]
    assert sampling.parse_int_list([1, 2]) == [1, 2]
    for bad in ['', '1,,2', 'a', '3-1', '-1', '1-2-3']:
        with pytest.raises(ValueError):
            sampling.parse_int_list(bad)

def test_split_seeds():
    rank0 = [b.tolist() for b in sampling.split_seeds(list(range(10)), 3, rank=0, world_size=2)]
    rank1 = [b.tolist() for b in sampling.split_seeds(list(range(10)), 3, rank=1, world_size=2)]
    assert rank0 == [[0, 1, 2], [6, 7]] and rank1 == [[3, 4, 5], [8, 9]]
    for n, batch, world in [(1, 1, 1), (7, 64, 3), (100, 8, 4), (65, 64, 1)]:
        parts = [sampling.split_seeds(list(range(n)), batch, r, world) for r in range(world)]
        assert len({len(p) for p in parts}) == 1                         # same iteration count on every rank
        assert sorted(s for p in parts for b in p for s in b.tolist()) == list(range(n))
        assert max(len(b) for p in parts for b in p) <= batch

#----------------------------------------------------------------------------
# The library entry point.

def test_generate_images_batch_independent():
    net = GaussianDenoiser(channels=3, resolution=4)
    a = sampling.generate_images(net, seeds=range(8), device='cpu', max_batch_size=8, num_steps=6, S_churn=5)
    b = sampling.generate_images(net, seeds='0-7', device='cpu', max_batch_size=3, num_steps=6, S_churn=5)
    assert a.dtype == torch.uint8 and a.shape == (8, 3, 4, 4) and torch.equal(a, b)
    one = sampling.generate_images(net, seeds=[5], device='cpu', num_steps=6, S_churn=5)
    assert torch.equal(one[0], a[5])
    z = torch.randn([3, 4, 4], generator=torch.Generator().manual_seed(5))[None]
    rnd = sampling.StackedRandomGenerator('cpu', [5])
    rnd.randn([1, 3, 4, 4])
    manual = sampling.edm_sampler(net, z, randn_like=rnd.randn_like, num_steps=6, S_churn=5)
    assert torch.equal(sampling.to_uint8(manual)[0], one[0])

def test_generate_images_ablation_selection():
    net = GaussianDenoiser()
    sampling.generate_images(net, seeds=[0], device='cpu', num_steps=5)
    assert len(net.sigmas) == 9
    net.sigmas.clear()
    sampling.generate_images(net, seeds=[0], device='cpu', num_steps=5, solver='euler')
    assert len(net.sigmas) == 5
    net.sigmas.clear()
    sampling.generate_images(net, seeds=[0], device='cpu', num_steps=5, solver=None, sigma_max=None)  # None = default
    assert len(net.sigmas) == 9

def test_generate_images_labels_drawn_after_latents():
    net = GaussianDenoiser(label_dim=10)
    sampling.generate_images(net, seeds=[3, 4], device='cpu', num_steps=3)
    for i, seed in enumerate([3, 4]):
        g = torch.Generator().manual_seed(seed)
        torch.randn([1, 8, 8], generator=g)
        assert net.labels[0][i].argmax().item() == torch.randint(10, size=[], generator=g).item()
        assert net.labels[0][i].sum().item() == 1
    net.labels.clear()
    sampling.generate_images(net, seeds=[3, 4], device='cpu', num_steps=3, class_idx=7)
    assert net.labels[0].argmax(1).tolist() == [7, 7] and net.labels[0].sum().item() == 2
    with pytest.raises(ValueError, match='label_dim=10'):
        sampling.generate_images(net, seeds=[0], device='cpu', class_idx=10)
    with pytest.raises(ValueError, match='unconditional'):
        sampling.generate_images(GaussianDenoiser(), seeds=[0], device='cpu', class_idx=0)

#----------------------------------------------------------------------------
# training.images

def test_to_uint8_known_values():
    x = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.999, 1.0, 3.0], dtype=torch.float64)
    assert sampling.to_uint8(x).tolist() == [0, 0, 64, 128, 255, 255, 255]
    assert sampling.to_uint8(torch.tensor([0.0039])).item() == 128     # 128.497 truncates
    assert sampling.to_uint8(np.array([-0.5, 0.5])).tolist() == [64, 191]

def test_save_image_grid_layout(tmp_path):
    x = torch.arange(5, dtype=torch.uint8).reshape(5, 1, 1, 1).repeat(1, 3, 2, 4) * 40
    img.save_image_grid(x, tmp_path / 'g.png')
    g = np.asarray(PIL.Image.open(tmp_path / 'g.png'))
    assert PIL.Image.open(tmp_path / 'g.png').mode == 'RGB' and g.shape == (4, 12, 3)   # 3 x 2 grid of 2 x 4
    assert g[0, 0, 0] == 0 and g[0, 4, 0] == 40 and g[0, 8, 0] == 80 and g[2, 0, 0] == 120 and g[2, 4, 0] == 160
    assert (g[2:, 8:] == 0).all()                                                      # unused cell is black
    img.save_image_grid(x[:, :1].numpy(), tmp_path / 'l.png', grid_w=5)
    assert PIL.Image.open(tmp_path / 'l.png').mode == 'L' and np.asarray(PIL.Image.open(tmp_path / 'l.png')).shape == (2, 20)

def test_image_errors(tmp_path):
    with pytest.raises(ValueError, match='uint8'):
        img.save_image_grid(torch.zeros(2, 3, 4, 4), tmp_path / 'x.png')
    with pytest.raises(ValueError, match='channels'):
        img.save_image_grid(torch.zeros(2, 2, 4, 4, dtype=torch.uint8), tmp_path / 'x.png')
    with pytest.raises(ValueError, match='shape'):
        img.save_image_grid(torch.zeros(4, 4, dtype=torch.uint8), tmp_path / 'x.png')

# What save_image writes, the dataset reader (the one image-folder reader) reads back exactly.
def test_saved_images_read_back(tmp_path):
    for channels in [3, 1]:
        x = torch.randint(0, 256, [3, channels, 4, 4], dtype=torch.uint8, generator=torch.Generator().manual_seed(channels))
        folder = tmp_path / f'c{channels}'
        for i in range(3):
            img.save_image(x[i], str(folder / f'{i // 2:02d}' / f'{i:03d}.png'))
        dataset = ImageFolderDataset(str(folder))
        assert torch.equal(torch.from_numpy(np.stack([dataset[i][0] for i in range(3)])), x)
        with zipfile.ZipFile(tmp_path / f'c{channels}.zip', 'w') as zf:
            for i in range(3):
                zf.write(folder / f'{i // 2:02d}' / f'{i:03d}.png', f'{i // 2:02d}/{i:03d}.png')
        dataset = ImageFolderDataset(str(tmp_path / f'c{channels}.zip'))
        assert torch.equal(torch.from_numpy(np.stack([dataset[i][0] for i in range(3)])), x)

#----------------------------------------------------------------------------
# The CLI on a tiny real network snapshot (conftest.write_tiny_snapshot).

@pytest.fixture(scope='module')
def snapshot(tmp_path_factory):
    path = tmp_path_factory.mktemp('net') / 'network-snapshot-000000.pkl'
    net = write_tiny_snapshot(path)
    return str(path), net

def read_pngs(folder, seeds, subdirs=False):
    return np.stack([np.asarray(PIL.Image.open(generate.image_path(str(folder), s, subdirs))) for s in seeds])

def test_cli_batch_independent_and_matches_library(snapshot, tmp_path, cli):
    path, net = snapshot
    for batch in [5, 2]:
        cli(generate.main, [f'--network={path}', f'--outdir={tmp_path / f"b{batch}"}', '--seeds=0-4', f'--batch={batch}', '--steps=4', '--device=cpu'])
    a, b = read_pngs(tmp_path / 'b5', range(5)), read_pngs(tmp_path / 'b2', range(5))
    assert a.shape == (5, 8, 8, 3) and np.array_equal(a, b)
    assert len({x.tobytes() for x in a}) == 5
    lib = sampling.generate_images(net, seeds=range(5), device='cpu', num_steps=4)
    assert np.array_equal(lib.permute(0, 2, 3, 1).numpy(), a)

def test_cli_ablation_grid_and_subdirs(snapshot, tmp_path, cli):
    path, net = snapshot
    seeds = [998, 999, 1000, 1001, 2500]
    cli(generate.main, [f'--network={path}', f'--outdir={tmp_path}', '--seeds=998-1001,2500', '--subdirs', '--steps=3',
        '--solver=euler', '--disc=vp', '--schedule=vp', '--scaling=vp', f'--grid={tmp_path / "grid.png"}', '--device=cpu'])
    assert sorted(os.listdir(tmp_path / '000000')) == ['000998.png', '000999.png']
    assert sorted(os.listdir(tmp_path / '001000')) == ['001000.png', '001001.png']
    assert os.listdir(tmp_path / '002000') == ['002500.png']
    images = read_pngs(tmp_path, seeds, subdirs=True)
    lib = sampling.generate_images(net, seeds=seeds, device='cpu', num_steps=3, solver='euler', discretization='vp',
        schedule='vp', scaling='vp')
    assert np.array_equal(lib.permute(0, 2, 3, 1).numpy(), images)
    grid = np.asarray(PIL.Image.open(tmp_path / 'grid.png'))
    assert grid.shape == (16, 24, 3)                               # 5 images -> 3 x 2 grid of 8 x 8
    assert np.array_equal(grid[8:16, 8:16], images[4]) and (grid[8:, 16:] == 0).all()

def test_cli_grayscale_and_conditional(tmp_path, cli):
    path = tmp_path / 'cond.pkl'
    write_tiny_snapshot(path, channels=1, label_dim=5)
    cli(generate.main, [f'--network={path}', f'--outdir={tmp_path / "a"}', '--seeds=0-2', '--steps=3', '--class=4', '--device=cpu'])
    assert PIL.Image.open(tmp_path / 'a' / '000002.png').mode == 'L'
    cli(generate.main, [f'--network={path}', f'--outdir={tmp_path / "b"}', '--seeds=0-2', '--steps=3', '--device=cpu'])
    assert not np.array_equal(read_pngs(tmp_path / 'a', range(3)), read_pngs(tmp_path / 'b', range(3)))
    cli(generate.main, [f'--network={path}', f'--outdir={tmp_path / "c"}', '--seeds=0', '--class=5', '--device=cpu'], fails_with='5 classes')

def test_cli_trust_code(snapshot, tmp_path, cli):
    path, _ = snapshot
    for flag, out in [('--trust-code', 'trusted'), (None, 'safe')]:
        cli(generate.main, [*([flag] if flag else []), f'--network={path}', f'--outdir={tmp_path / out}', '--seeds=0-1', '--steps=3', '--device=cpu'])
    assert np.array_equal(read_pngs(tmp_path / 'trusted', [0, 1]), read_pngs(tmp_path / 'safe', [0, 1]))

def test_cli_errors(snapshot, tmp_path, cli):
    path, _ = snapshot
    cases = [
        ([f'--network={tmp_path / "missing.pkl"}'], 'not found'),
        ([f'--network={path}', '--class=0'], 'unconditional'),
        ([f'--network={path}', '--seeds=3-1'], 'empty range'),
        ([f'--network={path}', '--steps=1'], '--steps'),
        ([f'--network={path}', '--disc=cosine'], '--disc'),
    ]
    (tmp_path / 'file').write_bytes(b'')
    cases.append(([f'--network={path}', f'--outdir={tmp_path / "file"}'], 'not a folder'))
    (tmp_path / 'corrupt.pkl').write_bytes(b'\x80\x04garbage')
    cases.append(([f'--network={tmp_path / "corrupt.pkl"}'], 'cannot load network'))
    for args, message in cases:
        cli(generate.main, [f'--outdir={tmp_path / "out"}', *args, '--device=cpu'], fails_with=message)  # a later --outdir wins
    if not torch.cuda.is_available():
        cli(generate.main, [f'--network={path}', f'--outdir={tmp_path / "out"}', '--device=cuda:7'], fails_with='--device')
    assert not os.path.exists(tmp_path / 'out' / '000000.png') or torch.cuda.device_count() > 7

#----------------------------------------------------------------------------
# Two processes under torchrun (Gloo; the suite's shared launch, conftest.gloo_runs) write the
# same PNGs as one process.

def test_torchrun_two_processes(gloo_runs, tmp_path, cli):
    cli(generate.main, [f'--network={gloo_runs["net"]}', *GLOO_ARGS['generate'], f'--outdir={tmp_path / "one"}'])
    assert sorted(os.listdir(gloo_runs['generate'])) == [f'{s:06d}.png' for s in range(7)]
    assert np.array_equal(read_pngs(gloo_runs['generate'], range(7)), read_pngs(tmp_path / 'one', range(7)))
    assert np.asarray(PIL.Image.open(gloo_runs['grid'])).shape == (24, 24, 3)

#----------------------------------------------------------------------------
