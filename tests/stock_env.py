"""Test helper: a minimal stand-in for a stock NVlabs/edm checkout, to check
that our pickles load without this repository.

The stand-in has only what loading a released EDM snapshot needs: a
torch_utils package whose persistence module execs the embedded source
(_reconstruct_persistent_obj, persistent_class), misc.constant and
training_stats.report/report0. Scripts run in a forked process whose sys.path
holds the stand-in and site-packages but not this repository, which has
forgotten every module loaded from this repository, and in which
importing our own packages or optional extras (ptwt, pywt, scipy, ...) fails,
so an embedded source that imports more than numpy/torch/torch_utils breaks.

Usage:
    from stock_env import run_in_stock_env
    res = run_in_stock_env('import pickle; d = pickle.load(open(PATH, "rb")); print(d["ema"].img_resolution)', tmp_path)
    assert res.stdout.strip() == '8'
"""

import os
import sys
import textwrap

from conftest import run_forked

#----------------------------------------------------------------------------
# Sources of the stand-in package.

_PERSISTENCE_SRC = '''
# Stand-in for stock torch_utils/persistence.py: exec the embedded module source.
import sys, types, uuid

_src_to_module = {}

def persistent_class(orig_class):
    return orig_class

def _reconstruct_persistent_obj(meta):
    assert meta['version'] == 6 and meta['type'] == 'class'
    src = meta['module_src']
    module = _src_to_module.get(src)
    if module is None:
        name = '_imported_module_' + uuid.uuid4().hex
        module = types.ModuleType(name)
        sys.modules[name] = module
        _src_to_module[src] = module
        exec(src, module.__dict__)
    cls = getattr(module, meta['class_name'])
    obj = cls.__new__(cls)
    if hasattr(obj, '__setstate__'):
        obj.__setstate__(meta['state'])
    else:
        obj.__dict__.update(meta['state'])
    return obj
'''

_MISC_SRC = '''
# Stand-in for stock torch_utils/misc.py: only the cached constant().
import numpy as np
import torch

_cache = {}

def constant(value, shape=None, dtype=None, device=None, memory_format=None):
    value = np.asarray(value)
    shape = tuple(shape) if shape is not None else None
    dtype = torch.get_default_dtype() if dtype is None else dtype
    device = torch.device('cpu') if device is None else device
    memory_format = torch.contiguous_format if memory_format is None else memory_format
    key = (value.shape, value.dtype, value.tobytes(), shape, dtype, device, memory_format)
    if key not in _cache:
        t = torch.as_tensor(value.copy(), dtype=dtype, device=device)
        if shape is not None:
            t = t.expand(shape)
        _cache[key] = t.contiguous(memory_format=memory_format)
    return _cache[key]
'''

_TRAINING_STATS_SRC = '''
# Stand-in for stock torch_utils/training_stats.py: reports are accepted and kept.
reports = {}

def report(name, value):
    reports.setdefault(name, []).append(value)
    return value

def report0(name, value):
    return report(name, value)
'''

# Modules an embedded source must not need in a stock EDM environment.
BLOCKED_MODULES = ('training', 'edm_spectral', 'dnnlib', 'ptwt', 'pywt', 'scipy', 'click', 'PIL',
    'matplotlib', 'tqdm', 'requests', 'psutil')

_PREAMBLE = '''
import os, sys
STOCK_ROOT = {root!r}
REPO_ROOT = {repo!r}
sys.path[:] = [STOCK_ROOT] + [p for p in sys.path if p and os.path.abspath(p) != REPO_ROOT]
import numpy, torch  # imported before the blocker so torch's own imports are unaffected

class _Blocker:
    blocked = set({blocked!r})
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in self.blocked:
            raise ModuleNotFoundError(f'No module named {{name!r}} (blocked: not available in a stock EDM environment)', name=name)
        return None
sys.meta_path.insert(0, _Blocker())
for _name in list(sys.modules):
    if _name.split('.')[0] in _Blocker.blocked:
        del sys.modules[_name]
'''

#----------------------------------------------------------------------------
# The script runs in a process forked from this one (conftest.run_forked: a second Python
# start-up with torch costs seconds), made to forget this repository first: every module
# loaded from it (our packages, the test modules), every module persistence made from an
# embedded source, and the path entries in or under it. The preamble then puts the stand-in
# first and installs the blocker, as it does in a fresh interpreter.

def _forget_repo_and_exec(code, root, repo):
    under = lambda path, folder: os.path.abspath(path) == folder or os.path.abspath(path).startswith(folder + os.sep)
    inside = lambda path: path is not None and under(path, repo) and not under(path, os.path.abspath(sys.prefix))  # not a venv in the checkout
    os.chdir(root)
    sys.path[:] = [p for p in sys.path if p and not inside(p)]
    for name, module in list(sys.modules.items()):
        if name.startswith('_imported_module_') or inside(getattr(module, '__file__', None)):
            del sys.modules[name]
    exec(compile(code, '<stock EDM stand-in>', 'exec'), dict(__name__='__main__'))

#----------------------------------------------------------------------------
# Write the stand-in package under root (created if needed); returns root.

def build_stock_env(root):
    root = os.path.abspath(str(root))
    pkg = os.path.join(root, 'torch_utils')
    os.makedirs(pkg, exist_ok=True)
    for name, src in [('__init__.py', ''), ('persistence.py', _PERSISTENCE_SRC), ('misc.py', _MISC_SRC),
            ('training_stats.py', _TRAINING_STATS_SRC)]:
        with open(os.path.join(pkg, name), 'w') as f:
            f.write(src)
    return root

#----------------------------------------------------------------------------
# Run a Python snippet in the stand-in environment. The stand-in lives in
# tmp_path/stock_edm, which is also the working directory. With check=True a
# non-zero exit raises AssertionError showing the output.

def run_in_stock_env(script, tmp_path, timeout=300, check=True, blocked=BLOCKED_MODULES):
    root = build_stock_env(os.path.join(str(tmp_path), 'stock_edm'))
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = _PREAMBLE.format(root=root, repo=repo, blocked=tuple(blocked)) + '\n' + textwrap.dedent(script)
    res = run_forked(_forget_repo_and_exec, (code, root, repo), os.path.join(root, 'stdout.txt'), os.path.join(root, 'stderr.txt'), timeout)
    if check and res.returncode != 0:
        raise AssertionError(f'Script failed in the stock EDM stand-in (exit code {res.returncode}):\n'
            f'--- stdout ---\n{res.stdout}\n--- stderr ---\n{res.stderr}')
    return res

#----------------------------------------------------------------------------
