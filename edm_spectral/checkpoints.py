"""Loading and saving EDM network snapshots and training states.

Released EDM pickles (and ours) embed Python source that plain pickle.load()
executes. The default path here never does: a restricted unpickler reads only
tensors, numpy scalars and containers, turns every persistent object into a
placeholder holding its class name and state, and the objects are rebuilt from
our own classes in training.* with their recorded constructor arguments and
weights (load_state_dict(strict=True)). trust_code=True is the plain pickle path.
Snapshots are written by training.snapshots.
"""

import codecs
import collections
import importlib
import io
import os
import pickle
import types
import warnings
import zipfile

import numpy as np
import torch

import dnnlib

#----------------------------------------------------------------------------
# Classes the weights-only loader may rebuild, and where ours live.

_class_registry = {
    'EDMPrecond':   'training.networks',
    'VPPrecond':    'training.networks',
    'VEPrecond':    'training.networks',
    'iDDPMPrecond': 'training.networks',
    'SongUNet':     'training.networks',
    'DhariwalUNet': 'training.networks',
    'EDMLoss':      'training.loss',
    'VPLoss':       'training.loss',
    'VELoss':       'training.loss',
    'DDPMLoss':     'training.loss',
    'AugmentPipe':  'training.augment',
    'SpectralLoss': 'training.spectral_loss',
}

_opt_in_hint = ('If you trust the file, load it with trust_code=True (command line: --trust-code); '
    'that runs the Python code stored in the file with plain pickle.')

class UnsafePickleError(pickle.UnpicklingError):
    """The file references something the weights-only loader refuses to load."""

#----------------------------------------------------------------------------
# Placeholders produced by the restricted unpickler.

class PersistentStub:
    """A persistent object as stored in the pickle: its class name and state (never executed)."""
    def __init__(self, class_name, state):
        self.class_name = class_name
        self.state = state

    def __repr__(self):
        return f'PersistentStub({self.class_name!r})'

class ContainerStub:
    """A torch.nn container (ModuleDict etc.) as stored in the pickle. Pickle
    rebuilds it with __new__ (no __init__) and then __setstate__."""
    class_name = 'Container'
    state = None

    def __setstate__(self, state):
        self.state = state

    def __repr__(self):
        return f'ContainerStub({self.class_name!r})'

def _make_persistent_stub(meta):
    if not isinstance(meta, dict) or not {'type', 'version', 'class_name', 'state'} <= set(meta.keys()):
        raise UnsafePickleError('Malformed persistent object in pickle (meta dict lacks type/version/class_name/state)')
    if meta['version'] != 6 or meta['type'] != 'class':
        raise UnsafePickleError(f'Unsupported persistent object format (type {meta["type"]!r}, version {meta["version"]!r}; expected class, 6)')
    if not isinstance(meta['class_name'], str) or not isinstance(meta['state'], dict):
        raise UnsafePickleError('Malformed persistent object in pickle (class_name must be a str, state a dict)')
    return PersistentStub(meta['class_name'], meta['state']) # meta['module_src'] is dropped unread.

#----------------------------------------------------------------------------
# Safe replacements for the few callables a snapshot stream invokes.

def _load_storage_from_bytes(b):
    # Plain pickle stores each storage as a legacy torch.save blob.
    return torch.load(io.BytesIO(b), map_location='cpu', weights_only=True)

def _np_multiarray():
    try:
        import numpy._core.multiarray as multiarray # numpy >= 2
    except ImportError:
        import numpy.core.multiarray as multiarray
    return multiarray

def _numpy_scalar(dtype, *args):
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise UnsafePickleError('Refusing numpy object scalars in a weights-only load')
    return _np_multiarray().scalar(dtype, *args)

def _numpy_dtype(*args):
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise UnsafePickleError('Refusing numpy object arrays in a weights-only load')
    return dtype

def _codecs_encode(text, encoding='utf-8'):
    # Protocol-2 pickles (torch.save) write bytes as encode(str, 'latin1').
    if encoding not in ('latin1', 'latin-1'):
        raise UnsafePickleError(f'Refusing _codecs.encode with encoding {encoding!r}')
    return codecs.encode(text, encoding)

