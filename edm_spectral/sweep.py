"""The paper's Table 1 as one command: the grid of fine-tunes from one or more checkpoints (four
regularizers x weighted/unweighted, plus an unregularized control per checkpoint), each then
evaluated in memory (FID over EDM's seed sets, spectral distance to the dataset), and the table
written as results.md and results.json.

Layout of the sweep folder (--outdir):
    ref.npz, dataset-spectrum.json, prepare.json    reference statistics and spectrum of --data
    runs/<checkpoint>/<row>/                         fine_tune.py --nosubdir run folders, each
                                                     with sweep-eval.json once evaluated
    results.md, results.json                         the table

Every step is an ordinary command, printed by --dry-run and --print-jobs: `prepare` and `eval`
(subcommands of this module) and fine_tune.py. With --nproc=1 the fine-tunes run as plain python
subprocesses and prepare/eval run in this process; with --nproc>1 each step is a torchrun job.
A rerun skips what is finished: a fine-tune with weight-movement.json, an evaluation whose
sweep-eval.json has the same settings. An interrupted fine-tune resumes from its last
training state."""

import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import click
import numpy as np

import dnnlib
from edm_spectral import detectors, fid_stats, metrics
from torch_utils import distributed as dist
from training.sampling import parse_int_list

#----------------------------------------------------------------------------
# The grid: four regularizers x {weighted (the loss's own lambda(sigma)), unweighted
# (constant 1)}, and the unregularized control. Tags name the run folders and --only.

REGULARIZERS = [
    ('fourier-amp',       'Fourier amplitude',         ['--spectral=fourier-amp']),
    ('fourier-amp-phase', 'Fourier amplitude + phase', ['--spectral=fourier-amp-phase']),
    ('wavelet-haar',      'Wavelet (Haar)',            ['--spectral=wavelet', '--spectral-wavelet=haar']),
    ('wavelet-bior1.3',   'Wavelet (bior1.3)',         ['--spectral=wavelet', '--spectral-wavelet=bior1.3']),
]
WEIGHTINGS = [('weighted', '--spectral-weight=weighted'), ('unweighted', '--spectral-weight=1')]
CONTROL = 'none'

def grid_rows():
    rows = [dnnlib.EasyDict(tag=CONTROL, regularizer='none (control)', weighting='-', args=['--spectral=none'])]
    for name, label, args in REGULARIZERS:
        for weighting, weight_arg in WEIGHTINGS:
            rows.append(dnnlib.EasyDict(tag=f'{name}-{weighting}', regularizer=label, weighting=weighting, args=args + [weight_arg]))
    return rows

# Options the sweep sets itself for each fine-tune, so they cannot be passed through.
_OWN_OPTIONS = ['--network', '--data', '--outdir', '--nosubdir', '--desc', '--resume', '--spectral', '--spectral-weight',
    '--spectral-wavelet', '--sweep', '--nproc', '--dry-run', '-n', '--device', '--trust-code']

def check_fine_tune_args(args):
    for arg in args:
        if arg.split('=')[0] in _OWN_OPTIONS:
            raise ValueError(f'{arg.split("=")[0]} is set by the sweep for each fine-tune; leave it out of the fine_tune.py options')

#----------------------------------------------------------------------------
# Checkpoint names as they appear in the table and the run folders: the file name without
# .pkl and without EDM's "edm-" prefix (edm-ffhq-64x64-uncond-vp.pkl -> ffhq-64x64-uncond-vp).

def checkpoint_name(network):
    name = os.path.basename(network.rstrip('/'))
    name = re.sub(r'\.pkl$', '', name)
    return re.sub(r'^edm-', '', name)

# One entry per (checkpoint, grid row), in table order.
def plan_rows(networks, outdir, only=None):
    names = [checkpoint_name(n) for n in networks]
    if len(set(names)) != len(names):
        raise ValueError(f'checkpoints must have different file names (they name the run folders): {", ".join(names)}')
    grid = grid_rows()
    tags = [row.tag for row in grid]
    if only is not None:
        unknown = [t for t in only if t not in tags]
        if unknown:
            raise ValueError(f'unknown row(s) {", ".join(unknown)}; the rows are {", ".join(tags)}')
    rows = []
    for network, name in zip(networks, names):
        for row in grid:
            if only is None or row.tag in only:
                rows.append(dnnlib.EasyDict(row, checkpoint=network, checkpoint_name=name, run_dir=os.path.join(outdir, 'runs', name, row.tag)))
    return rows

