"""Metrics of a network's samples, computed in memory from one pass over the generated images:
FID against reference statistics (edm_spectral.fid_stats) and the distance of their radially
averaged power spectrum to the dataset's (edm_spectral.spectrum). The sweep (edm_spectral.sweep)
and the snapshot metrics of train.py / fine_tune.py --metrics both evaluate with
evaluate_network().

Snapshot metrics follow the StyleGAN/EDM2 convention: after each snapshot, one JSON line per
metric is appended to metrics.jsonl in the run folder:
{"results": {"fid10k": 3.2}, "metric": "fid10k", "total_time": 51.3, "total_time_str": "51s",
 "num_gpus": 8, "snapshot_pkl": "network-snapshot-000200.pkl", "cur_nimg": 200704,
 "detector": "inception-2015-12-05", "timestamp": 1712345678.9}"""

import json
import os
import time

import click
import numpy as np
import torch

import dnnlib
from edm_spectral import detectors, fid_stats, spectrum
from torch_utils import distributed as dist
from training.sampling import parse_int_list

#----------------------------------------------------------------------------
# The paper's sampling: EDM's Heun sampler with 18 steps at 32x32 (CIFAR-10) and 40 at 64x64.

def default_num_steps(resolution):
    return 18 if resolution <= 32 else 40

#----------------------------------------------------------------------------
# Reference statistics must come from the detector in use: a stand-in reference with Inception
# features (or the reverse) gives a meaningless number, as does a mismatch in feature size.

def check_ref_matches_detector(ref, detector, detector_name):
    if (ref['detector'] == detectors.STANDIN_NAME) != (detector_name == detectors.STANDIN_NAME):
        raise ValueError(f'the reference statistics were computed with detector "{ref["detector"]}" but this run uses '
            f'"{detector_name}"; use the same detector for both')
    if ref['mu'].shape[0] != detectors.detector_feature_dim(detector):
        raise ValueError(f'the reference statistics are {ref["mu"].shape[0]}-d, the detector gives '
            f'{detectors.detector_feature_dim(detector)}-d features')

# Reference statistics of a dataset (all its images), in fid.py ref's format.
def dataset_ref_stats(data, detector, detector_name, device=None, max_batch_size=64):
    mu, sigma = fid_stats.calculate_inception_stats(data, detector=detector, max_batch_size=max_batch_size, num_workers=0, device=device)
    return dict(mu=mu, sigma=sigma, detector=detector_name)

# Radially averaged power spectrum of every image of a dataset: (freqs, psd).
def dataset_spectrum(data):
    return spectrum.radial_power_spectrum(spectrum.iter_dataset_images(data))

#----------------------------------------------------------------------------
# One rank's radial spectrum accumulator merged over all ranks: the image-weighted mean of
# their spectra (a rank without images contributes nothing).

def _merged_spectrum(acc):
    part = acc.result() + (acc.count,) if acc.count > 0 else None
    parts = [part]
    if dist.get_world_size() > 1:
        parts = [None] * dist.get_world_size()
        torch.distributed.all_gather_object(parts, part)
    parts = [p for p in parts if p is not None]
    if len(parts) == 1:
        return parts[0][:2]
    total = sum(count for _, _, count in parts)
    return parts[0][0], sum(psd * count for _, psd, count in parts) / total

#----------------------------------------------------------------------------
# Generate one image per seed (generate.py's images, in memory) and measure them in the same
# pass: FID against `ref` (dict with mu, sigma) when a detector is given, the spectral distance
# to `ref_psd` (the dataset's radial spectrum) when that is given. The result, the same on
# every rank: dict(fid=float, spectrum=dict(overall=..., high=...)), with what was asked for.

def evaluate_network(net, seeds, detector=None, ref=None, ref_psd=None, max_batch_size=64, device=None,
        progress=True, progress_desc=None, **sampler_kwargs):
    seeds = list(seeds)
    if detector is None and ref_psd is None:
        raise ValueError('Nothing to evaluate: give a detector (FID) and/or a reference spectrum')
    if detector is not None and ref is None:
        raise ValueError('FID needs reference statistics')
    if detector is not None and len(seeds) < 2:
        raise ValueError(f'Need at least 2 seeds to estimate a covariance, got {len(seeds)}')
    device = dist.resolve_device(device)
    stats = fid_stats.FeatureStats(detectors.detector_feature_dim(detector), device) if detector is not None else None
    acc = spectrum.RadialSpectrumAccumulator() if ref_psd is not None else None
    for batch_index, images in fid_stats.iter_network_images(net, seeds, max_batch_size=max_batch_size, device=device,
            progress=progress, progress_desc=progress_desc, **sampler_kwargs):
        if stats is not None:
            stats.add(batch_index, fid_stats.detector_features(detector, images, device))
        if acc is not None:
            acc.update(images.cpu())
    result = {}
    if stats is not None:
        mu, sigma = stats.finalize()
        result['fid'] = fid_stats.calculate_fid_from_inception_stats(mu, sigma, ref['mu'], ref['sigma'])
    if acc is not None:
        _freqs, psd = _merged_spectrum(acc)
        result['spectrum'] = spectrum.spectral_distance(psd, ref_psd)
    return result

