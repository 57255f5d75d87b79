"""Tests of the lean training step (training/multi_tensor.py), the opt-in fast paths
(training/fast_paths.py), the loop bench (edm_spectral/bench_loop.py) and the CPU side of the
GPU check (edm_spectral/gpucheck.py), all at toy size."""

import copy
import json
import pickle

import pytest
import torch

from conftest import loop_kwargs, read_stats
from edm_spectral import bench_loop
from edm_spectral import gpucheck
from torch_utils import training_stats
from training import fast_paths
from training import multi_tensor
from training import networks
from training import training_loop

TOY = gpucheck.TOY_NETWORK # a DDPM++ of 16 channels, attention at 4x4, dropout

# A U-Net of one level, attention at 8x8: about half of TOY's operators. compile traces the
# network once (seconds per level); the lean step's bits, every fast path's run, the sampling
# forms and the GPU check's CPU part run it in place of TOY.
ONE_LEVEL = dict(TOY, channel_mult=[1], attn_resolutions=[8])

@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

def _states_equal(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))

#----------------------------------------------------------------------------
# The lean step gives EDM's bits: N steps of the per-parameter loop and of ours, from the same
# weights and draws, end in identical weights, EMA and Adam state, non-finite gradients included.

def test_lean_step_matches_per_parameter_loop():
    trainers = [bench_loop.Trainer(ONE_LEVEL, 8, 4, 'cpu', per_parameter=per_parameter, lr=1e-2, ema_beta=0.9) for per_parameter in (True, False)]
    def corrupt(grads):
        grads[3].view(-1)[0] = float('nan')
        grads[5].view(-1)[1] = float('inf')
        grads[7].view(-1)[2] = -float('inf')
        grads[9].view(-1)[0] = 3e38 # finite: kept as it is
    bench_loop.steps_in_lockstep(trainers, 5, corrupt) # the same sigma, noise and dropout on both sides
    edm, ours = trainers
    assert _states_equal(edm.net, ours.net)
    assert _states_equal(edm.ema, ours.ema)
    sa, sb = edm.optimizer.state_dict()['state'], ours.optimizer.state_dict()['state']
    assert sa.keys() == sb.keys() and all(torch.equal(sa[i][k], sb[i][k]) for i in sa for k in sa[i])
    assert float(sa[0]['step']) == 5
    assert not _states_equal(edm.net, bench_loop.Trainer(ONE_LEVEL, 8, 4, 'cpu').net) # it did train

# Settings the multi-tensor Adam does not cover go to torch's own step.
def test_adam_step_falls_back_to_torch():
    net = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.1, amsgrad=True)
    reference = copy.deepcopy(net)
    reference_optimizer = torch.optim.Adam(reference.parameters(), lr=0.1, amsgrad=True)
    for model, opt, step in [(net, optimizer, multi_tensor.adam_step), (reference, reference_optimizer, lambda o: o.step())]:
        for _ in range(3):
            opt.zero_grad()
            model(torch.ones(1, 3)).sum().backward()
            step(opt)
    assert _states_equal(net, reference)
    assert not multi_tensor._is_plain_adam(optimizer)
    assert multi_tensor._is_plain_adam(torch.optim.Adam(net.parameters()))
    assert not multi_tensor._is_plain_adam(torch.optim.Adam(net.parameters(), foreach=False))

# No operation of the step reads a value from the device: on the meta device (tensors without
# data) any such read fails. The counts of the loss statistics are filled on the device too.
def test_step_reads_nothing_from_the_device():
    with torch.device('meta'):
        net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 1))
    ema = copy.deepcopy(net).requires_grad_(False)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    clean = multi_tensor.GradientCleaner(net.parameters())
    for _ in range(3):
        optimizer.zero_grad(set_to_none=True)
        loss = net(torch.ones(2, 4, device='meta'))
        training_stats.report('Loss/meta-test', loss)
        loss.sum().backward()
        clean()
        multi_tensor.adam_step(optimizer)
        multi_tensor.update_ema(ema.parameters(), net.parameters(), 0.5)
    with pytest.raises((RuntimeError, NotImplementedError)):
        loss.sum().item() # the probe works: reading meta data fails
    training_stats._unsynced.pop('Loss/meta-test', None)