#----------------------------------------------------------------------------
# Commands. The scripts as the printed commands name them: relative when below the working
# directory, as a user would type them.

def _display_path(path):
    rel = os.path.relpath(os.path.abspath(path))
    return rel if not rel.startswith('..') else os.path.abspath(path)

def fine_tune_script():
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'fine_tune.py')
    if os.path.isfile(script):
        return _display_path(script)
    entry = shutil.which('edm-fine-tune')
    if entry is not None:
        return entry
    raise FileNotFoundError('fine_tune.py is not next to the edm_spectral package and edm-fine-tune is not on PATH')

def _torchrun(nproc):
    launcher = ['torchrun'] if shutil.which('torchrun') else [sys.executable, '-m', 'torch.distributed.run']
    return launcher + ['--standalone', f'--nproc_per_node={nproc}']

def script_command(nproc, script, args):
    return ([sys.executable] if nproc == 1 else _torchrun(nproc)) + [script] + args

def module_command(nproc, subcommand, args):
    return ([sys.executable, '-m'] if nproc == 1 else _torchrun(nproc) + ['-m']) + ['edm_spectral.sweep', subcommand] + args

#----------------------------------------------------------------------------
# Settings of the evaluation, and where its inputs and outputs live.

def _identity(spec):
    if spec is None or dnnlib.util.is_url(spec) or spec == detectors.STANDIN_NAME:
        return spec
    return os.path.abspath(spec)

def eval_settings(seeds, repeats, num_steps, detector, ref, spectrum_json):
    return dict(seeds=seeds, repeats=repeats, num_steps=num_steps, detector=_identity(detector) or detectors.DETECTOR_NAME,
        ref=_identity(ref), spectrum=_identity(spectrum_json))

def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None

def _write_json(path, obj):
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)

def fine_tune_done(run_dir):
    return _read_json(os.path.join(run_dir, 'weight-movement.json')) is not None

def eval_done(run_dir, settings):
    result = _read_json(os.path.join(run_dir, 'sweep-eval.json'))
    return result is not None and result.get('settings') == settings

# The training state an interrupted fine-tune resumes from (the last written: names need not
# sort by progress), or None.
def latest_training_state(run_dir):
    states = glob.glob(os.path.join(run_dir, 'training-state-*.pt'))
    return max(states, key=os.path.getmtime) if states else None

#----------------------------------------------------------------------------
# `prepare`: reference statistics (unless given) and the radially averaged spectrum of --data.

def prepare_settings(data, detector, ref):
    return dict(data=os.path.abspath(data), detector=_identity(detector) or detectors.DETECTOR_NAME, ref=_identity(ref))

def prepare(outdir, data, detector, detector_name, ref=None, batch=64, device=None):
    if ref is None:
        dist.print0(f'Reference statistics of "{data}"...')
        stats = metrics.dataset_ref_stats(data, detector, detector_name, device=device, max_batch_size=batch)
    dist.print0(f'Radially averaged spectrum of "{data}"...')
    freqs, psd = metrics.dataset_spectrum(data)
    if dist.get_rank() == 0:
        os.makedirs(outdir, exist_ok=True)
        if ref is None:
            fid_stats.save_ref_stats(os.path.join(outdir, 'ref.npz'), stats['mu'], stats['sigma'], detector_name=detector_name)
        _write_json(os.path.join(outdir, 'dataset-spectrum.json'), dict(source=data, freqs=freqs.tolist(), psd=psd.tolist(), mean_removed=True))

