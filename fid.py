"""Frechet Inception Distance (FID) and Kernel Inception Distance (KID) of image sets,
computed exactly as in EDM/StyleGAN, with reference statistics in EDM's .npz format."""

import os

import click
import numpy as np
import scipy.linalg
import torch
import tqdm

import dnnlib.util
from edm_spectral import detectors

#----------------------------------------------------------------------------
# Features of every image of a folder or zip, reduced to float64 sums on each rank and combined
# across ranks. Returns mu [D], sigma [D, D], and (if return_features) the features [N, D] in
# dataset order on every rank. The batch split across ranks follows EDM, so the result does not
# depend on the number of processes (up to float64 summation order). `detector` is a loaded
# detector module, or what load_detector() accepts (None = the standard Inception).

def calculate_inception_stats(image_path, num_expected=None, seed=0, max_batch_size=64, num_workers=3,
        prefetch_factor=2, device=None, detector=None, allow_fewer=False, return_features=False):
    from torch_utils import distributed as dist
    from training.dataset import ImageFolderDataset
    device = dist.resolve_device(device)
    if detector is None or isinstance(detector, str):
        detector, _name = detectors.load_detector(detector, device=device, verbose=(dist.get_rank() == 0))

    # Images: a seeded random subset when there are more than requested.
    dist.print0(f'Loading images from "{image_path}"...')
    try:
        dataset_obj = ImageFolderDataset(path=image_path, max_size=num_expected, random_seed=seed)
    except (ValueError, OSError) as e:
        raise click.ClickException(str(e))
    num_images = len(dataset_obj)
    if num_expected is not None and num_images < num_expected:
        if not allow_fewer:
            raise click.ClickException(f'Found {num_images} images in "{image_path}", fewer than --num={num_expected}. '
                f'FID depends on the number of images; pass --allow-fewer to use {num_images}, or --num={num_images}.')
        dist.print0(f'Warning: using only {num_images} images instead of {num_expected}; FID is biased upwards for fewer images.')
    if num_images < 2:
        raise click.ClickException(f'Need at least 2 images to estimate a covariance, found {num_images} in "{image_path}"')

    # Batches: ceil(N / (batch * W)) * W contiguous chunks, rank r takes chunks r, r+W, r+2W, ...
    world_size, rank = dist.get_world_size(), dist.get_rank()
    num_batches = ((num_images - 1) // (max_batch_size * world_size) + 1) * world_size
    all_batches = torch.arange(num_images).tensor_split(num_batches)
    rank_batches = [(i, b) for i, b in enumerate(all_batches) if i % world_size == rank and len(b) > 0]
    loader_kwargs = dict(num_workers=num_workers, prefetch_factor=prefetch_factor) if num_workers > 0 else dict(num_workers=0)
    data_loader = torch.utils.data.DataLoader(dataset_obj, batch_sampler=[b for _, b in rank_batches], **loader_kwargs)

    # Accumulate sum f and sum f^T f in float64.
    feature_dim = detectors.detector_feature_dim(detector)
    mu = torch.zeros([feature_dim], dtype=torch.float64, device=device)
    sigma = torch.zeros([feature_dim, feature_dim], dtype=torch.float64, device=device)
    kept = []
    dist.print0(f'Calculating statistics for {num_images} images...')
    for (images, _labels), (batch_idx, _) in zip(tqdm.tqdm(data_loader, unit='batch', disable=(rank != 0)), rank_batches):
        if images.shape[1] == 1:
            images = images.repeat([1, 3, 1, 1])
        with torch.no_grad():
            features = detector(images.to(device), return_features=True).to(torch.float64)
        if features.shape != (images.shape[0], feature_dim):
            raise RuntimeError(f'Detector returned features of shape {list(features.shape)}, expected [{images.shape[0]}, {feature_dim}]')
        mu += features.sum(0)
        sigma += features.T @ features
        if return_features:
            kept.append((batch_idx, features.to(torch.float32).cpu()))

    # Combine ranks and finalise.
    if world_size > 1:
        torch.distributed.all_reduce(mu)
        torch.distributed.all_reduce(sigma)
    mu /= num_images
    sigma -= mu.ger(mu) * num_images
    sigma /= num_images - 1
    mu, sigma = mu.cpu().numpy(), sigma.cpu().numpy()
    if not return_features:
        return mu, sigma
    if world_size > 1:
        gathered = [None] * world_size
        torch.distributed.all_gather_object(gathered, kept)
        kept = [item for part in gathered for item in part]
    kept.sort(key=lambda item: item[0])
    return mu, sigma, torch.cat([f for _, f in kept]).numpy()

#----------------------------------------------------------------------------
# Frechet distance between two Gaussians: |mu - mu_ref|^2 + tr(S + S_ref - 2 sqrtm(S S_ref)).

def calculate_fid_from_inception_stats(mu, sigma, mu_ref, sigma_ref):
    mu, sigma, mu_ref, sigma_ref = (np.asarray(a, dtype=np.float64) for a in (mu, sigma, mu_ref, sigma_ref))
    if mu.shape != mu_ref.shape or sigma.shape != sigma_ref.shape or sigma.shape != mu.shape * 2:
        raise ValueError(f'Statistics do not match: mu {mu.shape} / {mu_ref.shape}, sigma {sigma.shape} / {sigma_ref.shape}')
    m = np.square(mu - mu_ref).sum()
    s = scipy.linalg.sqrtm(np.dot(sigma, sigma_ref))
    if isinstance(s, tuple):   # older scipy returns (sqrtm, error estimate)
        s = s[0]
    fid = m + np.trace(sigma + sigma_ref - s * 2)
    return float(np.real(fid))

#----------------------------------------------------------------------------
# Kernel Inception Distance (Binkowski et al. 2018): the unbiased estimate of MMD^2 with the
# polynomial kernel k(x, y) = (x.y / D + 1)^3, averaged over `num_subsets` random subsets of
# m = min(N1, N2, max_subset_size) features drawn without replacement from each set.

def calculate_kid(feats1, feats2, num_subsets=100, max_subset_size=1000, seed=0):
    feats1, feats2 = np.asarray(feats1, dtype=np.float64), np.asarray(feats2, dtype=np.float64)
    if feats1.ndim != 2 or feats2.ndim != 2 or feats1.shape[1] != feats2.shape[1]:
        raise ValueError(f'Feature sets must be [N, D] with the same D, got {feats1.shape} and {feats2.shape}')
    dim = feats1.shape[1]
    m = min(len(feats1), len(feats2), max_subset_size)
    if m < 2:
        raise ValueError(f'KID needs at least 2 features per set, got {len(feats1)} and {len(feats2)}')
    rnd = np.random.RandomState(seed)
    kernel = lambda a, b: (a @ b.T / dim + 1) ** 3
    total = 0.0
    for _ in range(num_subsets):
        x = feats1[rnd.choice(len(feats1), m, replace=False)]
        y = feats2[rnd.choice(len(feats2), m, replace=False)]
        kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
        within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        total += within - 2 * kxy.mean()
    return float(total / num_subsets)

#----------------------------------------------------------------------------
# Reference statistics: .npz path or URL with mu, sigma (optional: features, detector).

def load_ref_stats(ref):
    if dnnlib.util.is_url(ref):
        try:
            with dnnlib.util.open_url(ref, cache=True) as f:
                data = dict(np.load(f, allow_pickle=False))
        except Exception as e:
            raise click.ClickException(f'Could not fetch reference statistics from {ref}: {type(e).__name__}: {e}')
    else:
        if not os.path.isfile(ref):
            raise click.ClickException(f'Reference statistics not found: {ref}')
        try:
            with open(ref, 'rb') as f:
                data = dict(np.load(f, allow_pickle=False))
        except Exception as e:
            raise click.ClickException(f'{ref} is not a readable .npz file: {type(e).__name__}: {e}')
    if 'mu' not in data or 'sigma' not in data:
        raise click.ClickException(f'{ref} lacks "mu" and/or "sigma" (keys: {sorted(data)})')
    if data['mu'].ndim != 1 or data['sigma'].shape != data['mu'].shape * 2:
        raise click.ClickException(f'{ref}: bad shapes mu {data["mu"].shape}, sigma {data["sigma"].shape}')
    data['detector'] = str(data['detector']) if 'detector' in data else detectors.DETECTOR_NAME   # published refs: Inception
    return data

#----------------------------------------------------------------------------

def _setup(device, detector, workers, trust_code):
    from torch_utils import distributed as dist
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
    return dist, device, det, det_name

def _label(det_name, metric):
    return f'{metric} (stand-in detector, NOT comparable to published {metric})' if det_name == detectors.STANDIN_NAME else metric

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
    # Generate 50000 images and save them as out/*/*.png
    torchrun --standalone --nproc_per_node=1 generate.py --outdir=out --seeds=0-49999 --subdirs \\
        --network=https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-cifar10-32x32-cond-vp.pkl

    \b
    # Calculate FID
    torchrun --standalone --nproc_per_node=1 fid.py calc --images=out \\
        --ref=https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/cifar10-32x32.npz

    \b
    # Compute dataset reference statistics (with features, for KID)
    python fid.py ref --data=datasets/my-dataset.zip --dest=fid-refs/my-dataset.npz --features
    """

#----------------------------------------------------------------------------

_detector_help = 'Detector: TorchScript file, pickle path or URL (needs --trust-code unless it is the standard one), or "standin"  [default: the Inception URL]'
_trust_help = 'Load a --detector pickle with plain pickle.load, executing the code stored in it (only for files you trust)'

# Data-loader processes: EDM's 3, but no more than the cores left next to the main process.
def _default_workers():
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)
    return max(0, min(3, cores - 1))

@main.command()
@click.option('--images', 'image_path', help='Path to the images', metavar='PATH|ZIP', type=str, required=True)
@click.option('--ref', 'ref_path',      help='Dataset reference statistics', metavar='NPZ|URL', type=str, required=True)
@click.option('--num', 'num_expected',  help='Number of images to use', metavar='INT', type=click.IntRange(min=2), default=50000, show_default=True)
@click.option('--allow-fewer',          help='Use all images when there are fewer than --num', is_flag=True)
@click.option('--seed',                 help='Random seed for selecting the images', metavar='INT', type=int, default=0, show_default=True)
@click.option('--batch',                help='Maximum batch size per process', metavar='INT', type=click.IntRange(min=1), default=64, show_default=True)
@click.option('--kid',                  help='Also compute KID (needs a reference made with --features)', is_flag=True)
@click.option('--kid-subsets',          help='KID: number of random subsets', metavar='INT', type=click.IntRange(min=1), default=100, show_default=True)
@click.option('--kid-subset-size',      help='KID: maximum subset size', metavar='INT', type=click.IntRange(min=2), default=1000, show_default=True)
@click.option('--detector',             help=_detector_help, metavar='PATH|URL', type=str)
@click.option('--trust-code',           help=_trust_help, is_flag=True)
@click.option('--workers',              help='Data loader processes  [default: min(3, cores - 1)]', metavar='INT', type=click.IntRange(min=0), default=_default_workers())
@click.option('--device',               help='Device  [default: cuda if available, else cpu]', metavar='STR', type=str)
def calc(image_path, ref_path, num_expected, allow_fewer, seed, batch, kid, kid_subsets, kid_subset_size, detector, trust_code, workers, device):
    """Calculate FID (and optionally KID) for a given set of images."""
    dist, device, det, det_name = _setup(device, detector, workers, trust_code)

    ref = None
    if dist.get_rank() == 0:
        ref = load_ref_stats(ref_path)
        if (ref['detector'] == detectors.STANDIN_NAME) != (det_name == detectors.STANDIN_NAME):
            raise click.ClickException(f'{ref_path} was computed with detector "{ref["detector"]}" but this run uses "{det_name}"; use the same detector for both')
        if ref['mu'].shape[0] != detectors.detector_feature_dim(det):
            raise click.ClickException(f'{ref_path} holds {ref["mu"].shape[0]}-d statistics, the detector gives {detectors.detector_feature_dim(det)}-d features')
        if kid and 'features' not in ref:
            raise click.ClickException(f'--kid needs reference features, but {ref_path} has only mu/sigma; make it with "fid.py ref --features"')

    stats = calculate_inception_stats(image_path=image_path, detector=det, num_expected=num_expected, seed=seed,
        max_batch_size=batch, num_workers=workers, device=device, allow_fewer=allow_fewer, return_features=kid)
    if dist.get_rank() == 0:
        fid = calculate_fid_from_inception_stats(stats[0], stats[1], ref['mu'], ref['sigma'])
        print(f'{_label(det_name, "FID")}: {fid:g}' if det_name == detectors.STANDIN_NAME else f'{fid:g}')
        if kid:
            value = calculate_kid(stats[2], ref['features'], num_subsets=kid_subsets, max_subset_size=kid_subset_size, seed=seed)
            print(f'{_label(det_name, "KID")}: {value:g}')
    dist.barrier()

#----------------------------------------------------------------------------

@main.command()
@click.option('--data', 'dataset_path', help='Path to the dataset', metavar='PATH|ZIP', type=str, required=True)
@click.option('--dest', 'dest_path',    help='Destination .npz file', metavar='NPZ', type=str, required=True)
@click.option('--batch',                help='Maximum batch size per process', metavar='INT', type=click.IntRange(min=1), default=64, show_default=True)
@click.option('--features',             help='Also store all features (float32), needed for KID', is_flag=True)
@click.option('--detector',             help=_detector_help, metavar='PATH|URL', type=str)
@click.option('--trust-code',           help=_trust_help, is_flag=True)
@click.option('--workers',              help='Data loader processes  [default: min(3, cores - 1)]', metavar='INT', type=click.IntRange(min=0), default=_default_workers())
@click.option('--device',               help='Device  [default: cuda if available, else cpu]', metavar='STR', type=str)
def ref(dataset_path, dest_path, batch, features, detector, trust_code, workers, device):
    """Calculate dataset reference statistics needed by 'calc'."""
    dist, device, det, det_name = _setup(device, detector, workers, trust_code)
    stats = calculate_inception_stats(image_path=dataset_path, detector=det, max_batch_size=batch,
        num_workers=workers, device=device, return_features=features)
    if dist.get_rank() == 0:
        if os.path.dirname(dest_path):
            os.makedirs(os.path.dirname(dest_path), exist_ok=True)
        extra = dict(features=stats[2]) if features else {}
        if det_name != detectors.DETECTOR_NAME:
            extra['detector'] = np.array(det_name)
        dist.print0(f'Saving dataset reference statistics to "{dest_path}"...')
        np.savez(dest_path, mu=stats[0], sigma=stats[1], **extra)
    dist.barrier()
    dist.print0('Done.')

#----------------------------------------------------------------------------

if __name__ == '__main__':
    main()

#----------------------------------------------------------------------------