# The profiler's counts (>= 10x fewer operator calls outside forward and backward): the lean
# bench of test_gpucheck_cpu_part, which counts them on a toy network at batch 2. They come from the
# profiler's event tree; its list of events gives the same counts (redispatches dropped alike).
def test_operator_counts_from_the_tree_match_the_event_list():
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 1))
    ema = copy.deepcopy(net).requires_grad_(False)
    for per_parameter in (True, False):
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, **(dict(foreach=False) if per_parameter else {}))
        clean = multi_tensor.GradientCleaner(net.parameters())
        for _ in range(2): # the second step counts Adam's steady state
            net(torch.ones(2, 4)).sum().backward()
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                if per_parameter:
                    bench_loop.per_parameter_update(optimizer, net, ema, 1e-3, 0.9)
                else:
                    bench_loop.lean_update(optimizer, clean, net, ema, 1e-3, 0.9)
        counts = bench_loop._count_in_tree(prof.profiler.kineto_results.experimental_event_tree())
        assert counts == bench_loop._count_in_events(prof.events()) and counts['calls'] > 0 and counts['nested'] > 0, counts

#----------------------------------------------------------------------------
# Each fast path trains (the loss on a fixed draw falls) and stays close to the exact path.

# Without dropout: its masks are drawn in memory order, so a layout change drops other elements.
def _train(fast, steps=6, loss_kwargs={}, net=TOY):
    return bench_loop.train_fixed_draw(net, 8, 4, 'cpu', fast=fast, steps=steps, loss_kwargs=loss_kwargs)

# The exact path's run, once per network for every case (nothing changes it afterwards).
_exact_runs = {}
def _exact(net):
    key = json.dumps(net, sort_keys=True)
    if key not in _exact_runs:
        _exact_runs[key] = _train(None, net=net)
    return _exact_runs[key]

@pytest.mark.parametrize('name,options,tolerance,weight_tolerance,net', [
    ('amp', dict(amp='bf16'), 5e-2, 0.5, ONE_LEVEL),
    ('channels_last', dict(channels_last=True), 1e-3, 0.05, ONE_LEVEL),
    ('fused_adam', dict(fused_adam=True), 1e-3, 0.05, ONE_LEVEL),
    ('fused_attention', dict(fused_attention=True), 1e-3, 0.05, ONE_LEVEL),
    ('compile', dict(compile='eager'), 1e-6, 1e-6, ONE_LEVEL), # eager: the same kernels, traced
], ids=['amp', 'channels_last', 'fused_adam', 'fused_attention', 'compile'])
def test_fast_path_trains_close_to_exact(name, options, tolerance, weight_tolerance, net):
    exact, exact_losses = _exact(net)
    fast, fast_losses = _train(options, net=net)
    assert fast_losses[-1] < fast_losses[0] * 0.9, fast_losses
    assert abs(fast_losses[-1] - exact_losses[-1]) <= tolerance * exact_losses[-1], (fast_losses, exact_losses)
    # The weights: apart by a fraction of what training moved them (L2 over all tensors).
    start = bench_loop.Trainer(dict(net, dropout=0), 8, 4, 'cpu').net
    flat = lambda net: torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    apart = float((flat(fast.net) - flat(exact.net)).norm() / (flat(exact.net) - flat(start)).norm())
    assert apart < weight_tolerance, apart
    assert all(p.is_contiguous() for p in fast.ema.parameters())
    assert not any(vars(m).get('fused_attention') for m in fast.ema.modules()) # the EMA stays exact

