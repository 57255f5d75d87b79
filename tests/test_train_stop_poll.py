"""Stop requests in multi-process training (issue 11): the ranks compare their requests only
every _STOP_POLL_STEPS steps and at tick ends, never on every step, and all stop after the
same step even when only one rank was asked to stop."""

import json
import os

# The ranks run tests/gloo_workers/stop_poll.py in the suite's shared launch (conftest.gloo_runs):
# each counts its steps and stop polls; rank 1 alone asks to stop after its 5th step.
def test_ranks_poll_stop_requests_and_stop_together(gloo_runs):
    results = [json.load(open(f'{gloo_runs["stop_poll"]}.{rank}')) for rank in range(2)]
    output, run_dir = gloo_runs['outputs']['stop_poll'][0], gloo_runs['stop_poll_run']

    # Polls after step 1 (the first tick ends there), 4 and 8: the request of step 5 is seen at
    # step 8 by both ranks, which stop there with the final snapshot and state.
    assert [r['steps'] for r in results] == [8, 8]
    assert [r['cur_nimg'] for r in results] == [16, 16]
    assert [r['polls'] for r in results] == [3, 3]
    assert all(r['stopped'] for r in results)
    assert 'Stopping early on request' in output
    assert sorted(os.listdir(run_dir)) == ['network-snapshot-000000.016.pkl', 'network-snapshot-000000.pkl', 'stats.jsonl', 'training-state-000000.016.pt']
