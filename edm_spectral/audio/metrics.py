"""Audio metrics of the paper's Table 2 over a folder of generated WAVs vs. references.

- MR-STFT (paired, lower is better): multi-resolution STFT distance, spectral convergence plus
  mean |log magnitude difference|, averaged over the resolutions (FFT, hop, window) =
  (1024, 120, 600), (2048, 240, 1200), (512, 50, 240) (the ParallelWaveGAN/auraloss set).
- PESQ (paired, wide-band, 16 kHz after polyphase resampling): needs the optional `pesq` package.
- NDB/K (unpaired): K-means (K bins) on the references' log-mel frames, then for each bin a
  two-proportion z-test (alpha = 0.05) between the share of reference and of generated frames;
  NDB/K = fraction of statistically different bins (Richardson & Weiss 2018).
- FAD (unpaired): Frechet distance between Gaussians fitted to frame embeddings. The standard
  embedding is VGGish: pass --vggish=PATH|URL to torchvggish's weights (vggish-10086976.pth,
  run by our own VGGish in edm_spectral/audio/vggish.py) or to a TorchScript module mapping a
  16 kHz waveform [T] to embeddings [frames, D]. The stand-in `logmel` embedding (80-d LMNT log-mel frames) needs
  no download; its values are NOT comparable to published FADs.
- PSD (unpaired, ours, not in Table 2): the quantity a spectral term acts on. Mean |log10|
  difference between the generated and the reference set's average Welch power spectra
  (edm_spectral.spectrum, n_fft 1024), over all bins (`psd_dist`) and the upper half of the
  band (`psd_dist_high`). Scaling every clip by g gives exactly |log10 g^2|.
- UTMOS (generated only): --utmos=PATH to a TorchScript module mapping a 16 kHz waveform [1, T]
  to a MOS estimate.

A generated folder either holds WAVs directly or seed<NNN>/ sub-folders (as written by
edm_spectral.audio.vocode); each metric is then reported as mean +- std over the seeds.

Example:

\b
python -m edm_spectral.audio.metrics --gen=out/vocoded --ref=out/vocoded/reference --out=out/metrics.json
"""

import glob
import json
import math
import os

import click
import numpy as np
import torch

from edm_spectral.audio import data as data_lib
from edm_spectral.audio import model as model_lib

#----------------------------------------------------------------------------
# Missing optional model or package: a clear message instead of a traceback.

class MissingDependency(RuntimeError):
    pass

#----------------------------------------------------------------------------
# MR-STFT distance between two waveforms (numpy or torch, 1-D). Trims to the shorter one.

MRSTFT_RESOLUTIONS = [(1024, 120, 600), (2048, 240, 1200), (512, 50, 240)]

def mr_stft(x, y, resolutions=MRSTFT_RESOLUTIONS, eps=1e-7):
    x = torch.as_tensor(np.asarray(x), dtype=torch.float64).reshape(-1)
    y = torch.as_tensor(np.asarray(y), dtype=torch.float64).reshape(-1)
    n = min(len(x), len(y))
    x, y = x[:n], y[:n]
    total = 0.0
    for n_fft, hop, win in resolutions:
        if n <= n_fft // 2:
            raise ValueError(f'Clip of {n} samples is too short for the MR-STFT resolution n_fft={n_fft}')
        window = torch.hann_window(win, dtype=torch.float64)
        mag = lambda s: torch.stft(s, n_fft=n_fft, hop_length=hop, win_length=win, window=window,
            center=True, return_complex=True).abs().clamp(min=eps)
        X, Y = mag(x), mag(y)
        sc = torch.linalg.norm(Y - X) / torch.linalg.norm(Y)
        logmag = (Y.log() - X.log()).abs().mean()
        total += float(sc + logmag)
    return total / len(resolutions)

#----------------------------------------------------------------------------
# Resample to 16 kHz (polyphase, scipy).

