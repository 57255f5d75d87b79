"""Frechet Inception Distance (FID) and Kernel Inception Distance (KID) of image sets, or of a
network's samples generated in memory, computed exactly as in EDM/StyleGAN, with reference
statistics in EDM's .npz format. The computation lives in edm_spectral/fid_stats.py."""

import os

import click
import numpy as np
import torch

import dnnlib
from edm_spectral import detectors, fid_stats, metrics
from edm_spectral.cli import load_snapshot_option, sampler_options
from edm_spectral.fid_stats import calculate_fid_from_inception_stats, calculate_inception_stats, calculate_kid, load_ref_stats  # noqa: F401 (EDM's names, importable from fid)
from torch_utils import distributed as dist
from training.sampling import check_sigma_range, parse_int_list

#----------------------------------------------------------------------------

def _setup(device, detector, workers, trust_code):
    from edm_spectral.checkpoints import UnsafePickleError
    if workers > 0:
        try:
            torch.multiprocessing.set_start_method('spawn')
        except RuntimeError:
            pass   # already set in this process
    try:
        device = dist.init(device)
    except ValueError as e:
        raise click.ClickException(str(e))
    try:
        det, det_name = detectors.load_detector(detector, device=device, verbose=(dist.get_rank() == 0), trust_code=trust_code)
    except UnsafePickleError as e:
        raise click.ClickException(f'--detector: {e}. Pass --trust-code if you trust this file, '
            f'or use a TorchScript detector (torch.jit.script(module).save(path)).')
    except (RuntimeError, FileNotFoundError, ValueError) as e:
        raise click.ClickException(str(e))
    return device, det, det_name

def _label(det_name, metric):
    return f'{metric} (stand-in detector, NOT comparable to published {metric})' if det_name == detectors.STANDIN_NAME else metric

# Reference statistics on rank 0, checked against the detector (None on the other ranks). A
# problem is an error on rank 0; the other ranks learn of it and exit too, instead of waiting.
def _load_ref(ref_path, det, det_name, kid):
    ref, error = None, None
    if dist.get_rank() == 0:
        try:
            ref = _checked_ref(ref_path, det, det_name, kid)
        except click.ClickException as e:
            error = e
    if dist.get_world_size() > 1:
        if error is not None:
            error.show()   # before the others exit: torchrun then stops this rank too
        failed = [error is not None]
        torch.distributed.broadcast_object_list(failed, src=0)
        if failed[0]:
            raise click.exceptions.Exit(1)
    if error is not None:
        raise error
    return ref

def _checked_ref(ref_path, det, det_name, kid):
    try:
        ref = load_ref_stats(ref_path)
    except (OSError, ValueError) as e:
        raise click.ClickException(str(e))
    try:
        metrics.check_ref_matches_detector(ref, det, det_name)
    except ValueError as e:
        raise click.ClickException(f'{ref_path}: {e}')
    if kid and 'features' not in ref:
        raise click.ClickException(f'--kid needs reference features, but {ref_path} has only mu/sigma; make it with "fid.py ref --features"')
    return ref

# Library errors about the inputs become one-line CLI errors.
def _run(fn, **kwargs):
    try:
        return fn(**kwargs)
    except fid_stats.TooFewImagesError as e:
        raise click.ClickException(f'Found {e.num_found} images in "{e.path}", fewer than --num={e.num_expected}. '
            f'FID depends on the number of images; pass --allow-fewer to use {e.num_found}, or --num={e.num_found}.')
    except (ValueError, OSError) as e:
        raise click.ClickException(str(e))

# Rank 0 prints FID (EDM's bare f'{fid:g}' for Inception) and KID of one set of statistics.
def _report(stats, ref, det_name, kid, kid_subsets, kid_subset_size, seed, suffix=''):
    fid = calculate_fid_from_inception_stats(stats[0], stats[1], ref['mu'], ref['sigma'])
    if det_name == detectors.STANDIN_NAME or suffix:
        print(f'{_label(det_name, "FID")}{suffix}: {fid:g}')
    else:
        print(f'{fid:g}')
    if kid:
        value = calculate_kid(stats[2], ref['features'], num_subsets=kid_subsets, max_subset_size=kid_subset_size, seed=seed)
        print(f'{_label(det_name, "KID")}{suffix}: {value:g}')
    return fid

def _describe_seeds(seeds):
    lo, hi = min(seeds), max(seeds)
    return f'{lo}-{hi}' if len(seeds) == hi - lo + 1 else f'{len(seeds)} seeds in {lo}-{hi}'

