"""Two Gloo ranks (a command of the suite's shared launch, conftest.gloo_runs; tests/test_distributed.py
checks the results): training_stats sums over ranks and report0 counts rank 0 only; ddp_sync
holds back or runs the gradient all-reduce; check_ddp_consistency compares with rank 0; ranks
that report different statistic names get an error, not a hang. `python two_ranks.py OUT`
writes OUT.<rank> (JSON)."""

import json
import sys

import torch

from torch_utils import distributed as dist, misc, training_stats

def main(): # locals, not module globals: freed before exit, while the process group is alive
    device = dist.init('cpu')
    rank = dist.get_rank()
    result = dict(rank=rank, world=dist.get_world_size(), device=str(device))
    c = training_stats.Collector(regex='Loss/.*')
    training_stats.report('Loss/x', torch.full([rank + 1], float(rank + 1))) # rank 0: [1], rank 1: [2, 2]
    training_stats.report0('Loss/only0', 5.0 + rank)
    c.update()
    result.update(num=c.num('Loss/x'), mean=c.mean('Loss/x'), std=c.std('Loss/x'),
        num0=c.num('Loss/only0'), mean0=c.mean('Loss/only0'))

    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    misc.check_ddp_consistency(net)
    ddp = torch.nn.parallel.DistributedDataParallel(net)
    with misc.ddp_sync(ddp, sync=False):
        ddp(torch.ones(1, 3) * (rank + 1)).sum().backward() # no all-reduce: grads differ
    result['grad_local'] = net.weight.grad[0, 0].item()
    net.weight.grad = None
    with misc.ddp_sync(ddp, sync=True):
        ddp(torch.ones(1, 3) * (rank + 1)).sum().backward() # averaged over ranks
    result['grad_synced'] = net.weight.grad[0, 0].item()
    with torch.no_grad():
        net.bias.add_(rank)
    try:
        misc.check_ddp_consistency(net)
        result['mismatch_detected'] = False
    except AssertionError:
        result['mismatch_detected'] = True

    # Ranks that report different names get a clear error instead of a hang.
    training_stats.report('Loss/extra_rank%d' % rank, 1.0)
    try:
        c.update()
        result['name_check'] = False
    except RuntimeError as e:
        result['name_check'] = 'different statistic names' in str(e)
    dist.barrier()
    with open(f'{sys.argv[1]}.{rank}', 'w') as f:
        json.dump(result, f)

# The statistics registry is global to the process: drop the names reported here, which later
# commands of the launch (training loops with their own names) do not report.
known = set(training_stats._unsynced) | set(training_stats._totals)
try:
    main()
finally:
    for registry in (training_stats._unsynced, training_stats._totals):
        for name in set(registry) - known:
            del registry[name]
dist.shutdown()