#----------------------------------------------------------------------------
# The allow-list: (module, name) -> object handed to the unpickler.

def _allowed_globals():
    reconstruct = _np_multiarray()._reconstruct
    allowed = {
        ('torch_utils.persistence', '_reconstruct_persistent_obj'): _make_persistent_stub,
        ('torch._utils', '_rebuild_tensor_v2'): torch._utils._rebuild_tensor_v2,
        ('torch._utils', '_rebuild_parameter'): torch._utils._rebuild_parameter,
        ('torch._utils', '_rebuild_parameter_with_state'): torch._utils._rebuild_parameter_with_state,
        ('torch.storage', '_load_from_bytes'): _load_storage_from_bytes,
        ('collections', 'OrderedDict'): collections.OrderedDict,
        ('builtins', 'set'): set,
        ('builtins', 'frozenset'): frozenset,
        ('__builtin__', 'set'): set,
        ('__builtin__', 'frozenset'): frozenset,
        ('_codecs', 'encode'): _codecs_encode,
        ('numpy', 'dtype'): _numpy_dtype,
        ('numpy', 'ndarray'): np.ndarray,
        ('numpy.core.multiarray', 'scalar'): _numpy_scalar,
        ('numpy._core.multiarray', 'scalar'): _numpy_scalar,
        ('numpy.core.multiarray', '_reconstruct'): reconstruct,
        ('numpy._core.multiarray', '_reconstruct'): reconstruct,
        ('dnnlib.util', 'EasyDict'): dnnlib.EasyDict,
        ('dnnlib', 'EasyDict'): dnnlib.EasyDict,
    }
    for name in ['ModuleDict', 'ModuleList', 'Sequential']:
        allowed[('torch.nn.modules.container', name)] = type(name + 'Stub', (ContainerStub,), dict(class_name=name))
    return allowed

class _RestrictedUnpickler(pickle.Unpickler):
    _allowed = None

    def find_class(self, module, name):
        if _RestrictedUnpickler._allowed is None:
            _RestrictedUnpickler._allowed = _allowed_globals()
        obj = self._allowed.get((module, name), None)
        if obj is None:
            raise UnsafePickleError(f'The file references {module}.{name}, which the weights-only loader does not allow '
                f'(only tensors, numpy scalars, containers and EDM persistent objects are). {_opt_in_hint}')
        return obj

# A stand-in for the pickle module, for torch.load(pickle_module=...).
_restricted_pickle = types.ModuleType('edm_spectral_restricted_pickle')
_restricted_pickle.Unpickler = _RestrictedUnpickler
_restricted_pickle.load = lambda f, **kwargs: _RestrictedUnpickler(f, **kwargs).load()
_restricted_pickle.UnpicklingError = pickle.UnpicklingError
_restricted_pickle.__version__ = getattr(pickle, '__version__', None)

#----------------------------------------------------------------------------
# Turn placeholders back into objects of our classes.

def _flatten_state(stub, prefix='', out=None):
    # Same order and naming as Module.state_dict(): parameters, persistent
    # buffers, then submodules; None entries are skipped.
    out = collections.OrderedDict() if out is None else out
    state = stub.state
    if not isinstance(state, dict):
        raise ValueError(f'{stub!r} has no module state')
    skip = state.get('_non_persistent_buffers_set', set())
    for name, tensor in state.get('_parameters', {}).items():
        if tensor is not None:
            out[prefix + name] = tensor
    for name, tensor in state.get('_buffers', {}).items():
        if tensor is not None and name not in skip:
            out[prefix + name] = tensor
    for name, child in state.get('_modules', {}).items():
        if child is None:
            continue
        if not isinstance(child, (PersistentStub, ContainerStub)):
            raise ValueError(f'Unexpected submodule {prefix + name} of type {type(child).__name__}')
        _flatten_state(child, prefix + name + '.', out)
    return out

def _lookup_class(class_name):
    module_name = _class_registry.get(class_name, None)
    if module_name is None:
        raise UnsafePickleError(f'The file holds a persistent object of class {class_name!r}, which the weights-only loader cannot rebuild '
            f'(known: {", ".join(sorted(_class_registry))}). {_opt_in_hint}')
    module = importlib.import_module(module_name)
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ImportError(f'{module_name} does not define {class_name}, needed to rebuild the snapshot')
    return cls