#----------------------------------------------------------------------------

@click.group()
def main():
    """Calculate Frechet Inception Distance (FID) and Kernel Inception Distance (KID).

    The feature detector is the standard Inception pickle, downloaded once from NVIDIA's server
    and cached. Loading a pickle executes code stored in it, so any other detector pickle is
    refused unless --trust-code is given; a TorchScript detector file loads without running
    code from it. --detector=standin selects a small random stand-in for offline smoke tests,
    whose values are not comparable to published FIDs.

    \b
    Examples:
    # FID of a network's 50000 samples, generated in memory, over EDM's 3 seed sets
    torchrun --standalone --nproc_per_node=8 fid.py calc --seeds=0-49999 --repeats=3 \\
        --network=https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-cifar10-32x32-cond-vp.pkl \\
        --ref=https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/cifar10-32x32.npz

    \b
    # FID of images written by generate.py
    torchrun --standalone --nproc_per_node=1 fid.py calc --images=out \\
        --ref=https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/cifar10-32x32.npz

    \b
    # Compute dataset reference statistics (with features, for KID)
    python fid.py ref --data=datasets/my-dataset.zip --dest=fid-refs/my-dataset.npz --features
    """

#----------------------------------------------------------------------------

_detector_help = 'Detector: TorchScript file, pickle path or URL (needs --trust-code unless it is the standard one), or "standin"  [default: the Inception URL]'

# Data-loader processes: EDM's 3, but no more than the cores left next to the main process.
def _default_workers():
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)
    return max(0, min(3, cores - 1))

def _common_options(trust_help):
    options = [
        click.option('--detector',   help=_detector_help, metavar='PATH|URL', type=str),
        click.option('--trust-code', help=trust_help, is_flag=True),
        click.option('--workers',    help='Data loader processes  [default: min(3, cores - 1)]', metavar='INT', type=click.IntRange(min=0), default=_default_workers()),
        click.option('--device',     help='Device  [default: cuda if available, else cpu]', metavar='STR', type=str),
    ]
    def decorate(f):
        for option in reversed(options):
            f = option(f)
        return f
    return decorate

#----------------------------------------------------------------------------

