"""Memory of this process: resident size, and peaks over a window (CUDA max-allocated, or the
peak resident size on the CPU) for the status line and the benchmarks."""

import os

import torch

#----------------------------------------------------------------------------
# Resident memory (RSS) of this process in GiB.

def rss_gb():
    import psutil
    return psutil.Process(os.getpid()).memory_info().rss / 2**30

#----------------------------------------------------------------------------
# Peak RSS since the last reset_peak_rss(), in GiB. Linux keeps it as VmHWM, which writing 5
# to /proc/self/clear_refs resets; elsewhere the current RSS stands in for it.

def _vm_hwm_gb():
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1]) * 1024 / 2**30
    except OSError:
        pass
    return None

def reset_peak_rss():
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
    except OSError:
        pass

def peak_rss_gb():
    peak = _vm_hwm_gb()
    return rss_gb() if peak is None else max(peak, rss_gb())

#----------------------------------------------------------------------------
# Peak memory of the work between reset_peak(device) and peak_gb(device), in GiB: CUDA
# max-allocated on a CUDA device, the process' peak RSS otherwise.

def reset_peak(device):
    device = torch.device(device)
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        reset_peak_rss()

def peak_gb(device):
    device = torch.device(device)
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2**30
    return peak_rss_gb()

#----------------------------------------------------------------------------
