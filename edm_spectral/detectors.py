"""Feature detectors for FID/KID: loading the standard Inception pickle or a TorchScript file,
and a small seeded stand-in for tests and offline smoke runs.

Every detector is called as `detector(images, return_features=True)` with uint8 [N, 3, H, W]
images (any H, W) and returns [N, D] float features; `feature_dim` gives D.

Unpickling runs code stored in the file, so a pickle is loaded only from the standard URL (the
origin EDM trusts) or its download cache, or when the caller passes trust_code=True. TorchScript
files load with torch.jit.load, which runs no Python from the file."""

import os
import pickle
import zipfile

import numpy as np
import torch

#----------------------------------------------------------------------------
# The standard FID detector of StyleGAN/EDM (2048-d pool features of Inception-v3, TF weights).

DETECTOR_URL = 'https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan3/versions/1/files/metrics/inception-2015-12-05.pkl'
DETECTOR_NAME = 'inception-2015-12-05'
STANDIN_NAME = 'standin'

#----------------------------------------------------------------------------
# Stand-in detector: three random ReLU conv stages (stride 1, 2, 2) with weights drawn from a
# fixed seed, each stage contributing its spatially averaged channels to the feature vector.
# Deterministic across machines and runs, sensitive to colour, texture and scale statistics.
# Its FID values are NOT comparable to published FIDs (those need Inception features).

class StandinDetector(torch.nn.Module):
    def __init__(self, feature_dim=256, seed=0):
        super().__init__()
        if feature_dim < 8:
            raise ValueError(f'feature_dim must be at least 8, got {feature_dim}')
        self.feature_dim = feature_dim
        self.seed = seed
        self.detector_name = STANDIN_NAME   # kept by torch.jit.script, so a TorchScript copy is named too
        gen = torch.Generator().manual_seed(seed)
        widths = [feature_dim // 8, feature_dim // 4]
        widths.append(feature_dim - sum(widths))
        in_ch = 3
        for i, out_ch in enumerate(widths):
            fan_in = in_ch * 9
            self.register_buffer(f'weight{i}', torch.randn([out_ch, in_ch, 3, 3], generator=gen) * np.sqrt(2 / fan_in))
            self.register_buffer(f'bias{i}', torch.randn([out_ch], generator=gen) * 0.1)
            in_ch = out_ch
        self.num_stages = len(widths)

    # The stages are written out (not looked up by name) so that torch.jit.script compiles it.
    def forward(self, images: torch.Tensor, return_features: bool = True) -> torch.Tensor:
        # return_features is accepted for call compatibility; the stand-in has no classifier head.
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f'Detector expects uint8 images of shape [N, 3, H, W], got {images.shape}')
        if images.dtype != torch.uint8:
            raise TypeError(f'Detector expects uint8 images, got {images.dtype}')
        x0 = images.to(torch.float32) / 127.5 - 1
        x1 = torch.relu(torch.nn.functional.conv2d(x0, self.weight0, self.bias0, stride=1, padding=1))
        x2 = torch.relu(torch.nn.functional.conv2d(x1, self.weight1, self.bias1, stride=2, padding=1))
        x3 = torch.relu(torch.nn.functional.conv2d(x2, self.weight2, self.bias2, stride=2, padding=1))
        return torch.cat([x1.mean(dim=(2, 3)), x2.mean(dim=(2, 3)), x3.mean(dim=(2, 3))], dim=1)

#----------------------------------------------------------------------------
# The file dnnlib.util.open_url() looks for before downloading `url`: a manually downloaded
# detector placed there is used offline.

def detector_cache_path(url=DETECTOR_URL):
    import dnnlib.util
    return dnnlib.util.url_cache_path(url)

def _missing_detector_message(url, reason):
    return (f'Could not load the FID feature detector from {url}\n'
        f'  ({reason.splitlines()[0]})\n'
        f'Download it on a machine with internet access, e.g.\n'
        f'  wget -O inception-2015-12-05.pkl {url}\n'
        f'then put it in the download cache as\n'
        f'  {detector_cache_path(url)}\n'
        f'(the cache follows $DNNLIB_CACHE_DIR, default ~/.cache/dnnlib), or pass --detector=PATH/TO/inception-2015-12-05.pkl\n'
        f'together with --trust-code (a pickle elsewhere runs only when you say you trust it).\n'
        f'For an offline smoke test only, --detector=standin uses a random stand-in (values not comparable).')

#----------------------------------------------------------------------------
# Whether `path` is the download-cache copy of the standard detector URL, the one local pickle
# trusted without trust_code (open_url fills it from the trusted origin).

def is_standard_detector_file(path):
    cached = detector_cache_path(DETECTOR_URL)
    return os.path.isfile(cached) and os.path.samefile(path, cached)

def _load_torchscript(path):
    try:
        return torch.jit.load(path, map_location='cpu')
    except Exception as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f'{path} is a zip archive but not a loadable TorchScript module ({reason}); '
            f'save a detector with torch.jit.script(module).save(path)') from None

def _load_pickle(path):
    try:
        with open(path, 'rb') as f:
            return pickle.load(f)
    except Exception as e:
        raise RuntimeError(f'{path} is not a loadable detector pickle ({type(e).__name__}: {e}); '
            f'delete it and download it again from {DETECTOR_URL}') from e

#----------------------------------------------------------------------------
# Load a detector: 'standin', a local file or a URL (default: the standard Inception). A zip
# archive is read as TorchScript; a pickle only from the standard URL, its download cache, or
# with trust_code=True (else UnsafePickleError, before any byte is unpickled).
# Returns (detector module on `device` in eval mode, name recorded in statistics files).

def load_detector(detector=None, device=torch.device('cpu'), verbose=True, trust_code=False):
    from edm_spectral.checkpoints import UnsafePickleError
    if detector is None or detector in ('', 'inception', DETECTOR_NAME):
        detector = DETECTOR_URL
    if detector == STANDIN_NAME:
        return StandinDetector().eval().requires_grad_(False).to(device), STANDIN_NAME

    import dnnlib.util
    if dnnlib.util.is_url(detector):
        try:
            path = dnnlib.util.open_url(detector, cache=True, verbose=verbose, num_attempts=3, return_filename=True)
        except Exception as e:
            raise RuntimeError(_missing_detector_message(detector, f'{type(e).__name__}: {e}')) from e
        trusted = detector == DETECTOR_URL
    elif os.path.isfile(detector):
        path = detector
        trusted = is_standard_detector_file(path)
    else:
        raise FileNotFoundError(f'Detector not found: {detector!r} is neither an existing file, a URL, nor "standin"')

    if zipfile.is_zipfile(path):
        net = _load_torchscript(path)
    elif trusted or trust_code:
        net = _load_pickle(path)
    else:
        raise UnsafePickleError(f'{detector} is a pickle, and unpickling it would run the code stored in it; '
            f'only the standard detector ({DETECTOR_URL}) and its download cache are trusted')
    if not callable(net):
        raise RuntimeError(f'{path} does not hold a detector module (got {type(net).__name__})')
    net = net.to(device)
    if hasattr(net, 'eval'):
        net.eval()
    name = getattr(net, 'detector_name', None)
    if not isinstance(name, str) or not name:
        name = STANDIN_NAME if isinstance(net, StandinDetector) else DETECTOR_NAME if DETECTOR_NAME in os.path.basename(path) else os.path.basename(path)
    return net, name

#----------------------------------------------------------------------------
# Feature dimension of a detector: its `feature_dim` attribute, else that of Inception.

def detector_feature_dim(detector):
    return int(getattr(detector, 'feature_dim', 2048))

#----------------------------------------------------------------------------