# `eval`: the last snapshot of one fine-tune over EDM's seed sets; writes sweep-eval.json.
def evaluate_run(run_dir, settings, detector, detector_name, ref_stats, ref_psd, batch=64, device=None, trust_code=False):
    from edm_spectral.checkpoints import load_snapshot
    movement = _read_json(os.path.join(run_dir, 'weight-movement.json'))
    if movement is None:
        raise FileNotFoundError(f'{run_dir} holds no finished fine-tune (weight-movement.json)')
    snapshot = os.path.join(run_dir, movement['snapshot'])
    net = load_snapshot(snapshot, trust_code=trust_code, device=device)['ema']
    num_steps = settings['num_steps'] if settings['num_steps'] is not None else metrics.default_num_steps(net.img_resolution)
    fids, distances = [], []
    for seeds in fid_stats.repeated_seed_sets(parse_int_list(settings['seeds']), settings['repeats']):
        result = metrics.evaluate_network(net, seeds, detector=detector, ref=ref_stats, ref_psd=ref_psd, max_batch_size=batch,
            device=device, progress_desc=f'{os.path.basename(run_dir)} seeds {seeds[0]}-{seeds[-1]}', num_steps=num_steps)
        fids.append(result['fid'])
        distances.append(result['spectrum'])
    out = dict(settings=settings, snapshot=movement['snapshot'], detector=detector_name, num_steps=num_steps, fids=fids,
        spectrum_distances=distances, relative_l2=movement.get('relative_l2'))
    if dist.get_rank() == 0:
        _write_json(os.path.join(run_dir, 'sweep-eval.json'), out)
    return out

#----------------------------------------------------------------------------
# The table: per row FID mean +- sample std and min over the seed sets, the control's FID and
# the difference, the spectral distance (mean over the seed sets), the run folder.

def summarize(rows, outdir):
    evals = {id(row): _read_json(os.path.join(row.run_dir, 'sweep-eval.json')) for row in rows}
    control = {row.checkpoint_name: evals[id(row)] for row in rows if row.tag == CONTROL}
    out = []
    for row in rows:
        e = evals[id(row)]
        entry = dict(checkpoint=row.checkpoint, checkpoint_name=row.checkpoint_name, row=row.tag, regularizer=row.regularizer,
            weighting=row.weighting, run_dir=os.path.relpath(row.run_dir, outdir), done=e is not None,
            detector=(e.get('detector') if e is not None else None))
        if e is not None:
            fids = np.asarray(e['fids'], dtype=np.float64)
            entry.update(fids=e['fids'], fid_mean=float(fids.mean()), fid_std=(float(fids.std(ddof=1)) if len(fids) > 1 else None),
                fid_min=float(fids.min()), spectrum_distance=float(np.mean([d['overall'] for d in e['spectrum_distances']])),
                spectrum_distance_high=float(np.mean([d['high'] for d in e['spectrum_distances']])),
                relative_l2=e.get('relative_l2'), num_steps=e['num_steps'])
            c = control.get(row.checkpoint_name)
            if c is not None:
                entry['control_fid'] = float(np.mean(c['fids']))
                entry['fid_diff'] = entry['fid_mean'] - entry['control_fid']
        out.append(entry)
    return out

def _fmt(value, spec='.3f', signed=False):
    if value is None:
        return '-'
    if signed and abs(value) < 0.5 * 10 ** -int(spec.strip('.f')):
        value = 0.0 # no '-0.000'
    return format(value, ('+' if signed else '') + spec)

