"""Stop requests in a two-rank training loop (a command of the suite's shared launch,
conftest.gloo_runs; tests/test_train_stop_poll.py checks the results). Each rank counts its
steps through the per-step EMA update and the stop polls through the all-reduces of the
one-element flag tensor; rank 1 alone asks to stop after its 5th step, between two polls.
`python stop_poll.py RUN_DIR DATA OUT` writes OUT.<rank> (JSON). The patched functions are
put back afterwards: later commands of the launch run in the same processes."""

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # tests/, for conftest
from conftest import loop_kwargs
from training import training_loop

def main(run_dir, data, out):
    rank = int(os.environ['RANK'])
    steps, stop_polls = [0], [0]
    saved = (training_loop._STOP_POLL_STEPS, training_loop._update_ema, training_loop.dist.should_stop, torch.distributed.all_reduce)
    update_ema, all_reduce = saved[1], saved[3]
    def counting_update(ema, net, beta):
        steps[0] += 1
        update_ema(ema, net, beta)
    def counting_all_reduce(tensor, *args, **kwargs):
        stop_polls[0] += tensor.shape == (1,)
        return all_reduce(tensor, *args, **kwargs)
    training_loop._STOP_POLL_STEPS = 4
    training_loop._update_ema = counting_update
    training_loop.dist.should_stop = lambda: rank == 1 and steps[0] >= 5
    torch.distributed.all_reduce = counting_all_reduce
    try:
        os.makedirs(run_dir, exist_ok=True)
        result = training_loop.training_loop(**loop_kwargs(run_dir, data, batch_size=2, total_kimg=1, kimg_per_tick=1,
            snapshot_ticks=100, state_dump_ticks=100, stop_on_signal=True))
    finally:
        training_loop._STOP_POLL_STEPS, training_loop._update_ema, training_loop.dist.should_stop, torch.distributed.all_reduce = saved
    with open(f'{out}.{rank}', 'w') as f:
        json.dump(dict(cur_nimg=result.cur_nimg, steps=steps[0], polls=stop_polls[0], stopped=result.stopped_early), f)

main(*sys.argv[1:4])
