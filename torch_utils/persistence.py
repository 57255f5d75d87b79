"""Persistent classes: objects that pickle together with the full source text
of the module that defines their class, so that a snapshot loads where that
module is not importable. This is the format of NVIDIA's released EDM
pickles: a persistent object pickles as the call

    torch_utils.persistence._reconstruct_persistent_obj(meta)
    meta = dict(type='class', version=6, module_src=<module source>,
                class_name=<class name>, state=<the object's __dict__>)

and unpickling executes module_src as a fresh module, so load only trusted
files this way (edm_spectral/checkpoints.py reads them without executing
anything)."""

import copy
import inspect
import pickle
import sys
import types
import uuid

import numpy as np
import torch

import dnnlib

#----------------------------------------------------------------------------
# Version of the meta dict, checked on load; the released EDM and EDM2
# pickles both use 6.

_version = 6

_import_hooks       = []        # hook(meta) -> meta, run in order on every load
_persistent_types   = set()     # every class persistent_class() has returned
_source_by_module   = dict()    # module -> the source text it stands for
_module_by_source   = dict()    # source text -> module, the inverse

#----------------------------------------------------------------------------
# Class decorator. Instances of the returned subclass keep deep copies of
# their constructor arguments (init_args, init_kwargs) and pickle by value,
# as module source plus class name plus state, rather than by reference.

def persistent_class(orig_class):
    if not isinstance(orig_class, type):
        raise TypeError(f'persistent_class() expects a class, got {type(orig_class).__name__}')
    if is_persistent(orig_class):
        return orig_class
    class_name = orig_class.__name__
    module = sys.modules.get(orig_class.__module__)
    if module is None:
        raise ValueError(f'persistent_class(): the module {orig_class.__module__!r} of {class_name} is not imported')
    module_src = _source_of(module)

    class Persistent(orig_class):
        def __init__(self, *args, **kwargs):
            # Unpickling looks the class up by name in the module source.
            if getattr(module, class_name, None) is None:
                raise ValueError(f'persistent_class(): {class_name} must be defined at the top level of {module.__name__}')
            # Copied before the constructor runs, which may modify them.
            saved_args = copy.deepcopy(args)
            saved_kwargs = copy.deepcopy(kwargs)
            _require_pickleable(class_name, saved_args, saved_kwargs)
            super().__init__(*args, **kwargs)
            self._init_args = saved_args
            self._init_kwargs = saved_kwargs

        init_args = _init_args_view
        init_kwargs = _init_kwargs_view

        def __reduce__(self):
            state = super().__getstate__() # for a Module, __dict__ less its transient entries
            meta = dict(type='class', version=_version, module_src=module_src, class_name=class_name,
                state=dict() if state is None else state)
            return (_reconstruct_persistent_obj, (meta,), None)

    for attr in ('__module__', '__name__', '__qualname__', '__doc__'):
        setattr(Persistent, attr, getattr(orig_class, attr))
    _persistent_types.add(Persistent)
    return Persistent

# The recorded constructor arguments, as copies: changing them must not
# change what gets pickled.
_init_args_view = property(lambda self: copy.deepcopy(self._init_args))
_init_kwargs_view = property(lambda self: dnnlib.EasyDict(copy.deepcopy(self._init_kwargs)))

#----------------------------------------------------------------------------
# True for a class returned by persistent_class() and for its instances.

def is_persistent(obj):
    cls = obj if isinstance(obj, type) else type(obj)
    return cls in _persistent_types

#----------------------------------------------------------------------------
# Register hook(meta) -> meta, run on the meta dict (an EasyDict, its state
# too) of every persistent object as it is unpickled, before anything else,
# e.g. to patch the source text of old pickles.

def import_hook(hook):
    if not callable(hook):
        raise TypeError(f'import_hook() expects a callable, got {type(hook).__name__}')
    _import_hooks.append(hook)

#----------------------------------------------------------------------------
# The function every persistent pickle calls to rebuild an object: executes
# meta['module_src'] (once per distinct text), takes the class named there
# and gives a bare instance of it the pickled state.

def _reconstruct_persistent_obj(meta):
    meta = dnnlib.EasyDict(meta)
    meta.state = dnnlib.EasyDict(meta.state)
    for hook in _import_hooks:
        meta = hook(meta)
        if meta is None:
            raise ValueError(f'persistence import hook {hook!r} returned None instead of the meta dict')
    if meta.version != _version:
        raise ValueError(f'Unsupported persistent object version {meta.version} (this code reads version {_version})')
    if meta.type != 'class':
        raise ValueError(f'Unsupported persistent object type {meta.type!r} (expected \'class\')')

    module = _module_of(meta.module_src)
    cls = vars(module).get(meta.class_name)
    if cls is None:
        raise ValueError(f'The embedded module source defines no class {meta.class_name!r}')
    cls = persistent_class(cls)
    obj = cls.__new__(cls)
    if callable(getattr(obj, '__setstate__', None)):
        obj.__setstate__(meta.state) # Module's fills in attributes that newer torch versions added
    else:
        obj.__dict__.update(meta.state)
    return obj

#----------------------------------------------------------------------------
# Source text <-> module. A module seen here stands for its source text, so
# in the process that pickled an object its copies keep the original classes;
# any other text is executed as a new module named _imported_module_<hex>.

def _source_of(module):
    if module not in _source_by_module:
        _pair(module, inspect.getsource(module))
    return _source_by_module[module]

def _module_of(source):
    if source in _module_by_source:
        return _module_by_source[source]
    module = types.ModuleType(f'_imported_module_{uuid.uuid4().hex}')
    # Registered before running: the persistent_class() calls in the source
    # look the module and its text up.
    sys.modules[module.__name__] = module
    _pair(module, source)
    try:
        exec(source, module.__dict__) # pylint: disable=exec-used
    except BaseException:
        del sys.modules[module.__name__], _source_by_module[module], _module_by_source[source]
        raise
    return module

def _pair(module, source):
    _source_by_module[module] = source
    _module_by_source[source] = module

#----------------------------------------------------------------------------
# Raise TypeError now, when the object is built, if its constructor arguments
# would make it unpicklable later, at snapshot time. Containers are searched;
# scalars, strings, tensors, arrays and persistent objects are known to pickle
# (and tensors can be large), so only the remaining leaves are test-pickled.

_known_pickleable = (type(None), bool, int, float, complex, str, bytes, bytearray, np.ndarray, torch.Tensor)

def _require_pickleable(class_name, args, kwargs):
    doubtful = []
    visited = set()
    pending = [args, kwargs]
    while pending:
        obj = pending.pop()
        if isinstance(obj, (dict, list, tuple, set, frozenset)):
            if id(obj) not in visited: # a container may hold itself
                visited.add(id(obj))
                pending.extend([*obj.keys(), *obj.values()] if isinstance(obj, dict) else obj)
        elif not isinstance(obj, _known_pickleable) and not is_persistent(obj):
            doubtful.append(obj)
    try:
        pickle.dumps(doubtful)
    except Exception as e:
        raise TypeError(f'Constructor arguments of persistent class {class_name} are not pickleable: {e}') from e

#----------------------------------------------------------------------------