# bf16 autocast covers the denoiser only: the spectral term sees float32 outside autocast.
def test_amp_keeps_the_spectral_term_in_float32(monkeypatch):
    from training.spectral_loss import SpectralLoss
    seen = []
    original = SpectralLoss.__call__
    def spy(self, x0_hat, x0):
        seen.append((x0_hat.dtype, x0.dtype, torch.is_autocast_enabled('cpu')))
        return original(self, x0_hat, x0)
    monkeypatch.setattr(SpectralLoss, '__call__', spy)
    trainer, losses = _train(dict(amp='bf16'), steps=3, loss_kwargs=dict(spectral_kwargs=dict(kind='fourier-amp', weight=1.0)))
    assert seen and all(s == (torch.float32, torch.float32, False) for s in seen)
    assert losses[-1] < losses[0]

def test_check_fast_paths():
    assert fast_paths.check_fast_paths(None, 'cpu') == fast_paths.DEFAULTS
    assert fast_paths.check_fast_paths(dict(compile=True), 'cpu')['compile'] == 'inductor' # g++ is on this machine
    with pytest.raises(ValueError, match='unknown option'):
        fast_paths.check_fast_paths(dict(turbo=True), 'cpu')
    with pytest.raises(ValueError, match='amp'):
        fast_paths.check_fast_paths(dict(amp='fp8'), 'cpu')
    with pytest.raises(ValueError, match='compile'):
        fast_paths.check_fast_paths(dict(compile='cudagraphs-please'), 'cpu')

# Without a C++ compiler, inductor is refused up front with a message that says what to do.
def test_compile_without_compiler(monkeypatch):
    monkeypatch.setattr(fast_paths.shutil, 'which', lambda name: None)
    monkeypatch.delenv('CXX', raising=False)
    with pytest.raises(RuntimeError, match='needs a C\\+\\+ compiler.*without --compile'):
        fast_paths.check_fast_paths(dict(compile='inductor'), 'cpu')
    fast_paths.check_fast_paths(dict(compile='eager'), 'cpu') # needs no compiler

def test_fused_attention_switch():
    torch.manual_seed(0)
    net = networks.EDMPrecond(img_resolution=8, img_channels=3, **TOY).eval()
    x, sigma = torch.randn(2, 3, 8, 8), torch.tensor([5.0, 20.0])
    exact = net(x, sigma)
    networks.set_fused_attention(net)
    assert sum(vars(m).get('fused_attention', False) for m in net.modules()) > 0
    fused = net(x, sigma)
    assert torch.allclose(fused, exact, atol=1e-5)
    networks.set_fused_attention(net, False)
    assert torch.equal(net(x, sigma), exact)
    assert 'fused_attention' not in networks.UNetBlock.__init__.__code__.co_varnames # not a constructor argument

#----------------------------------------------------------------------------
# The fast paths through the training loop: they train, and snapshots stay in the exact form.

def test_training_loop_with_fast_paths(tmp_path, tiny_dataset):
    data = tiny_dataset()
    run_dir = str(tmp_path / 'run')
    options = dict(amp='bf16', channels_last=True, fused_adam=True, fused_attention=True)
    result = training_loop.training_loop(**loop_kwargs(run_dir, data, fast_paths=options, export_net='raw', state_dump_ticks=None))
    assert result.cur_nimg == 8
    stats = read_stats(run_dir)
    assert all(s['Loss/loss']['num'] > 0 for s in stats) and 'Resources/peak_step_mem_gb' in stats[-1]
    with open(result.last_snapshot, 'rb') as f:
        net = pickle.load(f)['ema']
    assert all(p.is_contiguous() for p in net.parameters())
    assert not any(vars(m).get('fused_attention') for m in net.modules())
    with pytest.raises(ValueError, match='unknown option'):
        training_loop.training_loop(**loop_kwargs(str(tmp_path / 'bad'), data, fast_paths=dict(warp=1)))

#----------------------------------------------------------------------------
# python -m edm_spectral.bench --loop prints the ratios of the parts asked for and writes them,
# with the machine's name, threads and load, as JSON. (Every part, and the text of each, at toy
# size: test_gpucheck_cpu_part, whose speed bench runs the three.)

