"""Opt-in fast paths of the training step. Each one changes the numerics: results stay close
to those of the exact path, not equal to them. All are off by default; the options form one
plain dict (the training loop's fast_paths argument):

    amp='bf16'          the denoiser under torch.autocast in bfloat16; its output, the loss and
                        the spectral term are float32
    channels_last       weights in channels-last (NHWC) layout, and with them the activations
                        (the images stay as they are, so the loss draws the same noise)
    compile             torch.compile of the denoiser with this backend ('inductor', or 'eager'
                        to trace without generating code); True means 'inductor'
    fused_adam          torch's fused Adam kernel, where torch has one for the device
    fused_attention     attention through torch.nn.functional.scaled_dot_product_attention

Snapshots and the EMA stay in the exact form (contiguous, the built-in attention)."""

import copy
import importlib.util
import os
import shutil

import torch

from training import networks

DEFAULTS = dict(amp=None, channels_last=False, compile=None, fused_adam=False, fused_attention=False)
AMP_DTYPES = {'bf16': torch.bfloat16}
COMPILE_BACKENDS = ('inductor', 'eager')

#----------------------------------------------------------------------------
# The options, complete and checked for the device (ValueError for a bad value, RuntimeError
# for what the machine lacks).

def check_fast_paths(fast_paths, device):
    fast_paths = dict(fast_paths or {})
    unknown = sorted(set(fast_paths) - set(DEFAULTS))
    if unknown:
        raise ValueError(f'fast_paths: unknown option(s) {", ".join(unknown)}; expected {", ".join(DEFAULTS)}')
    options = dict(DEFAULTS, **fast_paths)
    device = torch.device(device)
    if options['amp'] is not None:
        if options['amp'] not in AMP_DTYPES:
            raise ValueError(f'fast_paths: amp={options["amp"]!r}; expected one of {", ".join(AMP_DTYPES)} or None')
        if device.type == 'cuda' and not torch.cuda.is_bf16_supported():
            raise RuntimeError(f'amp=bf16: {torch.cuda.get_device_name(device)} has no bfloat16 support')
    if options['compile'] is True:
        options['compile'] = 'inductor'
    if options['compile'] in (False, None, ''):
        options['compile'] = None
    elif options['compile'] not in COMPILE_BACKENDS:
        raise ValueError(f'fast_paths: compile={options["compile"]!r}; expected one of {", ".join(COMPILE_BACKENDS)}')
    else:
        check_compiler(options['compile'], device)
    if options['fused_adam'] and not fused_adam_supported(device):
        raise RuntimeError(f'fused_adam: torch {torch.__version__} has no fused Adam for {device.type} tensors')
    return options

# Whether any fast path is on.
def any_enabled(options):
    return any(options.get(key, value) != value for key, value in DEFAULTS.items())

#----------------------------------------------------------------------------
# torch.compile needs a code generator: inductor compiles C++ on the CPU and Triton kernels on
# CUDA. Say so up front instead of failing in the first step with a long traceback.

def check_compiler(backend, device):
    if not hasattr(torch, 'compile'):
        raise RuntimeError(f'compile: torch {torch.__version__} has no torch.compile; run without --compile')
    if backend != 'inductor':
        return
    if torch.device(device).type == 'cuda':
        if importlib.util.find_spec('triton') is None:
            raise RuntimeError('compile: torch.compile (inductor) on CUDA needs Triton, which is not installed; '
                'install it (pip install triton) or run without --compile')
        return
    candidates = [os.environ.get('CXX'), 'g++', 'clang++', 'c++']
    if not any(c and shutil.which(c) for c in candidates):
        raise RuntimeError('compile: torch.compile (inductor) on the CPU needs a C++ compiler, and none was found '
            '(set CXX or install g++); run without --compile')

def fused_adam_supported(device):
    try:
        probe = torch.zeros([1], device=device, requires_grad=True)
        torch.optim.Adam([probe], fused=True)
    except (RuntimeError, ValueError, TypeError):
        return False
    return True

#----------------------------------------------------------------------------
# The trained network in the fast form, in place: layout and attention.

def prepare_network(net, options):
    if options['channels_last']:
        net.to(memory_format=torch.channels_last)
    if options['fused_attention']:
        networks.set_fused_attention(net, True)
    return net

# A copy in the exact form (the EMA, snapshots): contiguous weights, the built-in attention.
# For a network without fast paths this is copy.deepcopy.
def exact_copy(module):
    module = copy.deepcopy(module)
    if isinstance(module, torch.nn.Module):
        module.to(memory_format=torch.contiguous_format)
        networks.set_fused_attention(module, False)
    return module

#----------------------------------------------------------------------------
# Optimizer arguments: fused Adam when asked.

def optimizer_kwargs(kwargs, options):
    kwargs = dict(kwargs)
    if options['fused_adam']:
        kwargs['fused'] = True
    return kwargs

# After a resume, the Adam implementation of the options, whatever the state was saved with
# (load_state_dict restores the saved 'fused' flag): fused keeps the step counters on the
# device, the others on the CPU. Nothing changes when saved and asked agree.
def settle_adam(optimizer, options):
    wanted = True if options['fused_adam'] else None
    for group in optimizer.param_groups:
        if 'fused' not in group or bool(group['fused']) == bool(wanted):
            continue
        group['fused'] = wanted
        for param in group['params']:
            state = optimizer.state.get(param, {})
            if 'step' in state:
                state['step'] = state['step'].to(device=param.device if wanted else 'cpu', dtype=torch.float32)

#----------------------------------------------------------------------------
# The denoiser the loss calls: the (DDP-wrapped) network, compiled and under autocast as asked.
# Attributes read through to the network.

class _Autocast:
    def __init__(self, module, device_type, dtype):
        self.module, self.device_type, self.dtype = module, device_type, dtype

    def __call__(self, *args, **kwargs):
        with torch.autocast(self.device_type, dtype=self.dtype):
            out = self.module(*args, **kwargs)
        return out.to(torch.float32)

    def __getattr__(self, name):
        return getattr(self.module, name)

def denoiser(module, options, device):
    if options['compile'] is not None:
        module = torch.compile(module, backend=options['compile'])
    if options['amp'] is not None:
        module = _Autocast(module, torch.device(device).type, AMP_DTYPES[options['amp']])
    return module

#----------------------------------------------------------------------------
