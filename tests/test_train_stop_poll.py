"""Stop requests in multi-process training (issue 11): the ranks compare their requests only
every _STOP_POLL_STEPS steps and at tick ends, never on every step, and all stop after the
same step even when only one rank was asked to stop."""

import json
import os
import subprocess
import sys
import textwrap

from conftest import REPO, child_env, make_dataset

# Each rank counts the steps through the per-step EMA update and the stop all-reduces through
# the flag tensor's shape; rank 1 alone asks to stop after its 5th step, between two polls.
_WORKER = textwrap.dedent('''
    import json, sys
    sys.path[:0] = [{root!r}, {tests!r}]
    import torch
    from torch_utils import distributed as dist
    from training import training_loop
    from conftest import loop_kwargs

    def main():
        training_loop._STOP_POLL_STEPS = 4
        rank = int(__import__('os').environ['RANK'])
        steps, stop_polls = [0], [0]
        update_ema = training_loop._update_ema
        def counting_update(ema, net, beta):
            steps[0] += 1
            update_ema(ema, net, beta)
        training_loop._update_ema = counting_update
        training_loop.dist.should_stop = lambda: rank == 1 and steps[0] >= 5
        all_reduce = torch.distributed.all_reduce
        def counting_all_reduce(tensor, *args, **kwargs):
            stop_polls[0] += tensor.shape == (1,)
            return all_reduce(tensor, *args, **kwargs)
        torch.distributed.all_reduce = counting_all_reduce
        kwargs = loop_kwargs({run_dir!r}, {data!r}, batch_size=2, total_kimg=1, kimg_per_tick=1,
            snapshot_ticks=100, state_dump_ticks=100, stop_on_signal=True)
        result = training_loop.training_loop(**kwargs)
        with open({out!r} + f'.{{rank}}', 'w') as f:
            json.dump(dict(cur_nimg=result.cur_nimg, steps=steps[0], polls=stop_polls[0], stopped=result.stopped_early), f)
        dist.shutdown()

    main()
''')

def test_ranks_poll_stop_requests_and_stop_together(tmp_path, free_port):
    data = make_dataset(str(tmp_path / 'data' / 'tiny-8x8'))
    run_dir, out = str(tmp_path / 'run'), str(tmp_path / 'result')
    os.makedirs(run_dir)
    script = tmp_path / 'worker.py'
    script.write_text(_WORKER.format(root=REPO, tests=os.path.join(REPO, 'tests'), run_dir=run_dir, data=data, out=out))
    procs = []
    for rank in range(2):
        env = child_env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE='2', MASTER_ADDR='127.0.0.1', MASTER_PORT=str(free_port))
        procs.append(subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    results = [json.load(open(f'{out}.{rank}')) for rank in range(2)]

    # Polls after step 1 (the first tick ends there), 4 and 8: the request of step 5 is seen at
    # step 8 by both ranks, which stop there with the final snapshot and state.
    assert [r['steps'] for r in results] == [8, 8]
    assert [r['cur_nimg'] for r in results] == [16, 16]
    assert [r['polls'] for r in results] == [3, 3]
    assert all(r['stopped'] for r in results)
    assert 'Stopping early on request' in outputs[0]
    assert sorted(os.listdir(run_dir)) == ['network-snapshot-000000.016.pkl', 'network-snapshot-000000.pkl', 'stats.jsonl', 'training-state-000000.016.pt']
