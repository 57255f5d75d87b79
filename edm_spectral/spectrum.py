"""Radially averaged power spectra of image sets, 1-D power spectral densities of waveforms,
log-scale comparison plots and a scalar spectral distance.

Conventions (the same everywhere in this module):
- uint8 images are mapped to [-1, 1] with x / 127.5 - 1 (the training range); float images are
  taken as they are (generator outputs are already in [-1, 1]).
- Each image channel has its spatial mean removed before the FFT by default, so the DC bin is 0
  and the spectrum describes structure, not brightness (`mean_remove=False` keeps it).
- Power is |FFT2(x)|^2 with the orthonormal FFT, so the PSD summed over all frequencies equals
  the image's energy (Parseval), independent of the resolution's normalisation.
- After fftshift, each frequency (ky, kx) falls in the integer radial bin round(r), with
  r = sqrt((ky/H)^2 + (kx/W)^2) * min(H, W) (the plain pixel distance from the centre for square
  images). Bins 0 .. min(H, W) // 2 are kept: the corners beyond the Nyquist circle hold only
  diagonal frequencies. Each bin is the mean power over its frequencies, then averaged over
  images and channels. `freqs` are in cycles per pixel (0 .. 0.5)."""

import glob
import json
import os

import click
import numpy as np
import torch

from training.sampling import parse_int_list

#----------------------------------------------------------------------------
# Input normalisation: tensors/arrays of any supported layout to float64 [N, C, H, W].

def _to_float_images(images):
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not isinstance(images, torch.Tensor):
        raise TypeError(f'Expected a tensor or array of images, got {type(images).__name__}')
    if images.ndim == 2:
        images = images[None, None]   # [H, W]: one grayscale image
    elif images.ndim == 3:
        images = images[:, None]      # [N, H, W]: a batch of grayscale images
    if images.ndim != 4:
        raise ValueError(f'Expected images of shape [N, C, H, W], [N, H, W] or [H, W], got {list(images.shape)}')
    if images.shape[0] == 0 or images.shape[2] < 2 or images.shape[3] < 2:
        raise ValueError(f'Need at least one image of at least 2x2 pixels, got shape {list(images.shape)}')
    if images.dtype == torch.uint8:
        return images.to(torch.float64) / 127.5 - 1
    if not images.dtype.is_floating_point:
        raise TypeError(f'Images must be uint8 or floating point, got {images.dtype}')
    return images.to(torch.float64)

#----------------------------------------------------------------------------
# Power |FFT|^2 (orthonormal) of every image channel, [N, C, H, W] float64, zero
# frequency at the centre. With mean_remove each channel's mean is subtracted
# first, so the DC bin is exactly zero (set, not left at round-off).

