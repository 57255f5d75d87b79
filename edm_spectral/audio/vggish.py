"""VGGish (Hershey et al. 2017), the standard FAD embedding, written from its published
description so that the PyTorch port's weights (`vggish-10086976.pth` of torchvggish, a plain
state dict) load strictly, plus its log-mel front end:

16 kHz mono -> frames of 400 samples (25 ms) every 160 (10 ms), no padding, periodic Hann,
|rfft_512| -> 64 mel bands 125..7500 Hz (triangles in the mel domain, mel = 1127 ln(1 + f/700),
DC bin zeroed) -> log(mel + 0.01) -> non-overlapping examples of 96 frames [N, 1, 96, 64] ->
VGG (conv 64, pool, conv 128, pool, 2x conv 256, pool, 2x conv 512, pool) -> 3 fully connected
layers (4096, 4096, 128, each with ReLU), flattening the conv output in (H, W, C) order as the
TensorFlow original. The raw 128-d embedding is returned (no PCA/quantisation), as is usual
for FAD. Resampling to 16 kHz uses scipy's polyphase filter (the original uses resampy), so
values can differ slightly from other FAD implementations."""

import numpy as np
import torch

#----------------------------------------------------------------------------

SAMPLE_RATE, WINDOW, HOP, FFT, MELS, FMIN, FMAX, EXAMPLE_FRAMES = 16000, 400, 160, 512, 64, 125.0, 7500.0, 96

def mel_matrix():
    to_mel = lambda f: 1127.0 * np.log(1.0 + np.asarray(f, dtype=np.float64) / 700.0)
    bins_mel = to_mel(np.linspace(0, SAMPLE_RATE / 2, FFT // 2 + 1))
    edges = np.linspace(to_mel(FMIN), to_mel(FMAX), MELS + 2)
    lo, c, hi = edges[:-2], edges[1:-1], edges[2:]
    w = np.maximum(0.0, np.minimum((bins_mel[:, None] - lo) / (c - lo), (hi - bins_mel[:, None]) / (hi - c)))
    w[0, :] = 0.0
    return w.astype(np.float32) # [257, 64]

# 16 kHz waveform [T] -> log-mel examples [N, 1, 96, 64] (N = 0 for clips under 0.975 s).
def log_mel_examples(wave):
    wave = torch.as_tensor(wave, dtype=torch.float32).reshape(-1)
    if len(wave) < WINDOW:
        return torch.zeros([0, 1, EXAMPLE_FRAMES, MELS])
    frames = wave.unfold(0, WINDOW, HOP) * torch.hann_window(WINDOW, periodic=True)
    spec = torch.fft.rfft(frames, n=FFT).abs()
    logmel = torch.log(spec @ torch.from_numpy(mel_matrix()) + 0.01)
    n = (logmel.shape[0] - EXAMPLE_FRAMES) // EXAMPLE_FRAMES + 1 if logmel.shape[0] >= EXAMPLE_FRAMES else 0
    return logmel[:n * EXAMPLE_FRAMES].reshape(n, 1, EXAMPLE_FRAMES, MELS)

#----------------------------------------------------------------------------

class VGGish(torch.nn.Module):
    def __init__(self):
        super().__init__()
        layers, ch = [], 1
        for v in [64, 'M', 128, 'M', 256, 256, 'M', 512, 512, 'M']:
            if v == 'M':
                layers.append(torch.nn.MaxPool2d(2, 2))
            else:
                layers += [torch.nn.Conv2d(ch, v, 3, padding=1), torch.nn.ReLU()]
                ch = v
        self.features = torch.nn.Sequential(*layers)
        self.embeddings = torch.nn.Sequential(torch.nn.Linear(512 * 4 * 6, 4096), torch.nn.ReLU(),
            torch.nn.Linear(4096, 4096), torch.nn.ReLU(), torch.nn.Linear(4096, 128), torch.nn.ReLU())

    # Log-mel examples [N, 1, 96, 64] -> embeddings [N, 128].
    def forward(self, x):
        x = self.features(x).permute(0, 2, 3, 1).reshape(x.shape[0], -1)
        return self.embeddings(x)

    # 16 kHz waveform [T] -> embeddings [N, 128], one per 0.96 s.
    @torch.no_grad()
    def embed(self, wave):
        device = next(self.parameters()).device
        examples = log_mel_examples(wave).to(device)
        if examples.shape[0] == 0:
            return torch.zeros([0, 128])
        return self(examples).cpu()

#----------------------------------------------------------------------------
# Load torchvggish-format weights (a state dict with features.* / embeddings.*; PCA entries,
# if present, are ignored).

def load_vggish(path, device='cpu'):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter('ignore') # torch.load warns when handed a TorchScript archive; the caller falls back to it.
        try:   # memory-mapped: the 290 MB of weights are read as the network uses them
            state = torch.load(path, map_location='cpu', weights_only=True, mmap=True)
        except RuntimeError:   # a file in torch's legacy (pre-1.6, not zip) format cannot be mapped
            state = torch.load(path, map_location='cpu', weights_only=True)
    if not isinstance(state, dict) or 'features.0.weight' not in state:
        raise ValueError(f'{path} is not a VGGish state dict (expected keys features.*, embeddings.*)')
    state = {k: v for k, v in state.items() if k.startswith(('features.', 'embeddings.'))}
    with torch.device('meta'):  # no random init of 72M parameters that the file replaces
        net = VGGish()
    net.load_state_dict(state, strict=True, assign=True)
    return net.eval().requires_grad_(False).to(device)

#----------------------------------------------------------------------------