def format_results_md(summary, settings, standin):
    metric = 'FID' if not standin else 'stand-in "FID" (NOT an FID)'
    lines = ['# Sweep results', '']
    if standin:
        lines += ['**Stand-in detector: these numbers are NOT FIDs** and are not comparable to published values; '
            'they only show that the pipeline runs.', '']
    lines += [f'{metric} of each fine-tune\'s last snapshot over {settings["repeats"]} seed sets of {settings["seeds"]} '
        f'(each set shifted by its span), detector `{settings["detector"]}`, reference `{settings["ref"]}`; '
        f'spectral distance: mean |log10 PSD - log10 PSD_data| over the radial bins (all / high-frequency half), '
        f'mean over the seed sets. Delta: mean minus the unregularized control of the same checkpoint.', '']
    lines += ['| Checkpoint | Regularizer | Weighting | ' + metric + ' mean +- std | min | control | Delta | spectral distance (all / high) | run |',
        '|---|---|---|---|---|---|---|---|---|']
    for e in summary:
        if not e['done']:
            lines.append(f'| {e["checkpoint_name"]} | {e["regularizer"]} | {e["weighting"]} | (pending) | | | | | `{e["run_dir"]}` |')
            continue
        fid = _fmt(e['fid_mean']) + (' +- ' + _fmt(e['fid_std']) if e['fid_std'] is not None else '')
        delta = '-' if e['row'] == CONTROL else _fmt(e.get('fid_diff'), signed=True)
        spec = _fmt(e['spectrum_distance'], '.4f') + ' / ' + _fmt(e['spectrum_distance_high'], '.4f')
        lines.append(f'| {e["checkpoint_name"]} | {e["regularizer"]} | {e["weighting"]} | {fid} | {_fmt(e["fid_min"])} | '
            f'{_fmt(e.get("control_fid"))} | {delta} | {spec} | `{e["run_dir"]}` |')

    # The paper's summary line per checkpoint: control -> best regularized.
    best_lines = []
    for name in dict.fromkeys(e['checkpoint_name'] for e in summary):
        done = [e for e in summary if e['checkpoint_name'] == name and e['done'] and e['row'] != CONTROL]
        control = next((e for e in summary if e['checkpoint_name'] == name and e['row'] == CONTROL and e['done']), None)
        if done and control is not None:
            best = min(done, key=lambda e: e['fid_mean'])
            best_lines.append(f'| {name} | {_fmt(control["fid_mean"])} | {_fmt(best["fid_mean"])} | {_fmt(best["fid_diff"], signed=True)} | '
                f'{best["regularizer"]}, {best["weighting"]} |')
    if best_lines:
        lines += ['', f'Control -> best regularized ({metric} mean):', '',
            '| Checkpoint | control | best | Delta | regularizer |', '|---|---|---|---|---|'] + best_lines
    return '\n'.join(lines) + '\n'

# `shown`: the settings as the user gave them (paths as typed), for the table's header.
def write_results(rows, outdir, settings, shown=None):
    summary = summarize(rows, outdir)
    standin = any(e['detector'] == detectors.STANDIN_NAME for e in summary)
    _write_json(os.path.join(outdir, 'results.json'), dict(settings=settings, standin_detector=standin, rows=summary))
    with open(os.path.join(outdir, 'results.md'), 'w') as f:
        f.write(format_results_md(summary, dict(settings, **(shown or {})), standin))
    return summary

#----------------------------------------------------------------------------
# Loading the evaluation inputs, with library errors turned into one-line CLI errors.

def _load_detector(detector, device, trust_code):
    from edm_spectral.checkpoints import UnsafePickleError
    try:
        return detectors.load_detector(detector, device=device, verbose=(dist.get_rank() == 0), trust_code=trust_code)
    except UnsafePickleError as e:
        raise click.ClickException(f'--detector: {e}. Pass --trust-code if you trust this file.')
    except (RuntimeError, FileNotFoundError, ValueError) as e:
        raise click.ClickException(f'--detector: {e}')

def _load_eval_inputs(ref, spectrum_json, det, det_name):
    try:
        ref_stats = fid_stats.load_ref_stats(ref)
        metrics.check_ref_matches_detector(ref_stats, det, det_name)
    except (OSError, ValueError) as e:
        raise click.ClickException(f'--ref: {e}')
    psd = _read_json(spectrum_json)
    if psd is None or 'psd' not in psd:
        raise click.ClickException(f'{spectrum_json} is missing or not a spectrum file (run the prepare step)')
    return ref_stats, np.asarray(psd['psd'], dtype=np.float64)

def _init(device):
    try:
        return dist.init(device)
    except ValueError as e:
        raise click.ClickException(str(e))

#----------------------------------------------------------------------------