@main.command()
@click.option('--images', 'image_path', help='Path to the images (or --network)', metavar='PATH|ZIP', type=str)
@click.option('--network', 'network_pkl', help='Generate the images in memory from this network snapshot (or --images)', metavar='PKL|URL', type=str)
@click.option('--ref', 'ref_path',      help='Dataset reference statistics', metavar='NPZ|URL', type=str, required=True)
@click.option('--num', 'num_expected',  help='--images: number of images to use', metavar='INT', type=click.IntRange(min=2), default=50000, show_default=True)
@click.option('--allow-fewer',          help='--images: use all images when there are fewer than --num', is_flag=True)
@click.option('--seed',                 help='Random seed for selecting the images and the KID subsets', metavar='INT', type=int, default=0, show_default=True)
@click.option('--seeds',                help='--network: one image per seed', metavar='LIST', type=parse_int_list, default='0-49999', show_default=True)
@click.option('--repeats',              help="--network: seed sets, each --seeds shifted by its span (EDM's protocol: 3)", metavar='INT', type=click.IntRange(min=1), default=1, show_default=True)
@click.option('--class', 'class_idx',   help='--network: class of every image (conditional nets)  [default: random]', metavar='INT', type=click.IntRange(min=0))
@click.option('--batch',                help='Maximum batch size per process', metavar='INT', type=click.IntRange(min=1), default=64, show_default=True)
@click.option('--kid',                  help='Also compute KID (needs a reference made with --features)', is_flag=True)
@click.option('--kid-subsets',          help='KID: number of random subsets', metavar='INT', type=click.IntRange(min=1), default=100, show_default=True)
@click.option('--kid-subset-size',      help='KID: maximum subset size', metavar='INT', type=click.IntRange(min=2), default=1000, show_default=True)
@sampler_options(source='--network') # generate.py's, with the same names, types and defaults
@_common_options('Load --detector and --network pickles with plain pickle.load, executing the code stored in them (only for files you trust)')
def calc(image_path, network_pkl, ref_path, num_expected, allow_fewer, seed, seeds, repeats, class_idx, batch, kid,
        kid_subsets, kid_subset_size, detector, trust_code, workers, device, **sampler_kwargs):
    """Calculate FID (and optionally KID) for a set of images, or for a network's samples.

    With --network the images are generated batch by batch and fed to the detector directly,
    quantised exactly as generate.py saves them, with generate.py's seed rule and sampler
    options. --repeats=3 gives EDM's protocol (seeds 0-49999, 50000-99999, 100000-149999):
    each FID, their mean +- sample std, and the minimum.
    """
    if (image_path is None) == (network_pkl is None):
        raise click.UsageError('Give exactly one of --images and --network')
    if network_pkl is not None and len(seeds) < 2:
        raise click.BadParameter('FID needs at least 2 seeds', param_hint='--seeds')
    if network_pkl is not None:
        try:
            check_sigma_range(**sampler_kwargs)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="'--sigma_min' / '--sigma_max'") from e
    device, det, det_name = _setup(device, detector, workers, trust_code)
    ref = _load_ref(ref_path, det, det_name, kid)

    if image_path is not None:
        stats = _run(calculate_inception_stats, image_path=image_path, detector=det, num_expected=num_expected, seed=seed,
            max_batch_size=batch, num_workers=workers, device=device, allow_fewer=allow_fewer, return_features=kid)
        if dist.get_rank() == 0:
            _report(stats, ref, det_name, kid, kid_subsets, kid_subset_size, seed)
    else:
        dist.print0(f'Loading network from "{network_pkl}"...')
        net = load_snapshot_option(network_pkl, '--network', trust_code=trust_code, device=device)['ema']
        if class_idx is not None and not class_idx < net.label_dim:
            raise click.BadParameter(f'{class_idx} is not a class of this network ' + (f'(it has {net.label_dim} classes)'
                if net.label_dim else '(it is unconditional; leave out --class)'), param_hint='--class')
        fids = []
        for set_seeds in fid_stats.repeated_seed_sets(seeds, repeats):
            desc = _describe_seeds(set_seeds)
            dist.print0(f'Generating {len(set_seeds)} images (seeds {desc}) and calculating statistics...')
            stats = _run(fid_stats.calculate_network_stats, net=net, seeds=set_seeds, detector=det, max_batch_size=batch,
                device=device, class_idx=class_idx, return_features=kid, progress_desc=f'seeds {desc}', **sampler_kwargs)
            if dist.get_rank() == 0:
                fids.append(_report(stats, ref, det_name, kid, kid_subsets, kid_subset_size, seed,
                    suffix=(f' of seeds {desc}' if repeats > 1 else '')))
        if dist.get_rank() == 0 and repeats > 1:
            print(f'{_label(det_name, "FID")} over {repeats} seed sets: mean {np.mean(fids):g} +- std {np.std(fids, ddof=1):g}, min {np.min(fids):g}')
    dist.barrier()
    dist.shutdown()

#----------------------------------------------------------------------------

@main.command()
@click.option('--data', 'dataset_path', help='Path to the dataset', metavar='PATH|ZIP', type=str, required=True)
@click.option('--dest', 'dest_path',    help='Destination .npz file', metavar='NPZ', type=str, required=True)
@click.option('--batch',                help='Maximum batch size per process', metavar='INT', type=click.IntRange(min=1), default=64, show_default=True)
@click.option('--features',             help='Also store all features (float32), needed for KID', is_flag=True)
@_common_options('Load a --detector pickle with plain pickle.load, executing the code stored in it (only for files you trust)')
def ref(dataset_path, dest_path, batch, features, detector, trust_code, workers, device):
    """Calculate dataset reference statistics needed by 'calc'."""
    try:
        dnnlib.util.check_writable_file(dest_path, '--dest')
    except dnnlib.util.UnwritablePathError as e:
        raise click.ClickException(str(e)) from e
    device, det, det_name = _setup(device, detector, workers, trust_code)
    stats = _run(calculate_inception_stats, image_path=dataset_path, detector=det, max_batch_size=batch,
        num_workers=workers, device=device, return_features=features)
    if dist.get_rank() == 0:
        dist.print0(f'Saving dataset reference statistics to "{dest_path}"...')
        fid_stats.save_ref_stats(dest_path, stats[0], stats[1], features=(stats[2] if features else None), detector_name=det_name)
    dist.barrier()
    dist.print0('Done.')
    dist.shutdown()

#----------------------------------------------------------------------------

if __name__ == '__main__':
    main()

#----------------------------------------------------------------------------