def power_spectrum_2d(images, mean_remove=True):
    x = _to_float_images(images)
    if mean_remove:
        x = x - x.mean(dim=(2, 3), keepdim=True)
    power = torch.fft.fftshift(torch.fft.fft2(x, norm='ortho').abs().square(), dim=(2, 3))
    if mean_remove:
        power[:, :, x.shape[2] // 2, x.shape[3] // 2] = 0
    return power

#----------------------------------------------------------------------------
# Radial bin index of every (shifted) frequency, and the number of kept bins.

def radial_bins(height, width, device='cpu'):
    ky = torch.arange(height, device=device, dtype=torch.float64) - height // 2
    kx = torch.arange(width, device=device, dtype=torch.float64) - width // 2
    r = torch.sqrt((ky[:, None] / height) ** 2 + (kx[None, :] / width) ** 2) * min(height, width)
    num_bins = min(height, width) // 2 + 1
    return torch.round(r).to(torch.int64), num_bins

#----------------------------------------------------------------------------
# Streaming accumulator: feed image batches, read the averaged spectrum at the end.

class RadialSpectrumAccumulator:
    def __init__(self, mean_remove=True):
        self.mean_remove = mean_remove
        self.shape = None       # (H, W) of the first batch; every later batch must match
        self.sums = None        # [num_bins] float64 sum over images*channels of bin means
        self.count = 0          # number of image channels seen

    def update(self, images):
        x = _to_float_images(images)
        if self.shape is None:
            self.shape = tuple(x.shape[2:])
            self.bins, self.num_bins = radial_bins(*self.shape)
            keep = self.bins < self.num_bins
            self.bin_index = self.bins[keep]
            self.keep = keep
            self.bin_count = torch.bincount(self.bin_index, minlength=self.num_bins).to(torch.float64)
            self.sums = torch.zeros(self.num_bins, dtype=torch.float64)
        elif tuple(x.shape[2:]) != self.shape:
            raise ValueError(f'All images must have the same resolution: got {list(x.shape[2:])} after {list(self.shape)}')
        power = power_spectrum_2d(x.cpu(), self.mean_remove)
        power = power.sum(dim=(0, 1))   # sum over images and channels first: binning is linear
        self.sums += torch.bincount(self.bin_index, weights=power[self.keep], minlength=self.num_bins) / self.bin_count
        self.count += x.shape[0] * x.shape[1]

    def result(self):
        if self.count == 0:
            raise ValueError('No images were given')
        freqs = np.arange(self.num_bins, dtype=np.float64) / min(self.shape)
        return freqs, (self.sums / self.count).numpy()

#----------------------------------------------------------------------------
# Radially averaged power spectrum of a set of images.
# `images`: a tensor/array ([N, C, H, W], [N, H, W] or [H, W]) or an iterable of such batches.

def radial_power_spectrum(images, mean_remove=True, chunk=256):
    acc = RadialSpectrumAccumulator(mean_remove=mean_remove)
    if isinstance(images, (torch.Tensor, np.ndarray)):
        if images.ndim < 3 or len(images) <= chunk:
            acc.update(images)
        else:
            for start in range(0, len(images), chunk):   # bounded float64 memory for large sets
                acc.update(images[start : start + chunk])
    else:
        for batch in images:
            acc.update(batch)
    return acc.result()

#----------------------------------------------------------------------------
# Averaged one-sided power spectral density of waveforms (Welch's method).
# Frames of n_fft samples every `hop` samples (default n_fft // 2), each with its mean removed
# and a periodic Hann window applied; |rfft|^2 / (sample_rate * sum(window^2)), doubled for the
# bins other than DC and Nyquist, averaged over frames, channels and waveforms. For one
# waveform this equals scipy.signal.welch(x, fs, window='hann', nperseg=n_fft,
# noverlap=n_fft-hop). Waveforms shorter than n_fft are zero-padded to one frame.
# `waveforms`: [T], [N, T] or [N, C, T]; uint8 is rejected (not audio). Frequencies are in Hz
# if `sample_rate` is given, else in cycles per sample.

def power_spectral_density_1d(waveforms, n_fft=1024, hop=None, sample_rate=None):
    x = torch.as_tensor(np.asarray(waveforms) if not isinstance(waveforms, torch.Tensor) else waveforms)
    if not x.dtype.is_floating_point:
        raise TypeError(f'Waveforms must be floating point, got {x.dtype}')
    if x.ndim == 1:
        x = x[None]
    elif x.ndim == 3:
        x = x.reshape(-1, x.shape[-1])
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f'Expected waveforms of shape [T], [N, T] or [N, C, T], got {list(np.shape(waveforms))}')
    n_fft = int(n_fft)
    hop = n_fft // 2 if hop is None else int(hop)
    if n_fft < 2 or hop < 1:
        raise ValueError(f'Need n_fft >= 2 and hop >= 1, got n_fft={n_fft}, hop={hop}')
    fs = 1.0 if sample_rate is None else float(sample_rate)
    x = x.to(torch.float64).cpu()
    if x.shape[1] < n_fft:
        x = torch.nn.functional.pad(x, [0, n_fft - x.shape[1]])
    frames = x.unfold(1, n_fft, hop)                                   # [N, F, n_fft]
    frames = frames - frames.mean(dim=-1, keepdim=True)
    window = torch.hann_window(n_fft, periodic=True, dtype=torch.float64)
    power = torch.fft.rfft(frames * window, dim=-1).abs().square() / (fs * window.square().sum())
    power[..., 1:(n_fft + 1) // 2] *= 2                                # one-sided: fold negative frequencies
    psd = power.mean(dim=(0, 1)).numpy()
    freqs = np.fft.rfftfreq(n_fft, d=1 / fs)
    return freqs, psd

#----------------------------------------------------------------------------
# Scalar distance between two spectra: mean |log10 psd - log10 psd_ref| over the bins, excluding
# DC (bin 0, zero after mean removal), overall and over the high-frequency half (bins above half
# of the highest kept frequency). Powers are floored at `rel_floor` times the largest power of
# either spectrum, so round-off-level bins (e.g. beside a pure tone) do not dominate.

def spectral_distance(psd, psd_ref, rel_floor=1e-10):
    psd = np.asarray(psd, dtype=np.float64)
    psd_ref = np.asarray(psd_ref, dtype=np.float64)
    if psd.ndim != 1 or psd.shape != psd_ref.shape:
        raise ValueError(f'Spectra must be 1-D with the same number of bins (same resolution or n_fft), got {psd.shape} and {psd_ref.shape}')
    if psd.shape[0] < 3:
        raise ValueError(f'Need at least 3 frequency bins, got {psd.shape[0]}')
    floor = max(rel_floor * max(psd.max(), psd_ref.max()), np.finfo(np.float64).tiny)
    diff = np.abs(np.log10(np.maximum(psd, floor)) - np.log10(np.maximum(psd_ref, floor)))[1:]
    k = np.arange(1, psd.shape[0])
    high = diff[k > (psd.shape[0] - 1) / 2]
    return dict(overall=float(diff.mean()), high=float(high.mean()))

#----------------------------------------------------------------------------
# Log-scale plot of several spectra, the reference drawn as a dashed black line (paper Fig. 2).
# `spectra`: {name: (freqs, psd)}. Uses matplotlib's Agg canvas directly (no global backend).

def plot_spectra(spectra, path, ref_name=None, title='Radially averaged power spectrum', xlabel='frequency (cycles/pixel)', ylabel='power'):
    from matplotlib.figure import Figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    if not spectra:
        raise ValueError('No spectra to plot')
    if ref_name is not None and ref_name not in spectra:
        raise ValueError(f'Reference {ref_name!r} is not one of the spectra: {sorted(spectra)}')
    fig = Figure(figsize=(6, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for name, (freqs, psd) in spectra.items():
        freqs, psd = np.asarray(freqs), np.asarray(psd)
        ok = psd > 0   # log scale: drop empty bins (the DC bin after mean removal)
        style = dict(color='black', linestyle='--', linewidth=2) if name == ref_name else dict(linewidth=1.5)
        ax.semilogy(freqs[ok], psd[ok], label=name, marker='o', markersize=3, **style) # markers: dropped bins stay visible as gaps between points
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which='both', alpha=0.3)
    ax.legend()
    fig.tight_layout()
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=120)
    return path

#----------------------------------------------------------------------------
# Image sources for the CLI: a folder or zip (via ImageFolderDataset), an .npy/.npz array,
# or a network pickle with seeds.

def iter_dataset_images(path, num=None, seed=0, batch=256):
    from training.dataset import ImageFolderDataset
    try:
        dataset = ImageFolderDataset(path=path, max_size=num, random_seed=seed)
    except (ValueError, OSError) as e:
        raise click.ClickException(str(e))
    if num is not None and len(dataset) < num:
        raise click.ClickException(f'{path} holds only {len(dataset)} images, fewer than --num={num}')
    for start in range(0, len(dataset), batch):
        yield torch.from_numpy(np.stack([dataset[i][0] for i in range(start, min(start + batch, len(dataset)))]))

def load_array_images(path):
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as e:
        raise click.ClickException(f'{path} is not a readable .npy/.npz file: {type(e).__name__}: {e}')
    if isinstance(data, np.lib.npyio.NpzFile):
        keys = list(data.keys())
        if len(keys) != 1:
            raise click.ClickException(f'{path}: expected one array in the .npz, found {keys}')
        data = data[keys[0]]
    return torch.from_numpy(data)

# `option` names the command-line option in messages. A missing, corrupt or refused pickle is
# one clear error (never unpickled with code execution unless trust_code).
def generate_network_images(network, seeds, device, batch=64, option='--images', trust_code=False, **sampler_kwargs):
    from edm_spectral.cli import load_snapshot_option
    from training.sampling import generate_images
    net = load_snapshot_option(network, option, trust_code=trust_code, device=device)['ema']
    return generate_images(net, seeds=seeds, device=device, max_batch_size=batch, **sampler_kwargs)

def spectrum_of_source(source, num=None, seed=0, mean_remove=True, seeds=None, device='cpu', batch=64, steps=None, option='--images', trust_code=False):
    if source.endswith('.pkl'):
        if seeds is None:
            raise click.ClickException(f'{source} is a network: give --seeds to generate images from it')
        sampler_kwargs = dict(num_steps=steps) if steps is not None else {}
        images = generate_network_images(source, seeds, device, batch=batch, option=option, trust_code=trust_code, **sampler_kwargs)
        return radial_power_spectrum(images, mean_remove=mean_remove)
    if not os.path.exists(source):
        raise click.ClickException(f'No such file or directory: {source}')
    if source.endswith(('.npy', '.npz')):
        return radial_power_spectrum(load_array_images(source), mean_remove=mean_remove)
    return radial_power_spectrum(iter_dataset_images(source, num=num, seed=seed), mean_remove=mean_remove)

#----------------------------------------------------------------------------
# Audio sources for the CLI: a .wav file or a folder of them (the audio data's reader, every
# channel, unclipped), each averaged.

def psd_of_audio_source(source, n_fft=1024, hop=None):
    from edm_spectral.audio.data import read_wav
    files = sorted(glob.glob(os.path.join(source, '**', '*.wav'), recursive=True)) if os.path.isdir(source) else [source]
    if not files or not os.path.isfile(files[0]):
        raise click.ClickException(f'No .wav files found at {source}')
    sums, rate = None, None
    for f in files:
        try:
            wav, sr = read_wav(f, expected_rate=rate, all_channels=True, clip=False)
        except (OSError, ValueError) as e:
            raise click.ClickException(str(e))
        rate = sr
        freqs, psd = power_spectral_density_1d(wav, n_fft=n_fft, hop=hop, sample_rate=sr)
        sums = psd if sums is None else sums + psd
    return freqs, sums / len(files)

#----------------------------------------------------------------------------

def _name_of(path):
    return os.path.splitext(os.path.basename(os.path.normpath(path)))[0]

def _write_json(path, obj):
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        json.dump(obj, f, indent=2)

#----------------------------------------------------------------------------

@click.group()
def cmdline():
    """Power spectra of image sets and waveforms, plots against a reference, spectral distances.

    \b
    Examples:
    python -m edm_spectral.spectrum compute --images=datasets/cifar10-32x32.zip --dest=out/cifar-psd.json
    python -m edm_spectral.spectrum compare --ref=datasets/cifar10-32x32.zip --num=10000 \\
        --set=out/baseline --set=out/spectral --plot=out/spectra.png --json=out/distances.json
    python -m edm_spectral.spectrum compare --ref=edm-cifar10-32x32-uncond-vp.pkl --seeds=0-999 \\
        --set=fine-tuned.pkl --plot=out/spectra.png
    python -m edm_spectral.spectrum compare-audio --ref=data/LJSpeech-1.1/wavs --set=out/wavs --plot=out/psd.png
    """

#----------------------------------------------------------------------------

_source_help = 'Image folder, zip, .npy/.npz array (uint8 NCHW or float in [-1,1]), or network .pkl (with --seeds)'

# Options that say how to read (or generate) an image set, shared by compute and compare.
def _source_options(f):
    options = [
        click.option('--num',       help='Use a random subset of this many images per folder/zip  [default: all]', metavar='INT', type=click.IntRange(min=1)),
        click.option('--seed',      help='Random seed of the subsets', metavar='INT', type=int, default=0, show_default=True),
        click.option('--seeds',     help='Seeds for network sources, e.g. 0-999', metavar='LIST', type=parse_int_list),
        click.option('--steps',     help='Sampling steps for network sources  [default: the EDM sampler\'s 18]', metavar='INT', type=click.IntRange(min=1)),
        click.option('--batch',     help='Generation batch size for network sources', metavar='INT', type=click.IntRange(min=1), default=64, show_default=True),
        click.option('--keep-mean', help='Do not remove each image\'s mean before the FFT', is_flag=True),
        click.option('--device',    help='Device for generating from networks  [default: cuda if available]', metavar='STR', type=str),
        click.option('--trust-code', help='Load network pickles with plain pickle.load, executing the code stored in them (only for files you trust). Default: safe weights-only loading', is_flag=True),
    ]
    for option in reversed(options):
        f = option(f)
    return f

# The keyword arguments of spectrum_of_source() for those options.
def _source_kwargs(num, seed, seeds, steps, batch, keep_mean, device, trust_code):
    return dict(num=num, seed=seed, mean_remove=not keep_mean, seeds=seeds, device=_resolve_device(device), batch=batch, steps=steps,
        trust_code=trust_code)

# Output files are checked before any spectrum is computed: {option: path or None}.
def _check_outputs(paths):
    import dnnlib
    for option, path in paths.items():
        if path is not None:
            try:
                dnnlib.util.check_writable_file(path, option)
            except dnnlib.util.UnwritablePathError as e:
                raise click.ClickException(str(e))

@cmdline.command()
@click.option('--images', 'source', help=_source_help, metavar='PATH', type=str, required=True)
@click.option('--dest',             help='Output JSON with freqs and psd', metavar='JSON', type=str, required=True)
@_source_options
def compute(source, dest, **source_opts):
    """Radially averaged power spectrum of one image set, written as JSON."""
    _check_outputs({'--dest': dest})
    kw = _source_kwargs(**source_opts)
    freqs, psd = spectrum_of_source(source, option='--images', **kw)
    _write_json(dest, dict(source=source, freqs=freqs.tolist(), psd=psd.tolist(), mean_removed=kw['mean_remove']))
    print(f'Wrote {len(psd)} radial bins to {dest}')

#----------------------------------------------------------------------------

@cmdline.command()
@click.option('--ref',          help='Reference: ' + _source_help, metavar='PATH', type=str, required=True)
@click.option('--set', 'sets',  help='Set to compare (repeatable), same kinds as --ref', metavar='PATH', type=str, multiple=True, required=True)
@click.option('--plot',         help='Output PNG of all spectra', metavar='PNG', type=str)
@click.option('--json', 'dest', help='Output JSON with spectra and distances', metavar='JSON', type=str)
@_source_options
def compare(ref, sets, plot, dest, **source_opts):
    """Compare the spectra of several image sets with a reference (plot + distances)."""
    _check_outputs({'--plot': plot, '--json': dest})
    kw = _source_kwargs(**source_opts)
    spectra = {'reference': spectrum_of_source(ref, option='--ref', **kw)}
    for s in sets:
        spectra[_unique_name(_name_of(s), spectra)] = spectrum_of_source(s, option='--set', **kw)
    _report(spectra, plot, dest, xlabel='frequency (cycles/pixel)', title='Radially averaged power spectrum')

#----------------------------------------------------------------------------

@cmdline.command('compare-audio')
@click.option('--ref',          help='Reference .wav file or folder of .wav files', metavar='PATH', type=str, required=True)
@click.option('--set', 'sets',  help='Set to compare (repeatable): .wav file or folder', metavar='PATH', type=str, multiple=True, required=True)
@click.option('--plot',         help='Output PNG of all PSDs', metavar='PNG', type=str)
@click.option('--json', 'dest', help='Output JSON with PSDs and distances', metavar='JSON', type=str)
@click.option('--n-fft',        help='Welch frame length', metavar='INT', type=click.IntRange(min=2), default=1024, show_default=True)
@click.option('--hop',          help='Welch hop  [default: n_fft/2]', metavar='INT', type=click.IntRange(min=1))
def compare_audio(ref, sets, plot, dest, n_fft, hop):
    """Compare averaged power spectral densities of waveform sets with a reference."""
    _check_outputs({'--plot': plot, '--json': dest})
    spectra = {'reference': psd_of_audio_source(ref, n_fft=n_fft, hop=hop)}
    for s in sets:
        spectra[_unique_name(_name_of(s), spectra)] = psd_of_audio_source(s, n_fft=n_fft, hop=hop)
    _report(spectra, plot, dest, xlabel='frequency (Hz)', title='Power spectral density (Welch)')

#----------------------------------------------------------------------------

def _resolve_device(device):
    from torch_utils import distributed as dist
    try:
        return dist.resolve_device(device)
    except ValueError as e:
        raise click.ClickException(str(e))

def _unique_name(name, taken):
    out, i = name, 1
    while out in taken:
        i += 1
        out = f'{name}-{i}'
    return out

def _report(spectra, plot, dest, xlabel, title):
    ref = spectra['reference']
    distances = {}
    for name, (freqs, psd) in spectra.items():
        if name == 'reference':
            continue
        if psd.shape != ref[1].shape:
            raise click.ClickException(f'{name}: {len(psd)} frequency bins vs {len(ref[1])} in the reference (different resolution or n_fft)')
        distances[name] = spectral_distance(psd, ref[1])
        print(f'{name:30s} overall {distances[name]["overall"]:.4f}   high-frequency half {distances[name]["high"]:.4f}')
    if plot:
        plot_spectra(spectra, plot, ref_name='reference', xlabel=xlabel, title=title)
        print(f'Wrote {plot}')
    if dest:
        _write_json(dest, dict(distances=distances, spectra={n: dict(freqs=f.tolist(), psd=p.tolist()) for n, (f, p) in spectra.items()}))
        print(f'Wrote {dest}')
    return distances

#----------------------------------------------------------------------------

if __name__ == '__main__':
    cmdline()

#----------------------------------------------------------------------------