@click.group()
def cmdline():
    """The paper's Table 1 as one command: fine-tune each checkpoint with each regularizer
    (Fourier amplitude, amplitude + phase, Haar and bior1.3 wavelets; weighted and unweighted)
    and without (the control), evaluate every fine-tune (FID over EDM's 3 seed sets, spectral
    distance to the dataset), and write results.md and results.json. `run` does it all and
    resumes; `prepare` and `eval` are its steps, as the printed commands call them.

    \b
    Examples:
    # FFHQ 64x64, VP and VE checkpoints, each step on 8 GPUs, one after another
    python -m edm_spectral.sweep run --nproc=8 --data=datasets/ffhq-64x64.zip --outdir=sweep-ffhq \\
        --network=https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-ffhq-64x64-uncond-vp.pkl \\
        --network=https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-ffhq-64x64-uncond-ve.pkl \\
        --ref=https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/ffhq-64x64.npz

    \b
    # The same as jobs for a cluster; afterwards the same command writes the table
    python -m edm_spectral.sweep run ... --print-jobs > jobs.sh
    """

_detector_help = 'FID detector: TorchScript file, pickle path or URL (needs --trust-code unless standard), or "standin" (tests only; NOT an FID)  [default: Inception]'

def _eval_options(f):
    options = [
        click.option('--seeds',      help='Seeds of the first seed set', metavar='LIST', type=str, default='0-49999', show_default=True),
        click.option('--repeats',    help='Seed sets, each --seeds shifted by its span (EDM: 3)', metavar='INT', type=click.IntRange(min=1), default=3, show_default=True),
        click.option('--steps',      help='Sampler steps  [default: 18 up to 32x32, 40 above, as in the paper]', metavar='INT', type=click.IntRange(min=2)),
        click.option('--batch',      help='Generation batch per process', metavar='INT', type=click.IntRange(min=1), default=64, show_default=True),
        click.option('--detector',   help=_detector_help, metavar='PATH|URL', type=str),
        click.option('--trust-code', help='Let pickles (checkpoints, detector) run their embedded code (unsafe)', is_flag=True),
        click.option('--device',     help='Device  [default: cuda if available, else cpu]', metavar='STR', type=str),
    ]
    for option in reversed(options):
        f = option(f)
    return f

def _check_seeds(seeds):
    try:
        values = parse_int_list(seeds)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint='--seeds')
    if len(values) < 2:
        raise click.BadParameter('FID needs at least 2 seeds', param_hint='--seeds')

#----------------------------------------------------------------------------