def _rebuild_stub(stub):
    cls = _lookup_class(stub.class_name)
    state = stub.state
    if '_init_args' not in state or '_init_kwargs' not in state:
        raise ValueError(f'Persistent object {stub.class_name!r} does not record its constructor arguments')
    init_args = _rebuild_stubs(state['_init_args'])
    init_kwargs = _rebuild_stubs(state['_init_kwargs'])
    obj = cls(*init_args, **init_kwargs)
    if isinstance(obj, torch.nn.Module):
        weights = _flatten_state(stub)
        try:
            obj.load_state_dict(weights, strict=True)
        except RuntimeError as e:
            raise ValueError(f'The weights of {stub.class_name} in the file do not match our implementation: {e}') from None
        obj.train(bool(state.get('training', True)))
        _check_attributes(stub, obj)
    else:
        _restore_scalars(stub, obj)
    return obj

# Walk a loaded object (a snapshot dict, constructor arguments, ...) and
# rebuild every persistent placeholder in it from our classes.
def _rebuild_stubs(obj):
    if isinstance(obj, PersistentStub):
        return _rebuild_stub(obj)
    if isinstance(obj, ContainerStub):
        raise ValueError(f'Cannot rebuild a bare {obj.class_name} outside a persistent module')
    if isinstance(obj, dict):
        return type(obj)((k, _rebuild_stubs(v)) for k, v in obj.items())
    if isinstance(obj, list):
        return [_rebuild_stubs(x) for x in obj]
    if isinstance(obj, tuple):
        return tuple(_rebuild_stubs(x) for x in obj)
    return obj

# A cheap guard against silent divergence: scalar attributes of a stored
# network must equal those of our rebuilt one.
def _check_attributes(stub, obj):
    for name, value in stub.state.items():
        if name.startswith('_') or not isinstance(value, (bool, int, float, str, np.generic)):
            continue
        if not hasattr(obj, name):
            continue
        ours = getattr(obj, name)
        if isinstance(ours, (bool, int, float, str, np.generic)) and ours != value and not (ours != ours and value != value):
            warnings.warn(f'{stub.class_name}.{name} is {value!r} in the file but {ours!r} after rebuilding; check the implementation')

# Plain objects (losses, augmentation) may carry scalar settings changed after
# construction (e.g. a loss' cur_kimg); take those over as pickle would.
def _restore_scalars(stub, obj):
    for name, value in stub.state.items():
        if name.startswith('_') or not isinstance(value, (bool, int, float, str, np.generic)):
            continue
        if isinstance(getattr(obj, name, None), (bool, int, float, str, np.generic)):
            setattr(obj, name, value)

#----------------------------------------------------------------------------
# Read a pickle through the restricted unpickler, with clear errors.

def _describe(path_or_url):
    return os.path.abspath(path_or_url) if '://' not in path_or_url else path_or_url

def _read_pickle(f, path_or_url, trust_code):
    _refuse_torch_save(f, path_or_url)
    try:
        if trust_code:
            data = pickle.load(f)
        else:
            data = _RestrictedUnpickler(f).load()
    except UnsafePickleError as e:
        raise UnsafePickleError(f'{_describe(path_or_url)}: {e}') from None
    except (pickle.UnpicklingError, EOFError, ValueError, IndexError, KeyError, AttributeError) as e:
        raise ValueError(f'{_describe(path_or_url)} is not a readable network snapshot (corrupt or truncated pickle?): {type(e).__name__}: {e}') from None
    if isinstance(data, int) and data == torch.serialization.MAGIC_NUMBER:
        raise ValueError(_torch_save_message(path_or_url, 'legacy torch.save file'))
    return data

# A torch.save file (a zip holding <name>/data.pkl, or the legacy format, which starts with a
# pickled magic number) is what a training state is, not a snapshot: say so, not "corrupt".
def _torch_save_message(path_or_url, kind):
    return (f'{_describe(path_or_url)} is a {kind}, not a network snapshot pickle; snapshots are the '
        f'network-snapshot-*.pkl files of a run (a training-state-*.pt continues a run with --resume)')