def test_bench_loop_cli(tmp_path, cli):
    from edm_spectral import bench
    out = tmp_path / 'loop.json'
    result = cli(bench.main, ['--loop', '--device=cpu', '--resolutions=8', '--cbase=8', '--batch=2', '--iters=1', '--warmup=0', '--sample-images=1', '--sample-steps=2',
        '--parts=lean,sampling', f'--out={out}'])
    for text in ['8 channels', 'fewer operator calls outside forward and backward', 'the update speed', 'images/s', 'load average']:
        assert text in result.output, text
    assert 'Fast paths vs the exact path' not in result.output # --parts: no fast part
    data = json.loads(out.read_text())
    assert data['device_name'] == bench.device_name('cpu') and data['cbase'] == 8 and len(data['load_before']) == 3
    part = data['results'][0]
    assert set(part) == {'resolution', 'lean', 'sampling'} and data['parts'] == ['lean', 'sampling']
    assert part['lean']['call_ratio'] >= 10 and part['sampling']['rows']['exact']['max_abs_diff_uint8'] == 0
    assert (part['sampling']['num_images'], part['sampling']['num_steps']) == (1, 2) # not --batch, not the default 18
    assert all(row['peak_gb'] > 0 for p in ('lean', 'sampling') for row in part[p]['rows'].values())
    cli(bench.main, ['--loop', '--preset=full', '--cbase=8'], fails_with='--cbase sets the reduced DDPM++')
    cli(bench.main, ['--loop', '--parts=lean,turbo'], fails_with='--parts')

#----------------------------------------------------------------------------
# Sampling: the fast forms are copies (the exact network, and with it the default sampler's
# images, stay as they were), and on the bench's trained-looking weights they do show their
# differences (a fresh network's zero-initialized output layers would hide them all).

def test_sampling_forms_leave_the_exact_network_alone():
    from training.sampling import generate_images
    seeds = [0, 1, 2]
    fresh = bench_loop.Trainer(ONE_LEVEL, 8, 1, 'cpu').net.eval().requires_grad_(False)
    assert torch.equal(generate_images(bench_loop.sampling_forms(fresh, 'cpu')['amp'], seeds, num_steps=3),
        generate_images(fresh, seeds, num_steps=3)) # bf16 or not: the same images
    exact = bench_loop.sampling_network(ONE_LEVEL, 8, 'cpu')
    before = generate_images(exact, seeds, num_steps=3)
    forms = bench_loop.sampling_forms(exact, 'cpu')
    assert set(forms) == set(bench_loop.SAMPLING_FORMS)
    assert torch.equal(generate_images(exact, seeds, num_steps=3), before) # and in any batch size
    assert torch.equal(generate_images(exact, seeds, num_steps=3, max_batch_size=1), before)
    assert all(p.is_contiguous() for p in exact.parameters()) and not any(vars(m).get('fused_attention') for m in exact.modules())
    images = {name: generate_images(net, seeds, num_steps=3) for name, net in forms.items()}
    assert not torch.equal(images['amp'], before) and not torch.equal(images['all'], before)
    for name in ['channels_last', 'fused_attention']: # float32 throughout: a level or two at most
        assert int((images[name].to(torch.int16) - before.to(torch.int16)).abs().max()) <= 2, name

#----------------------------------------------------------------------------
# The CLI flags: train.py and fine_tune.py record fast_paths only when one is on, and a fast
# path the machine lacks is a one-line error before training.

def test_cli_fast_path_flags(tmp_path, tiny_dataset, cli, monkeypatch):
    import train
    data = tiny_dataset()
    common = ['--outdir', tmp_path / 'runs', '--data', data, '--device=cpu', '--cbase=16', '--cres=1,2', '--batch=4', '--duration=0.000008', '--seed=0']
    plain = cli(train.main, common + ['--dry-run'])
    assert '"fast_paths"' not in plain.output
    fast = cli(train.main, common + ['--dry-run', '--amp=bf16', '--channels-last', '--fused-adam', '--fused-attention'])
    assert '"fast_paths": {\n    "amp": "bf16",\n    "channels_last": true,\n    "fused_adam": true,\n    "fused_attention": true\n  }' in fast.output
    monkeypatch.setattr(fast_paths.shutil, 'which', lambda name: None)
    monkeypatch.delenv('CXX', raising=False)
    cli(train.main, common + ['--dry-run', '--compile'], fails_with='needs a C++ compiler')

