"""Memory of this process: resident size, and peaks over a window (CUDA max-allocated, or the
peak resident size on the CPU) for the status line (TickPeaks) and the benchmarks."""

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
# The status line's peaks of one tick. EDM's gpumem and reserved cover everything since the
# previous status line, that tick's maintenance (snapshot, grid, training state) included;
# stepmem covers this tick's steps only. CUDA keeps one peak counter, so the maintenance's
# peaks are read, and the counter reset, when the maintenance ends, and the status line
# reports the larger of the two. On the CPU stepmem is the peak RSS and the GPU fields are 0.

class TickPeaks:
    def __init__(self, device):
        self.device = torch.device(device)
        self._maintenance = (0.0, 0.0)

    def _take_cuda(self):
        peaks = (torch.cuda.max_memory_allocated(self.device) / 2**30, torch.cuda.max_memory_reserved(self.device) / 2**30)
        torch.cuda.reset_peak_memory_stats(self.device)
        return peaks

    # At the status line: (stepmem, gpumem, reserved) in GiB.
    def steps_done(self):
        if self.device.type != 'cuda':
            return peak_rss_gb(), 0.0, 0.0
        allocated, reserved = self._take_cuda()
        return allocated, max(allocated, self._maintenance[0]), max(reserved, self._maintenance[1])

    # When the tick's maintenance ends: the next window holds the next tick's steps only.
    def maintenance_done(self):
        if self.device.type == 'cuda':
            self._maintenance = self._take_cuda()
        else:
            reset_peak_rss()

#----------------------------------------------------------------------------
