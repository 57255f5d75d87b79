"""The per-parameter work of a training step (gradient clean-up, Adam, weight EMA) as a few
multi-tensor (torch._foreach_*) calls instead of a few calls per tensor. Each gives exactly the
bits of the per-parameter loop of EDM: the same element-wise operations in the same order."""

import torch
import torch.optim.optimizer as optimizer_module # where the global step hooks live

#----------------------------------------------------------------------------
# EDM's clean-up of every gradient: NaN -> 0, +-inf -> +-1e5. torch has no foreach nan_to_num
# (and no foreach expression gives its bits), so the gradients are copied, exactly, into one
# flat buffer per device and dtype, cleaned there by one nan_to_num, and the parameters then
# hold views of the buffer. The buffers live as long as this object (one more copy of the
# weights in memory); each view has its parameter's strides (channels-last included).

class GradientCleaner:
    def __init__(self, params):
        groups = dict()
        for param in params:
            groups.setdefault((param.device, param.dtype), []).append(param)
        self._groups = [self._views(group) for group in groups.values()]

    @staticmethod
    def _views(params):
        flat = torch.empty([sum(p.numel() for p in params)], dtype=params[0].dtype, device=params[0].device)
        views, offset = [], 0
        for param in params:
            views.append(flat.as_strided(param.shape, param.stride(), offset))
            offset += param.numel()
        return flat, params, views

    @torch.no_grad()
    def __call__(self):
        for flat, params, views in self._groups:
            present = [(param, view) for param, view in zip(params, views) if param.grad is not None]
            if not present:
                continue
            torch._foreach_copy_([view for _, view in present], [param.grad for param, _ in present])
            torch.nan_to_num(flat, nan=0, posinf=1e5, neginf=-1e5, out=flat)
            for param, view in present:
                param.grad = view

#----------------------------------------------------------------------------
# optimizer.step() for torch.optim.Adam with its plain settings, as torch's multi-tensor
# implementation computes it (on the CPU that also is the per-parameter one, bit for bit), but
# with the bias corrections worked out once instead of reading every parameter's step counter.
# Anything else (other optimizers or settings, hooks, the first step, which creates the state,
# step counters that differ or sit on a device) goes to optimizer.step().

_PLAIN_ADAM = dict(amsgrad=False, weight_decay=0, maximize=False, capturable=False, differentiable=False)

def _is_plain_adam(optimizer):
    if type(optimizer) is not torch.optim.Adam:
        return False
    hooks = [getattr(optimizer, '_optimizer_step_pre_hooks', None), getattr(optimizer, '_optimizer_step_post_hooks', None),
        getattr(optimizer_module, '_global_optimizer_pre_hooks', None), getattr(optimizer_module, '_global_optimizer_post_hooks', None)]
    if any(hooks):
        return False
    for group in optimizer.param_groups:
        if any(group.get(key, value) != value for key, value in _PLAIN_ADAM.items()):
            return False
        if group.get('fused') or group.get('foreach') is False or group.get('decoupled_weight_decay', False):
            return False
        if any(isinstance(group[key], torch.Tensor) for key in ('lr', 'eps')) or any(isinstance(b, torch.Tensor) for b in group['betas']):
            return False
    return True

# The group's parameters with a gradient by (device, dtype), with their state; None when
# torch's own step must run.
def _adam_lists(optimizer, group):
    lists = dict()
    for param in group['params']:
        if param.grad is None:
            continue
        state = optimizer.state.get(param)
        if not state or param.grad.is_sparse or torch.is_complex(param) or state['step'].device.type != 'cpu':
            return None
        entry = lists.setdefault((param.device, param.dtype), dict(params=[], grads=[], exp_avgs=[], exp_avg_sqs=[], steps=[]))
        for key, value in zip(entry, [param, param.grad, state['exp_avg'], state['exp_avg_sq'], state['step']]):
            entry[key].append(value)
    return list(lists.values())

@torch.no_grad()
def adam_step(optimizer):
    if not _is_plain_adam(optimizer):
        optimizer.step()
        return
    plans = [_adam_lists(optimizer, group) for group in optimizer.param_groups]
    if any(plan is None for plan in plans):
        optimizer.step()
        return
    for group, plan in zip(optimizer.param_groups, plans):
        for lists in plan:
            steps = torch.stack(lists['steps'])
            if steps.min() != steps.max(): # step counters on the CPU: no device sync
                optimizer.step()
                return
    for group, plan in zip(optimizer.param_groups, plans):
        beta1, beta2 = group['betas']
        for lists in plan:
            params, grads, exp_avgs, exp_avg_sqs, steps = lists.values()
            torch._foreach_add_(steps, 1)
            step = float(steps[0])
            bias_correction1 = 1 - beta1 ** step
            bias_correction2 = 1 - beta2 ** step
            torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
            torch._foreach_mul_(exp_avg_sqs, beta2)
            torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
            denom = torch._foreach_sqrt(exp_avg_sqs)
            torch._foreach_div_(denom, [bias_correction2 ** 0.5] * len(params))
            torch._foreach_add_(denom, group['eps'])
            torch._foreach_addcdiv_(params, exp_avgs, denom, [(group['lr'] / bias_correction1) * -1] * len(params))

#----------------------------------------------------------------------------
# EMA of the parameters: averaged <- current.lerp(averaged, beta), EDM's expression.

@torch.no_grad()
def update_ema(averaged, current, beta):
    averaged = list(averaged)
    torch._foreach_copy_(averaged, torch._foreach_lerp(list(current), averaged, beta))

#----------------------------------------------------------------------------