#----------------------------------------------------------------------------
# Snapshot metrics: name -> (what it measures, default seeds). Metrics with the same seeds are
# measured in one pass over the same images (fid10k and spectrum: seeds 0-9999).

SNAPSHOT_METRICS = {
    'fid50k':   ('fid',      '0-49999'),
    'fid10k':   ('fid',      '0-9999'),
    'spectrum': ('spectrum', '0-9999'),
}

def parse_metrics(value):
    if isinstance(value, (list, tuple)):
        names = list(value)
    else:
        names = [v.strip() for v in str(value or 'none').split(',') if v.strip()]
    if names == ['none']:
        return []
    unknown = [n for n in names if n not in SNAPSHOT_METRICS]
    if unknown or not names:
        raise ValueError(f'unknown metric(s) {", ".join(unknown) or repr(value)}; choose from {", ".join(SNAPSHOT_METRICS)}, or none')
    return list(dict.fromkeys(names))

#----------------------------------------------------------------------------
# The snapshot callback of the training loop, built by name from plain options (so that
# training_options.json records it): called on every rank after each snapshot is written, with
# the exported network; rank 0 appends the results to metrics.jsonl next to the snapshot.
# Detector, reference statistics and dataset spectrum are loaded at the first call and kept.

class SnapshotMetrics:
    def __init__(self, metrics, data, ref=None, detector=None, trust_code=False, seeds=None, num_steps=None, max_batch_size=64):
        self.metrics = parse_metrics(metrics)
        self.data, self.ref_path, self.detector_spec, self.trust_code = data, ref, detector, trust_code
        self.seeds, self.num_steps, self.max_batch_size = seeds, num_steps, max_batch_size
        for name in self.metrics:
            parse_int_list(self._seeds(name)) # fail at start-up, not after the first snapshot
        self._detector = self._ref = self._ref_psd = None

    def _seeds(self, name):
        return self.seeds if self.seeds is not None else SNAPSHOT_METRICS[name][1]

    def _prepare(self, device):
        wants = {SNAPSHOT_METRICS[name][0] for name in self.metrics}
        if 'fid' in wants and self._detector is None:
            self._detector, self._detector_name = detectors.load_detector(self.detector_spec, device=device,
                verbose=(dist.get_rank() == 0), trust_code=self.trust_code)
            if self.ref_path is not None:
                self._ref = fid_stats.load_ref_stats(self.ref_path)
            else:
                dist.print0(f'Metrics: reference statistics of "{self.data}"...')
                self._ref = dataset_ref_stats(self.data, self._detector, self._detector_name, device=device, max_batch_size=self.max_batch_size)
            check_ref_matches_detector(self._ref, self._detector, self._detector_name)
        if 'spectrum' in wants and self._ref_psd is None:
            self._ref_psd = dataset_spectrum(self.data)[1]

    # Training resumes after the call exactly as without it: the global random streams (drawn
    # from by data loaders, for one) are restored.
    def __call__(self, snapshot_pkl, net, cur_nimg, device=None):
        if not self.metrics:
            return []
        device = dist.resolve_device(device)
        numpy_state = np.random.get_state()
        try:
            with torch.random.fork_rng(devices=([device] if device.type == 'cuda' else []), device_type=device.type):
                return self._evaluate(snapshot_pkl, net, cur_nimg, device)
        finally:
            np.random.set_state(numpy_state)

    def _evaluate(self, snapshot_pkl, net, cur_nimg, device):
        self._prepare(device)
        net = net.to(device)
        num_steps = self.num_steps if self.num_steps is not None else default_num_steps(net.img_resolution)
        lines = []
        for seeds in dict.fromkeys(self._seeds(name) for name in self.metrics):
            names = [name for name in self.metrics if self._seeds(name) == seeds]
            kinds = {SNAPSHOT_METRICS[name][0] for name in names}
            start = time.time()
            result = evaluate_network(net, parse_int_list(seeds), detector=(self._detector if 'fid' in kinds else None), ref=self._ref,
                ref_psd=(self._ref_psd if 'spectrum' in kinds else None), max_batch_size=self.max_batch_size, device=device,
                progress_desc=f'metrics {",".join(names)}', num_steps=num_steps)
            total_time = time.time() - start
            for name in names:
                if SNAPSHOT_METRICS[name][0] == 'fid':
                    results, detector_name = {name: result['fid']}, self._detector_name
                else:
                    results, detector_name = dict(spectrum_distance=result['spectrum']['overall'], spectrum_distance_high=result['spectrum']['high']), None
                lines.append(dict(results=results, metric=name, total_time=total_time, total_time_str=dnnlib.util.format_time(total_time),
                    num_gpus=dist.get_world_size(), snapshot_pkl=(os.path.basename(snapshot_pkl) if snapshot_pkl else None),
                    cur_nimg=int(cur_nimg), seeds=seeds, num_steps=num_steps, detector=detector_name, timestamp=time.time()))
        if dist.get_rank() == 0 and snapshot_pkl is not None:
            with open(os.path.join(os.path.dirname(snapshot_pkl), 'metrics.jsonl'), 'at') as f:
                for line in lines:
                    f.write(json.dumps(line) + '\n')
            for line in lines:
                label = ' (stand-in detector, NOT an FID)' if line['detector'] == detectors.STANDIN_NAME else ''
                dist.print0(f'Metric {line["metric"]}{label}: ' + ', '.join(f'{k} {v:g}' for k, v in line['results'].items()) + f'  ({line["total_time_str"]})')
        return lines