def resample(audio, rate, target=16000):
    if rate == target:
        return np.asarray(audio, dtype=np.float32)
    import scipy.signal
    g = math.gcd(int(rate), int(target))
    return scipy.signal.resample_poly(np.asarray(audio, dtype=np.float64), target // g, rate // g).astype(np.float32)

#----------------------------------------------------------------------------
# Wide-band PESQ of a degraded clip against its reference.

def pesq_wb(ref, deg, rate):
    try:
        from pesq import pesq
    except ImportError:
        raise MissingDependency('PESQ needs the optional package "pesq": pip install pesq') from None
    r, d = resample(ref, rate), resample(deg, rate)
    n = min(len(r), len(d))
    return float(pesq(16000, r[:n], d[:n], 'wb'))

#----------------------------------------------------------------------------
# K-means (k-means++ seeding, Lloyd iterations), numpy. Returns the centroids [K, D].

def kmeans(x, k, iters=50, seed=0):
    x = np.asarray(x, dtype=np.float64)
    if len(x) < k:
        raise ValueError(f'K-means needs at least K={k} reference vectors, got {len(x)}')
    rnd = np.random.RandomState(seed)
    centroids = [x[rnd.randint(len(x))]]
    d2 = ((x - centroids[0]) ** 2).sum(1)
    for _ in range(1, k):
        p = d2 / d2.sum() if d2.sum() > 0 else np.full(len(x), 1.0 / len(x))
        centroids.append(x[rnd.choice(len(x), p=p)])
        d2 = np.minimum(d2, ((x - centroids[-1]) ** 2).sum(1))
    c = np.stack(centroids)
    for _ in range(iters):
        labels = assign(x, c)
        new = np.stack([x[labels == j].mean(0) if np.any(labels == j) else c[j] for j in range(k)])
        if np.allclose(new, c):
            break
        c = new
    return c

def assign(x, centroids):
    x = np.asarray(x, dtype=np.float64)
    d = (x ** 2).sum(1)[:, None] - 2 * x @ centroids.T + (centroids ** 2).sum(1)[None, :]
    return d.argmin(1)

#----------------------------------------------------------------------------
# NDB and NDB/K. Returns dict(ndb, ndb_k, k, z): z-scores per bin of the two-proportion test.

def ndb(ref_feats, gen_feats, k=50, alpha=0.05, seed=0):
    import scipy.stats
    centroids = kmeans(ref_feats, k, seed=seed)
    p_ref = np.bincount(assign(ref_feats, centroids), minlength=k) / len(ref_feats)
    p_gen = np.bincount(assign(gen_feats, centroids), minlength=k) / len(gen_feats)
    n1, n2 = len(ref_feats), len(gen_feats)
    pooled = (n1 * p_ref + n2 * p_gen) / (n1 + n2)
    se = np.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    z = np.where(se > 0, (p_gen - p_ref) / np.where(se > 0, se, 1), 0.0)
    different = np.abs(z) > scipy.stats.norm.ppf(1 - alpha / 2)
    return dict(ndb=int(different.sum()), ndb_k=float(different.mean()), k=k, z=z.tolist())

#----------------------------------------------------------------------------
# Frechet distance between N(mu1, s1) and N(mu2, s2).

def frechet_distance(mu1, s1, mu2, s2):
    import warnings
    import scipy.linalg
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', scipy.linalg.LinAlgWarning) # Singular covariances (few frames) are expected.
        covmean = np.real(scipy.linalg.sqrtm(np.asarray(s1) @ np.asarray(s2)))
    return float(max(np.square(mu1 - mu2).sum() + np.trace(s1 + s2 - 2 * covmean), 0.0))

def fad(ref_emb, gen_emb):
    if min(len(ref_emb), len(gen_emb)) < 2:
        raise ValueError(f'FAD needs at least 2 embeddings per set, got {len(ref_emb)} and {len(gen_emb)} '
            f'(VGGish embeds 0.96 s windows: clips under ~1 s give none)')
    stats = lambda e: (np.mean(e, 0), np.cov(np.asarray(e, dtype=np.float64), rowvar=False))
    return frechet_distance(*stats(ref_emb), *stats(gen_emb))

#----------------------------------------------------------------------------
# Frame features. logmel: LMNT's log-mel frames [F, 80] at the LJSpeech settings (the stand-in
# embedding for FAD, and the NDB features). A TorchScript model from a path or URL (VGGish,
# UTMOS) is loaded on first use.

def logmel_frames(audio, rate):
    params = model_lib.make_params(sample_rate=rate)
    return data_lib.mel_spectrogram(torch.from_numpy(np.asarray(audio, dtype=np.float32)), params).numpy().T

def load_torchscript(path_or_url, what, device='cpu', allow_vggish=False):
    import dnnlib
    if path_or_url is None:
        raise MissingDependency(f'{what} needs a model file: pass its local path or URL (see docs/audio.md)')
    try:
        path = dnnlib.util.open_url(path_or_url, return_filename=True) if dnnlib.util.is_url(path_or_url) else path_or_url
    except Exception as e:
        raise MissingDependency(f'{what}: cannot fetch {path_or_url}: {e}') from None
    if not os.path.isfile(path):
        raise MissingDependency(f'{what}: model file not found: {path}')
    if allow_vggish:
        from edm_spectral.audio import vggish
        try:
            return vggish.load_vggish(path, device)
        except Exception:
            pass # Not a VGGish state dict: try TorchScript below.
    try:
        return torch.jit.load(path, map_location=device).eval()
    except Exception as e:
        kinds = 'a VGGish state dict (torchvggish format) nor a TorchScript module' if allow_vggish else 'a TorchScript module'
        raise MissingDependency(f'{what}: {path} is neither {kinds} ({type(e).__name__}); see docs/audio.md') from None

def model_embeddings(model, audio, rate, device='cpu'):
    wave = torch.from_numpy(resample(audio, rate))
    with torch.no_grad():
        emb = model.embed(wave) if hasattr(model, 'embed') else model(wave.to(device))
    emb = torch.as_tensor(emb).float().cpu().numpy()
    return emb.reshape(-1, emb.shape[-1])

def utmos_score(model, audio, rate, device='cpu'):
    wave = torch.from_numpy(resample(audio, rate)).to(device)[None]
    with torch.no_grad():
        return float(torch.as_tensor(model(wave)).float().mean())

#----------------------------------------------------------------------------
# Read a folder of WAVs -> {name: (audio, rate)}.

def read_folder(path):
    if not os.path.isdir(path):
        raise FileNotFoundError(f'Folder not found: {path}')
    files = sorted(glob.glob(os.path.join(path, '*.wav')))
    if not files:
        raise ValueError(f'No .wav files in {path}')
    return {os.path.basename(f)[:-4]: data_lib.read_wav(f) for f in files}

def seed_folders(gen):
    subs = sorted(d for d in glob.glob(os.path.join(gen, 'seed*')) if os.path.isdir(d))
    return subs if subs else [gen]

#----------------------------------------------------------------------------
# Log-PSD distance between two sets of (audio, rate): each set's mean per-clip Welch PSD.

def psd_distance(gen, ref, n_fft=1024):
    from edm_spectral.spectrum import power_spectral_density_1d, spectral_distance
    rates = {rate for _, rate in gen + ref}
    if len(rates) != 1:
        raise ValueError(f'PSD distance needs one sample rate, got {sorted(rates)}')
    mean_psd = lambda clips: np.mean([power_spectral_density_1d(np.asarray(a, dtype=np.float64), n_fft=n_fft)[1] for a, _ in clips], axis=0)
    d = spectral_distance(mean_psd(gen), mean_psd(ref))
    return dict(psd_dist=d['overall'], psd_dist_high=d['high'])

#----------------------------------------------------------------------------
# All requested metrics for one generated folder against the references.

ALL_METRICS = ['mrstft', 'pesq', 'ndb', 'fad', 'psd', 'utmos']

def evaluate_folder(gen, ref, metrics, ndb_k=50, fad_model=None, utmos_model=None, seed=0, device='cpu'):
    if set(gen) - set(ref):
        missing = sorted(set(gen) - set(ref))
        raise ValueError(f'{len(missing)} generated clip(s) have no reference, e.g. {missing[0]}')
    names = sorted(gen)
    out = {}
    if 'mrstft' in metrics:
        out['mrstft'] = float(np.mean([mr_stft(gen[n][0], ref[n][0]) for n in names]))
    if 'pesq' in metrics:
        out['pesq'] = float(np.mean([pesq_wb(ref[n][0], gen[n][0], ref[n][1]) for n in names]))
    if 'ndb' in metrics or ('fad' in metrics and fad_model is None):
        ref_f = np.concatenate([logmel_frames(*ref[n]) for n in sorted(ref)])
        gen_f = np.concatenate([logmel_frames(*gen[n]) for n in names])
    if 'ndb' in metrics:
        k = min(ndb_k, len(ref_f))
        out['ndb_k'] = ndb(ref_f, gen_f, k=k, seed=seed)['ndb_k']
    if 'fad' in metrics:
        if fad_model is None:
            out['fad_logmel'] = fad(ref_f, gen_f)
        else:
            emb = lambda d, ns: np.concatenate([model_embeddings(fad_model, *d[n], device=device) for n in ns])
            out['fad'] = fad(emb(ref, sorted(ref)), emb(gen, names))
    if 'psd' in metrics:
        out.update(psd_distance([gen[n] for n in names], [ref[n] for n in sorted(ref)]))
    if 'utmos' in metrics:
        out['utmos'] = float(np.mean([utmos_score(utmos_model, *gen[n], device=device) for n in names]))
    return out

# Per-seed values -> {metric: {mean, std, values}} (std over seeds, population).
def aggregate(per_seed):
    keys = per_seed[0].keys()
    return {k: dict(mean=float(np.mean([s[k] for s in per_seed])), std=float(np.std([s[k] for s in per_seed])),
        values=[s[k] for s in per_seed]) for k in keys}

def evaluate(gen_dir, ref_dir, metrics=('mrstft', 'ndb', 'fad'), ndb_k=50, vggish=None, utmos=None, device='cpu'):
    unknown = set(metrics) - set(ALL_METRICS)
    if unknown:
        raise ValueError(f'Unknown metric(s) {sorted(unknown)}; choose from {", ".join(ALL_METRICS)}')
    fad_model = load_torchscript(vggish, 'FAD with VGGish', device, allow_vggish=True) if ('fad' in metrics and vggish) else None
    utmos_model = load_torchscript(utmos, 'UTMOS', device) if 'utmos' in metrics else None
    if 'pesq' in metrics:
        try:
            import pesq  # noqa: F401
        except ImportError:
            raise MissingDependency('PESQ needs the optional package "pesq": pip install pesq') from None
    ref = read_folder(ref_dir)
    per_seed = []
    for folder in seed_folders(gen_dir):
        gen = read_folder(folder)
        per_seed.append(evaluate_folder(gen, ref, metrics, ndb_k=ndb_k, fad_model=fad_model, utmos_model=utmos_model,
            seed=len(per_seed), device=device))
    return aggregate(per_seed)

#----------------------------------------------------------------------------
# Which metrics can run here: mrstft/ndb/fad/psd always (FAD falls back to the stand-in), pesq
# when the package is installed, utmos when a model is given.

def available_metrics(utmos=None):
    out = ['mrstft', 'ndb', 'fad', 'psd']
    try:
        import pesq  # noqa: F401
        out.insert(1, 'pesq')
    except ImportError:
        pass
    if utmos:
        out.append('utmos')
    return out

def format_table(results):
    keys = []
    for res in results.values():
        keys += [k for k in res if k not in keys]
    lines = ['| run | ' + ' | '.join(keys) + ' |', '|---|' + '---|' * len(keys)]
    for name, res in results.items():
        cells = [f'{res[k]["mean"]:.4f} +- {res[k]["std"]:.4f}' if k in res else '' for k in keys]
        lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)