@cmdline.command()
@click.option('--network', 'networks', help='Checkpoint to fine-tune (repeatable)', metavar='PKL|URL', type=str, multiple=True, required=True)
@click.option('--data',          help='Dataset zip or folder (dataset_tool.py format)', metavar='ZIP|DIR', type=str, required=True)
@click.option('--outdir',        help='Sweep folder: run folders, reference files, results', metavar='DIR', type=str, required=True)
@click.option('--ref',           help='Reference statistics, e.g. EDM\'s published .npz  [default: computed from --data]', metavar='NPZ|URL', type=str)
@click.option('--nproc',         help='Processes per step (torchrun when > 1)', metavar='INT', type=click.IntRange(min=1), default=1, show_default=True)
@click.option('--only',          help='Only these rows, e.g. none,fourier-amp-weighted  [default: all 9 per checkpoint]', metavar='LIST', type=str)
@_eval_options
@click.option('-n', '--dry-run', help='Print every command, run nothing', is_flag=True)
@click.option('--print-jobs',    help='Print the unfinished steps as shell jobs for a cluster, run nothing', is_flag=True)
@click.argument('fine_tune_args', nargs=-1, type=click.UNPROCESSED, metavar='[-- FINE_TUNE_OPTIONS...]')
def run(networks, data, outdir, ref, nproc, only, seeds, repeats, steps, batch, detector, trust_code, device, dry_run, print_jobs, fine_tune_args):
    """Run the sweep (or what is left of it) and write results.md and results.json.

    Options after `--` go to every fine_tune.py run, e.g. `-- --duration=0.5 --lr-rampup=0`.
    """
    _check_seeds(seeds)
    fine_tune_args = list(fine_tune_args)
    try:
        check_fine_tune_args(fine_tune_args)
        rows = plan_rows(list(networks), outdir, only=(None if only is None else [t.strip() for t in only.split(',') if t.strip()]))
        script = fine_tune_script()
    except (ValueError, FileNotFoundError) as e:
        raise click.ClickException(str(e))
    ref_path = ref if ref is not None else os.path.join(outdir, 'ref.npz')
    spectrum_json = os.path.join(outdir, 'dataset-spectrum.json')
    settings = eval_settings(seeds, repeats, steps, detector, ref_path, spectrum_json)
    common = [f'--batch={batch}'] + ([f'--detector={detector}'] if detector else []) + (['--trust-code'] if trust_code else []) + \
        ([f'--device={device}'] if device else [])
    eval_args = [f'--seeds={seeds}', f'--repeats={repeats}'] + ([f'--steps={steps}'] if steps else []) + common

    # The steps still to do: prepare, then per row its fine-tune and its evaluation.
    preparation = prepare_settings(data, detector, ref)
    prepared = _read_json(os.path.join(outdir, 'prepare.json'))
    if prepared is not None and prepared.get('data') != preparation['data']:
        raise click.ClickException(f'{outdir} holds a sweep of {prepared.get("data")}; use another --outdir for {data}')
    prepare_cmd = None
    if prepared != preparation:
        prepare_cmd = module_command(nproc, 'prepare', [f'--data={data}', f'--outdir={outdir}'] + ([f'--ref={ref}'] if ref else []) + common)
    todo = []
    for row in rows:
        if prepare_cmd is None and eval_done(row.run_dir, settings):
            continue
        ft_cmd = None
        if not fine_tune_done(row.run_dir):
            state = latest_training_state(row.run_dir)
            ft_cmd = script_command(nproc, script, [f'--network={row.checkpoint}', f'--data={data}', f'--outdir={row.run_dir}', '--nosubdir']
                + row.args + ([f'--resume={state}'] if state else []) + ([f'--device={device}'] if device else [])
                + (['--trust-code'] if trust_code else []) + fine_tune_args)
        eval_cmd = module_command(nproc, 'eval', [f'--run-dir={row.run_dir}', f'--ref={ref_path}', f'--spectrum={spectrum_json}'] + eval_args)
        todo.append((row, ft_cmd, eval_cmd))

    if print_jobs:
        if prepare_cmd is not None:
            print('# First: reference statistics and dataset spectrum')
            print(shlex.join(prepare_cmd))
        print(f'# Then {len(todo)} independent jobs: fine-tune and evaluate one row each')
        for row, ft_cmd, eval_cmd in todo:
            print(' && '.join(shlex.join(c) for c in [ft_cmd, eval_cmd] if c is not None))
        print('# Finally: this command again, without --print-jobs, writes results.md')
        return

    label = lambda row: f'{row.checkpoint_name} / {row.tag}'
    done = len(rows) - len(todo)
    print(f'Sweep: {len(rows)} rows in {outdir} ({done} finished, {len(todo)} to do)')
    if dry_run:
        if prepare_cmd is not None:
            print(f'prepare: {shlex.join(prepare_cmd)}')
        for i, (row, ft_cmd, eval_cmd) in enumerate(todo):
            if ft_cmd is not None:
                print(f'[{i + 1}/{len(todo)}] {label(row)}: {shlex.join(ft_cmd)}')
            print(f'    eval {label(row)}: {shlex.join(eval_cmd)}')
        print(f'Dry run: {len(todo)} rows to do, nothing run.')
        return

    # Run: subprocesses for the fine-tunes; prepare and eval in this process when nproc == 1.
    os.makedirs(outdir, exist_ok=True)
    device_obj = _init(device) if nproc == 1 else None
    det = det_name = None
    if nproc == 1 and (prepare_cmd is not None or todo):
        det, det_name = _load_detector(detector, device_obj, trust_code)
    if prepare_cmd is not None:
        print(f'prepare: {shlex.join(prepare_cmd)}', flush=True)
        if nproc == 1:
            _run_library(prepare, outdir=outdir, data=data, detector=det, detector_name=det_name, ref=ref, batch=batch, device=device_obj)
        else:
            _run_command(prepare_cmd, 'prepare')
        _write_json(os.path.join(outdir, 'prepare.json'), preparation)
    inputs = None
    for i, (row, ft_cmd, eval_cmd) in enumerate(todo):
        if ft_cmd is not None:
            print(f'[{i + 1}/{len(todo)}] {label(row)}: {shlex.join(ft_cmd)}', flush=True)
            os.makedirs(row.run_dir, exist_ok=True)
            _run_command(ft_cmd, f'{label(row)}: fine_tune.py', log=os.path.join(row.run_dir, 'log.txt'))
        print(f'    eval {label(row)}: {shlex.join(eval_cmd)}', flush=True)
        if nproc == 1:
            inputs = inputs or _load_eval_inputs(ref_path, spectrum_json, det, det_name)
            _run_library(evaluate_run, run_dir=row.run_dir, settings=settings, detector=det, detector_name=det_name, ref_stats=inputs[0], ref_psd=inputs[1],
                batch=batch, device=device_obj, trust_code=trust_code)
        else:
            _run_command(eval_cmd, f'{label(row)}: eval')
    summary = write_results(rows, outdir, settings, shown=dict(detector=detector or detectors.DETECTOR_NAME,
        ref=ref if ref is not None else f'{os.path.basename(ref_path)} (from --data)'))
    print(f'Wrote {os.path.join(outdir, "results.md")} and results.json ({sum(e["done"] for e in summary)} of {len(summary)} rows)')