#----------------------------------------------------------------------------
# The --metrics options of train.py and fine_tune.py, and the loop's callback settings.

def metrics_options(f):
    options = [
        click.option('--metrics',          help='Evaluate each snapshot: comma-separated fid50k, fid10k, spectrum, or none (results in metrics.jsonl)', metavar='LIST|none', type=str, default='none', show_default=True),
        click.option('--metrics-ref',      help='Reference statistics for the FID metrics  [default: computed from --data]', metavar='NPZ|URL', type=str),
        click.option('--metrics-detector', help='FID detector: TorchScript file, pickle (with --trust-code) or "standin"  [default: Inception]', metavar='PATH|URL', type=str),
        click.option('--metrics-seeds',    help='Seeds of every metric  [default: 0-49999 for fid50k, 0-9999 for the others]', metavar='LIST', type=str),
    ]
    for option in reversed(options):
        f = option(f)
    return f

# Read the local detector and reference files now, so that a missing, refused or mismatched
# file is an error before training, not after the first snapshot (where the other ranks would
# wait for one that failed). URLs are fetched at the first snapshot.
def check_metric_files(detector, ref, trust_code):
    from edm_spectral.checkpoints import UnsafePickleError
    det = det_name = ref_stats = None
    if detector is not None and not dnnlib.util.is_url(detector):
        try:
            det, det_name = detectors.load_detector(detector, device=torch.device('cpu'), verbose=False, trust_code=trust_code)
        except UnsafePickleError as e:
            raise click.BadParameter(f'{e}. Pass --trust-code if you trust this file, or use a TorchScript detector.', param_hint='--metrics-detector') from e
        except (OSError, RuntimeError, ValueError) as e:
            raise click.BadParameter(str(e), param_hint='--metrics-detector') from e
    if ref is not None and not dnnlib.util.is_url(ref):
        try:
            ref_stats = fid_stats.load_ref_stats(ref)
        except (OSError, ValueError) as e:
            raise click.BadParameter(str(e), param_hint='--metrics-ref') from e
    if det is not None and ref_stats is not None:
        try:
            check_ref_matches_detector(ref_stats, det, det_name)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint='--metrics-ref') from e

# The training loop's snapshot_callback_kwargs for those options, or None for --metrics=none.
def snapshot_callback_kwargs(opts):
    try:
        metrics = parse_metrics(opts.get('metrics', 'none'))
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint='--metrics') from e
    if opts.get('metrics_seeds') is not None:
        try:
            seeds = parse_int_list(opts['metrics_seeds'])
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint='--metrics-seeds') from e
        if len(seeds) < 2:
            raise click.BadParameter('needs at least 2 seeds (FID estimates a covariance)', param_hint='--metrics-seeds')
    if not metrics:
        return None
    if any(SNAPSHOT_METRICS[name][0] == 'fid' for name in metrics):
        check_metric_files(opts.get('metrics_detector'), opts.get('metrics_ref'), bool(opts.get('trust_code', False)))
    return dnnlib.EasyDict(class_name='edm_spectral.metrics.SnapshotMetrics', metrics=metrics, data=opts['data'],
        ref=opts.get('metrics_ref'), detector=opts.get('metrics_detector'), trust_code=bool(opts.get('trust_code', False)),
        seeds=opts.get('metrics_seeds'))

#----------------------------------------------------------------------------