#----------------------------------------------------------------------------

@click.command(help=__doc__)
@click.option('--gen',      help='Generated folder (WAVs or seed*/ sub-folders); repeatable', metavar='DIR', type=str, multiple=True, required=True)
@click.option('--ref',      help='Reference WAVs [default: <first --gen>/reference]', metavar='DIR', type=str)
@click.option('--metrics',  help='Comma-separated subset of mrstft,pesq,ndb,fad,psd,utmos, or auto (those available here)', metavar='LIST', type=str, default='auto', show_default=True)
@click.option('--ndb-k',    help='NDB: number of K-means bins', metavar='INT', type=click.IntRange(min=2), default=50, show_default=True)
@click.option('--vggish',   help='FAD embedding: VGGish weights (torchvggish .pth) or TorchScript module, path or URL [default: logmel stand-in]', metavar='PATH|URL', type=str)
@click.option('--utmos',    help='UTMOS: TorchScript model (path or URL)', metavar='PATH|URL', type=str)
@click.option('--out',      help='Write the results as JSON here', metavar='FILE', type=str)
@click.option('--device',   help='Device for the embedding models [default: cuda if available, else cpu]', metavar='STR', type=str)
def main(gen, ref, metrics, ndb_k, vggish, utmos, out, device):
    from torch_utils import distributed as dist
    try:
        device = dist.resolve_device(device)
    except ValueError as e:
        raise click.ClickException(str(e))
    metrics = available_metrics(utmos) if metrics == 'auto' else [m.strip() for m in metrics.split(',') if m.strip()]
    ref = ref or os.path.join(gen[0], 'reference')
    results = {}
    try:
        for g in gen:
            results[g] = evaluate(g, ref, metrics, ndb_k=ndb_k, vggish=vggish, utmos=utmos, device=device)
    except (MissingDependency, ValueError, FileNotFoundError) as e:
        raise click.ClickException(str(e))
    print(format_table(results))
    if out:
        os.makedirs(os.path.dirname(out) or '.', exist_ok=True)
        with open(out, 'w') as f:
            json.dump(dict(ref=ref, metrics=metrics, results=results), f, indent=2)

#----------------------------------------------------------------------------

if __name__ == '__main__':
    main()

#----------------------------------------------------------------------------