def _refuse_torch_save(f, path_or_url):
    start = f.tell()
    head = f.read(4)
    f.seek(start)
    if head != b'PK\x03\x04':
        return
    try:
        with zipfile.ZipFile(f) as z:
            names = z.namelist()
    except zipfile.BadZipFile:
        names = []
    f.seek(start)
    is_torch_save = any(name == 'data.pkl' or name.endswith('/data.pkl') for name in names)
    raise ValueError(_torch_save_message(path_or_url, 'torch.save file') if is_torch_save else
        f'{_describe(path_or_url)} is a zip archive, not a network snapshot pickle')

# Modules in a snapshot: frozen copies (eval, no grad) on the given device.
def _freeze(module, device):
    return module.eval().requires_grad_(False).to(device)

#----------------------------------------------------------------------------
# Load network-snapshot-*.pkl (ours or NVIDIA's released files). Returns a
# dict with ema (eval, no grad, on device), loss_fn, augment_pipe (or None),
# dataset_kwargs (a plain dict) and any extra keys the file has.

def load_snapshot(path_or_url, trust_code=False, device='cpu'):
    if not isinstance(path_or_url, str):
        raise TypeError('load_snapshot() expects a path or URL string')
    device = torch.device(device)
    with dnnlib.util.open_url(path_or_url) as f:
        data = _read_pickle(f, path_or_url, trust_code)
    if not isinstance(data, dict) or 'ema' not in data:
        raise ValueError(f'{_describe(path_or_url)} is not an EDM network snapshot (expected a dict with key "ema", '
            f'got {type(data).__name__}{" with keys " + str(sorted(data.keys())) if isinstance(data, dict) else ""})')

    if not trust_code:
        data = _rebuild_stubs(data)
    data = dict(data)
    if not isinstance(data['ema'], torch.nn.Module):
        raise ValueError(f'{_describe(path_or_url)}: "ema" is not a network ({type(data["ema"]).__name__})')
    data['ema'] = _freeze(data['ema'], device)
    if isinstance(data.get('augment_pipe', None), torch.nn.Module):
        data['augment_pipe'] = _freeze(data['augment_pipe'], device)
    data.setdefault('loss_fn', None)
    data.setdefault('augment_pipe', None)
    data['dataset_kwargs'] = _to_plain_dict(data.get('dataset_kwargs', None) or {})
    return data

def _to_plain_dict(obj):
    if isinstance(obj, dict):
        return {k: _to_plain_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_plain_dict(x) for x in obj)
    return obj

#----------------------------------------------------------------------------
# Just the EMA network of a snapshot.

def load_network(path_or_url, trust_code=False, device='cpu'):
    return load_snapshot(path_or_url, trust_code=trust_code, device=device)['ema']

#----------------------------------------------------------------------------
# Load training-state-*.pt (torch.save of {'net': persistent module,
# 'optimizer_state': ...} plus whatever else the training loop stored). The
# net comes back as our own class, tensors on CPU.

# mmap=True maps the tensors' storage instead of reading it: cheap enough to check a state's
# safety and shape before a run starts (torch.save's zip format; a legacy file is read whole).
def load_training_state(path, trust_code=False, mmap=False):
    if not isinstance(path, str):
        raise TypeError('load_training_state() expects a path')
    if not os.path.isfile(path):
        raise FileNotFoundError(f'Training state not found: {path}')
    mmap = mmap and zipfile.is_zipfile(path)
    try:
        if trust_code:
            data = torch.load(path, map_location='cpu', weights_only=False, mmap=mmap)
        else:
            data = torch.load(path, map_location='cpu', pickle_module=_restricted_pickle, weights_only=False, mmap=mmap)
    except UnsafePickleError as e:
        raise UnsafePickleError(f'{os.path.abspath(path)}: {e}') from None
    except (pickle.UnpicklingError, EOFError, RuntimeError, ValueError) as e:
        raise ValueError(f'{os.path.abspath(path)} is not a readable training state (corrupt or truncated?): {type(e).__name__}: {e}') from None
    if not trust_code:
        data = _rebuild_stubs(data)
    if not isinstance(data, dict) or 'net' not in data:
        raise ValueError(f'{os.path.abspath(path)} is not a training state (expected a dict with key "net")')
    return data

#----------------------------------------------------------------------------
