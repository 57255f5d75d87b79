"""torch_utils.memory.TickPeaks: the status line's peaks of a tick. On CUDA (simulated here with
a scripted peak counter) stepmem covers the tick's steps only, while gpumem and reserved keep
EDM's meaning, the peak since the previous status line, that tick's maintenance included. On
the CPU stepmem is the peak resident size."""

import torch

from torch_utils import memory

class FakeCudaCounter:
    def __init__(self):
        self.allocated = self.reserved = 0.0   # GiB since the last reset
        self.resets = 0
    def use(self, allocated, reserved):
        self.allocated, self.reserved = max(self.allocated, allocated), max(self.reserved, reserved)
    def reset(self, device=None):
        self.allocated = self.reserved = 0.0
        self.resets += 1

def test_cuda_step_peak_excludes_maintenance_and_gpumem_keeps_it(monkeypatch):
    counter = FakeCudaCounter()
    monkeypatch.setattr(torch.cuda, 'max_memory_allocated', lambda device=None: counter.allocated * 2**30)
    monkeypatch.setattr(torch.cuda, 'max_memory_reserved', lambda device=None: counter.reserved * 2**30)
    monkeypatch.setattr(torch.cuda, 'reset_peak_memory_stats', counter.reset)
    peaks = memory.TickPeaks('cuda')
    counter.use(3.0, 4.0)                          # tick 0's steps (and the set-up before them)
    assert peaks.steps_done() == (3.0, 3.0, 4.0)
    counter.use(7.0, 8.0)                          # tick 0's maintenance: a snapshot with a sample grid
    peaks.maintenance_done()
    counter.use(2.0, 5.0)                          # tick 1's steps
    assert peaks.steps_done() == (2.0, 7.0, 8.0)   # stepmem: the steps; gpumem, reserved: EDM's window
    peaks.maintenance_done()                       # a tick without maintenance work
    counter.use(1.0, 1.0)
    assert peaks.steps_done() == (1.0, 1.0, 1.0)
    assert counter.resets == 5   # at each status line and at each end of maintenance

def test_cpu_reports_peak_rss_and_no_gpu_memory():
    peaks = memory.TickPeaks('cpu')
    stepmem, gpumem, reserved = peaks.steps_done()
    assert stepmem >= memory.rss_gb() * 0.5 and (gpumem, reserved) == (0.0, 0.0)
    peaks.maintenance_done()
    assert peaks.steps_done()[0] > 0