def _run_command(cmd, what, log=None):
    result = subprocess.run(cmd)
    if result.returncode != 0:
        where = f'; see {log}' if log else ''
        raise click.ClickException(f'{what} failed (exit code {result.returncode}){where}. Finished rows are kept: fix it and rerun.')

def _run_library(fn, **kwargs):
    try:
        return fn(**kwargs)
    except (OSError, ValueError, RuntimeError) as e:
        raise click.ClickException(str(e))

#----------------------------------------------------------------------------

@cmdline.command('prepare')
@click.option('--data',       help='Dataset zip or folder', metavar='ZIP|DIR', type=str, required=True)
@click.option('--outdir',     help='Sweep folder (writes ref.npz and dataset-spectrum.json)', metavar='DIR', type=str, required=True)
@click.option('--ref',        help='Given reference statistics: compute only the spectrum', metavar='NPZ|URL', type=str)
@click.option('--batch',      help='Detector batch per process', metavar='INT', type=click.IntRange(min=1), default=64, show_default=True)
@click.option('--detector',   help=_detector_help, metavar='PATH|URL', type=str)
@click.option('--trust-code', help='Let a detector pickle run its embedded code (unsafe)', is_flag=True)
@click.option('--device',     help='Device  [default: cuda if available, else cpu]', metavar='STR', type=str)
def prepare_cmd(data, outdir, ref, batch, detector, trust_code, device):
    """Reference statistics (unless --ref) and the radially averaged spectrum of the dataset."""
    device = _init(device)
    det, det_name = (None, None) if ref is not None else _load_detector(detector, device, trust_code)
    _run_library(prepare, outdir=outdir, data=data, detector=det, detector_name=det_name, ref=ref, batch=batch, device=device)
    dist.barrier()
    dist.shutdown()

@cmdline.command('eval')
@click.option('--run-dir', 'run_dir', help='Fine-tune run folder (with weight-movement.json)', metavar='DIR', type=str, required=True)
@click.option('--ref',            help='Reference statistics', metavar='NPZ|URL', type=str, required=True)
@click.option('--spectrum',       help='Dataset spectrum (JSON from prepare)', metavar='JSON', type=str, required=True)
@_eval_options
def eval_cmd(run_dir, ref, spectrum, seeds, repeats, steps, batch, detector, trust_code, device):
    """Evaluate one fine-tune's last snapshot: FID per seed set and spectral distance (sweep-eval.json)."""
    _check_seeds(seeds)
    device = _init(device)
    det, det_name = _load_detector(detector, device, trust_code)
    ref_stats, ref_psd = _load_eval_inputs(ref, spectrum, det, det_name)
    settings = eval_settings(seeds, repeats, steps, detector, ref, spectrum)
    _run_library(evaluate_run, run_dir=run_dir, settings=settings, detector=det, detector_name=det_name, ref_stats=ref_stats, ref_psd=ref_psd,
        batch=batch, device=device, trust_code=trust_code)
    dist.barrier()
    dist.shutdown()

#----------------------------------------------------------------------------

if __name__ == '__main__':
    cmdline()

#----------------------------------------------------------------------------
