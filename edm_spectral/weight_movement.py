"""How far training moved the weights from where it started (fine_tune.py's weight-movement.json,
the audio trainer's closing line): the relative L2 norm of the difference, over all
floating-point tensors and per tensor."""

import torch

import dnnlib

#----------------------------------------------------------------------------
# reference and current: modules or state dicts. The per-tensor reference norm is floored at an
# RMS of 1e-6 per element, so that zero-initialised tensors do not divide by zero. In float64
# on the CPU, whatever the devices of the tensors.

def _state(x):
    return x.state_dict() if isinstance(x, torch.nn.Module) else x

def weight_movement(reference, current):
    ref, new = _state(reference), _state(current)
    diff_sq = ref_sq = 0.0
    per_tensor = []
    for name, r in ref.items():
        if name not in new or not r.is_floating_point():
            continue
        r = r.detach().to('cpu', torch.float64)
        n = new[name].detach().to('cpu', torch.float64)
        d = (n - r).square().sum().item()
        s = r.square().sum().item()
        diff_sq += d
        ref_sq += s
        per_tensor.append((d ** 0.5 / max(s ** 0.5, 1e-6 * r.numel() ** 0.5), name))
    if not per_tensor:
        raise ValueError('the networks share no floating-point tensors')
    worst = max(per_tensor)
    return dnnlib.EasyDict(
        relative_l2=(diff_sq ** 0.5) / max(ref_sq ** 0.5, 1e-12),
        max_tensor_relative_l2=worst[0],
        max_tensor_name=worst[1],
        num_tensors=len(per_tensor),
        num_tensors_changed=sum(1 for rel, _ in per_tensor if rel > 0),
    )

#----------------------------------------------------------------------------