#----------------------------------------------------------------------------
# make gpu-check without CUDA: the CUDA checks are skipped with a note, the rest runs at toy
# size, and both reports are written.

def test_gpucheck_cpu_part(tmp_path, cli, monkeypatch):
    monkeypatch.setattr(gpucheck, 'TOY_NETWORK', ONE_LEVEL) # the toy network of every check and bench
    result = cli(gpucheck.main, ['--device=cpu', '--out', tmp_path / 'report'])
    assert 'the CUDA checks are skipped' in result.output
    with open(tmp_path / 'report' / 'gpucheck.json') as f:
        report = json.load(f)
    checks = report['checks']
    assert checks['lean_bits']['status'] == 'pass'
    for name in ['fp16_loss_scaling', 'bf16', 'torchrun_nccl', 'generate_determinism']:
        assert checks[name]['status'] == 'skipped' and 'no CUDA' in checks[name]['note']
    assert checks['spectral_bench']['status'] == 'pass' and len(checks['spectral_bench']['rows']) == 5
    markdown = (tmp_path / 'report' / 'gpucheck.md').read_text()
    assert '| torchrun_nccl | skipped |' in markdown and '## Spectral overhead' in markdown
    # The speed bench at toy size (8x8, batch 2; sampling 2 images, 2 steps), every part.
    speed = checks['speed_bench']
    lean, fast, sampling = speed['lean'], speed['fast'], speed['sampling']
    assert (lean['resolution'], lean['batch'], sampling['num_images'], sampling['num_steps']) == (8, 2, 2, 2)
    # The profiler's counts: >= 10x fewer operator calls outside forward and backward.
    calls = {name: row['calls'] for name, row in lean['rows'].items()}
    assert calls['edm'] >= 10 * lean['num_tensors'] # nan_to_num, 9 in Adam, lerp + copy per tensor
    assert calls['ours'] <= 30
    assert calls['edm'] >= 10 * calls['ours'] and lean['call_ratio'] >= 10
    assert set(fast['rows']) == {'exact', 'amp', 'channels_last', 'fused_adam', 'fused_attention', 'all'} and not fast['skipped']
    assert sampling['rows']['exact']['max_abs_diff_uint8'] == 0 and sampling['rows']['exact']['images_per_s'] > 0
    assert all(row['peak_gb'] > 0 for p in (lean, fast, sampling) for row in p['rows'].values())
    for text in ['fewer operator calls outside forward and backward', 'the update speed', 'speed-up = exact time / fast time', 'images/s']:
        assert text in speed['text'] and text in markdown, text

# The few loop steps of the fp16 check, here on the CPU (where use_fp16 is inert).
def test_gpucheck_tiny_run(tmp_path):
    result = gpucheck._tiny_run(torch.device('cpu'), str(tmp_path), 'tiny', dict(use_fp16=True), loss_scaling=64)
    assert result['losses_finite'] and len(result['losses']) >= 2
    assert all(torch.isfinite(p).all() for p in result['net'].parameters())

# A resume takes the Adam implementation of the options, not the one the state was saved with.
def test_settle_adam_after_resume():
    net = torch.nn.Linear(3, 2)
    saved = torch.optim.Adam(net.parameters(), fused=True)
    net(torch.ones(1, 3)).sum().backward()
    saved.step()
    plain = torch.optim.Adam(net.parameters())
    plain.load_state_dict(saved.state_dict())
    assert plain.param_groups[0]['fused'] # load_state_dict brought the saved flag back
    fast_paths.settle_adam(plain, fast_paths.check_fast_paths(None, 'cpu'))
    assert plain.param_groups[0]['fused'] is None and multi_tensor._is_plain_adam(plain)
    assert all(s['step'].device.type == 'cpu' and s['step'].dtype == torch.float32 for s in plain.state.values())
    fast_paths.settle_adam(plain, fast_paths.check_fast_paths(dict(fused_adam=True), 'cpu'))
    assert plain.param_groups[0]['fused'] is True
