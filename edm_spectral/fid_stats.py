"""FID and KID statistics: detector features of an image folder or zip, or of images generated
by a network in memory, reduced to EDM's mean and covariance; the Frechet distance, KID, and
EDM's .npz reference statistics.

Both sources split their work over torchrun ranks with the seed rule of generate.py
(training.sampling.split_seeds), so the result does not depend on the number of processes (up to
float64 summation order), and features come back in image/seed order."""

import os

import numpy as np
import scipy.linalg
import torch
import tqdm

import dnnlib.util
from edm_spectral import detectors
from torch_utils import distributed as dist
from training.sampling import sample_batch, split_seeds, to_uint8

#----------------------------------------------------------------------------
# Raised when an image set holds fewer images than requested and allow_fewer is off.

class TooFewImagesError(ValueError):
    def __init__(self, path, num_found, num_expected):
        super().__init__(f'Found {num_found} images in "{path}", fewer than the {num_expected} requested')
        self.path, self.num_found, self.num_expected = path, num_found, num_expected

#----------------------------------------------------------------------------
# Running sums f and f^T f in float64 on each rank, combined across ranks. Batches are added
# with their global index (rank + i * world_size, as split_seeds deals them) so that kept
# features can be put back in order.

class FeatureStats:
    def __init__(self, feature_dim, device, keep_features=False):
        self.feature_dim = feature_dim
        self.count = 0
        self.sum = torch.zeros([feature_dim], dtype=torch.float64, device=device)
        self.sum_outer = torch.zeros([feature_dim, feature_dim], dtype=torch.float64, device=device)
        self.kept = [] if keep_features else None

    def add(self, batch_index, features):
        if features.ndim != 2 or features.shape[1] != self.feature_dim:
            raise RuntimeError(f'Detector returned features of shape {list(features.shape)}, expected [N, {self.feature_dim}]')
        features = features.to(torch.float64)
        self.count += features.shape[0]
        self.sum += features.sum(0)
        self.sum_outer += features.T @ features
        if self.kept is not None:
            self.kept.append((batch_index, features.to(torch.float32).cpu()))

    # mu [D], sigma [D, D] (unbiased) as float64 numpy arrays on every rank, plus the features
    # [N, D] in order when kept.
    def finalize(self):
        mu, sigma = self.sum.clone(), self.sum_outer.clone()
        count = torch.tensor([self.count], dtype=torch.int64, device=mu.device)
        if dist.get_world_size() > 1:
            torch.distributed.all_reduce(mu)
            torch.distributed.all_reduce(sigma)
            torch.distributed.all_reduce(count)
        num = int(count.item())
        if num < 2:
            raise ValueError(f'Need at least 2 images to estimate a covariance, got {num}')
        mu /= num
        sigma -= mu.ger(mu) * num
        sigma /= num - 1
        mu, sigma = mu.cpu().numpy(), sigma.cpu().numpy()
        if self.kept is None:
            return mu, sigma
        kept = self.kept
        if dist.get_world_size() > 1:
            gathered = [None] * dist.get_world_size()
            torch.distributed.all_gather_object(gathered, kept)
            kept = [item for part in gathered for item in part]
        kept.sort(key=lambda item: item[0])
        return mu, sigma, torch.cat([f for _, f in kept]).numpy()

#----------------------------------------------------------------------------
# Detector features of a uint8 batch [N, C, H, W]; grayscale is repeated to 3 channels.

def detector_features(detector, images, device):
    if images.shape[1] == 1:
        images = images.repeat([1, 3, 1, 1])
    with torch.no_grad():
        features = detector(images.to(device), return_features=True)
    if features.ndim != 2 or features.shape[0] != images.shape[0]:
        raise RuntimeError(f'Detector returned features of shape {list(features.shape)} for {images.shape[0]} images')
    return features

# This rank's share of `items` (seeds or image indices): (global batch index, tensor) pairs.
def _rank_batches(items, max_batch_size):
    world_size, rank = dist.get_world_size(), dist.get_rank()
    batches = split_seeds(items, max_batch_size, rank, world_size)
    return [(rank + i * world_size, b) for i, b in enumerate(batches)]

def _resolve_detector(detector, device):
    if detector is None or isinstance(detector, str):
        detector, _name = detectors.load_detector(detector, device=device, verbose=(dist.get_rank() == 0))
    return detector

#----------------------------------------------------------------------------
# Statistics of every image of a folder or zip (a seeded random subset of num_expected when
# there are more). `detector` is a loaded detector module, or what load_detector() accepts.
# Returns mu, sigma (and the features [N, D] in dataset order with return_features).

def calculate_inception_stats(image_path, num_expected=None, seed=0, max_batch_size=64, num_workers=3,
        prefetch_factor=2, device=None, detector=None, allow_fewer=False, return_features=False):
    from training.dataset import ImageFolderDataset
    device = dist.resolve_device(device)
    detector = _resolve_detector(detector, device)

    dist.print0(f'Loading images from "{image_path}"...')
    dataset_obj = ImageFolderDataset(path=image_path, max_size=num_expected, random_seed=seed)
    num_images = len(dataset_obj)
    if num_expected is not None and num_images < num_expected:
        if not allow_fewer:
            raise TooFewImagesError(image_path, num_images, num_expected)
        dist.print0(f'Warning: using only {num_images} images instead of {num_expected}; FID is biased upwards for fewer images.')
    if num_images < 2:
        raise ValueError(f'Need at least 2 images to estimate a covariance, found {num_images} in "{image_path}"')

    rank_batches = [(i, b) for i, b in _rank_batches(range(num_images), max_batch_size) if len(b) > 0]
    loader_kwargs = dict(num_workers=num_workers, prefetch_factor=prefetch_factor) if num_workers > 0 else dict(num_workers=0)
    data_loader = torch.utils.data.DataLoader(dataset_obj, batch_sampler=[b.tolist() for _, b in rank_batches], **loader_kwargs)

    stats = FeatureStats(detectors.detector_feature_dim(detector), device, keep_features=return_features)
    dist.print0(f'Calculating statistics for {num_images} images...')
    for (images, _labels), (batch_index, _) in zip(tqdm.tqdm(data_loader, unit='batch', disable=(dist.get_rank() != 0)), rank_batches):
        stats.add(batch_index, detector_features(detector, images, device))
    return stats.finalize()

#----------------------------------------------------------------------------
# The images `net` generates for this rank's share of `seeds`, batch by batch in memory: the
# images generate.py would save for the same seeds and options (sample_batch, then EDM's uint8
# quantisation). Yields (global batch index, uint8 [B, C, H, W] on `device`).

def iter_network_images(net, seeds, max_batch_size=64, device=None, class_idx=None, progress=True, progress_desc=None, **sampler_kwargs):
    seeds = list(seeds)
    device = dist.resolve_device(device)
    bar = tqdm.tqdm(total=len(seeds), unit='img', desc=progress_desc, disable=(not progress or dist.get_rank() != 0))
    with bar:
        for batch_index, batch_seeds in _rank_batches(seeds, max_batch_size):
            if len(batch_seeds) == 0:
                continue
            with torch.no_grad():
                images = to_uint8(sample_batch(net, batch_seeds, device, class_idx=class_idx, **sampler_kwargs))
            yield batch_index, images
            bar.update(min(len(batch_seeds) * dist.get_world_size(), bar.total - bar.n))   # the other ranks advance about as far

# Statistics of those images, fed straight to the detector.
def calculate_network_stats(net, seeds, detector=None, max_batch_size=64, device=None, class_idx=None,
        return_features=False, progress=True, progress_desc=None, **sampler_kwargs):
    seeds = list(seeds)
    if len(seeds) < 2:
        raise ValueError(f'Need at least 2 seeds to estimate a covariance, got {len(seeds)}')
    device = dist.resolve_device(device)
    detector = _resolve_detector(detector, device)
    stats = FeatureStats(detectors.detector_feature_dim(detector), device, keep_features=return_features)
    for batch_index, images in iter_network_images(net, seeds, max_batch_size=max_batch_size, device=device, class_idx=class_idx,
            progress=progress, progress_desc=progress_desc, **sampler_kwargs):
        stats.add(batch_index, detector_features(detector, images, device))
    return stats.finalize()

#----------------------------------------------------------------------------
# EDM's repeated seed sets: the given seeds, then shifted by their span (max - min + 1, the
# length of a range) each time: 0-49999 -> 0-49999, 50000-99999, 100000-149999.

def repeated_seed_sets(seeds, repeats):
    seeds = list(seeds)
    if repeats < 1 or not seeds:
        raise ValueError(f'Need at least one seed and one repeat, got {len(seeds)} seeds and {repeats} repeats')
    span = max(seeds) - min(seeds) + 1
    return [[s + r * span for s in seeds] for r in range(repeats)]

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
# Reference statistics: .npz path or URL with mu, sigma (optional: features, detector). The
# 'detector' entry defaults to Inception, as in EDM's published files.

def load_ref_stats(ref):
    if dnnlib.util.is_url(ref):
        try:
            with dnnlib.util.open_url(ref, cache=True) as f:
                data = dict(np.load(f, allow_pickle=False))
        except Exception as e:
            raise OSError(f'Could not fetch reference statistics from {ref}: {type(e).__name__}: {e}') from e
    else:
        if not os.path.isfile(ref):
            raise FileNotFoundError(f'Reference statistics not found: {ref}')
        try:
            with open(ref, 'rb') as f:
                data = dict(np.load(f, allow_pickle=False))
        except Exception as e:
            raise ValueError(f'{ref} is not a readable .npz file: {type(e).__name__}: {e}') from e
    if 'mu' not in data or 'sigma' not in data:
        raise ValueError(f'{ref} lacks "mu" and/or "sigma" (keys: {sorted(data)})')
    if data['mu'].ndim != 1 or data['sigma'].shape != data['mu'].shape * 2:
        raise ValueError(f'{ref}: bad shapes mu {data["mu"].shape}, sigma {data["sigma"].shape}')
    data['detector'] = str(data['detector']) if 'detector' in data else detectors.DETECTOR_NAME
    return data

# Write reference statistics in EDM's format; the detector is recorded unless it is Inception.
def save_ref_stats(path, mu, sigma, features=None, detector_name=detectors.DETECTOR_NAME):
    extra = dict(features=features) if features is not None else {}
    if detector_name != detectors.DETECTOR_NAME:
        extra['detector'] = np.array(detector_name)
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    np.savez(path, mu=mu, sigma=sigma, **extra)

#----------------------------------------------------------------------------
