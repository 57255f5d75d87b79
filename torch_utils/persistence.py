"""Persistent classes: objects that pickle together with the source code of
the module that defines them, in the format of NVIDIA's released EDM pickles
(meta version 6), so that a snapshot loads without the original code base."""

import copy
import inspect
import io
import pickle
import sys
import types
import uuid

import dnnlib

#----------------------------------------------------------------------------
# Format version of the meta dict; the released EDM/EDM2 pickles use 6.

_version = 6

_decorators         = set()     # Every class produced by persistent_class().
_import_hooks       = []        # Callables applied to the meta dict on load.
_module_to_src_dict = dict()    # module object -> source text
_src_to_module_dict = dict()    # source text -> module object

#----------------------------------------------------------------------------
# Class decorator: instances remember their constructor arguments and pickle
# as (module source, class name, state) instead of a reference by name.

def persistent_class(orig_class):
    if not isinstance(orig_class, type):
        raise TypeError(f'persistent_class() expects a class, got {type(orig_class).__name__}')
    if is_persistent(orig_class):
        return orig_class

    if orig_class.__module__ not in sys.modules:
        raise ValueError(f'persistent_class(): module {orig_class.__module__!r} of {orig_class.__name__} is not imported')
    orig_module = sys.modules[orig_class.__module__]
    orig_module_src = _module_to_src(orig_module)

    class Decorator(orig_class):
        _orig_module_src = orig_module_src
        _orig_class_name = orig_class.__name__

        def __init__(self, *args, **kwargs):
            # Copy before the constructor runs, in case it mutates its arguments.
            init_args = copy.deepcopy(args)
            init_kwargs = copy.deepcopy(kwargs)
            _check_pickleable(init_args, init_kwargs, orig_class.__name__)
            super().__init__(*args, **kwargs)
            self._init_args = init_args
            self._init_kwargs = init_kwargs
            if getattr(orig_module, orig_class.__name__, None) is None:
                raise ValueError(f'persistent_class(): {orig_class.__name__} must be defined at the top level of {orig_module.__name__}')

        @property
        def init_args(self):
            return copy.deepcopy(self._init_args)

        @property
        def init_kwargs(self):
            return dnnlib.EasyDict(copy.deepcopy(self._init_kwargs))

        def __reduce__(self):
            # Module.__getstate__ drops transient entries; plain objects use __dict__.
            getstate = getattr(super(), '__getstate__', None)
            state = getstate() if getstate is not None else self.__dict__
            if state is None:
                state = dict()
            meta = dict(type='class', version=_version, module_src=self._orig_module_src,
                class_name=self._orig_class_name, state=state)
            return (_reconstruct_persistent_obj, (meta,), None)

    Decorator.__name__ = orig_class.__name__
    Decorator.__qualname__ = orig_class.__qualname__
    Decorator.__module__ = orig_class.__module__
    Decorator.__doc__ = orig_class.__doc__
    _decorators.add(Decorator)
    return Decorator

#----------------------------------------------------------------------------
# True for a class made by persistent_class() or an instance of one.

def is_persistent(obj):
    try:
        if obj in _decorators:
            return True
    except TypeError:   # unhashable object
        pass
    return type(obj) in _decorators

#----------------------------------------------------------------------------
# Register hook(meta) -> meta, called on every persistent object as it is
# unpickled, e.g. to patch the embedded source of old pickles.

def import_hook(hook):
    if not callable(hook):
        raise TypeError('import_hook() expects a callable')
    _import_hooks.append(hook)

#----------------------------------------------------------------------------
# Unpickling entry point named in every persistent pickle. Executes the
# embedded module source, so only call it on files you trust.

def _reconstruct_persistent_obj(meta):
    meta = dnnlib.EasyDict(meta)
    meta.state = dnnlib.EasyDict(meta.state)
    for hook in _import_hooks:
        meta = hook(meta)
        if meta is None:
            raise ValueError('persistence import hook returned None')

    if meta.version != _version:
        raise ValueError(f'Unsupported persistent object version {meta.version} (expected {_version})')
    if meta.type != 'class':
        raise ValueError(f'Unsupported persistent object type {meta.type!r}')

    module = _src_to_module(meta.module_src)
    orig_class = module.__dict__.get(meta.class_name, None)
    if orig_class is None:
        raise ValueError(f'Class {meta.class_name!r} not found in the embedded module source')
    decorator_class = persistent_class(orig_class)
    obj = decorator_class.__new__(decorator_class)

    setstate = getattr(obj, '__setstate__', None)
    if callable(setstate):
        setstate(meta.state)
    else:
        obj.__dict__.update(meta.state)
    return obj

#----------------------------------------------------------------------------
# Source text of a module, cached; the reverse mapping is recorded too so that
# objects unpickled in the same process keep their original classes.

def _module_to_src(module):
    src = _module_to_src_dict.get(module, None)
    if src is None:
        src = inspect.getsource(module)
        _module_to_src_dict[module] = src
        _src_to_module_dict[src] = module
    return src

#----------------------------------------------------------------------------
# Module for a source text: a fresh module executed once per distinct source.

def _src_to_module(src):
    module = _src_to_module_dict.get(src, None)
    if module is None:
        module_name = '_imported_module_' + uuid.uuid4().hex
        module = types.ModuleType(module_name)
        sys.modules[module_name] = module
        _module_to_src_dict[module] = src
        _src_to_module_dict[src] = module
        exec(src, module.__dict__) # pylint: disable=exec-used
    return module

#----------------------------------------------------------------------------
# Fail at construction time, not at snapshot time, if the constructor
# arguments cannot be pickled. Tensors, arrays and persistent objects are
# skipped: they pickle fine and can be large.

def _check_pickleable(args, kwargs, class_name):
    def strip(obj):
        if isinstance(obj, (list, tuple, set)):
            return [strip(x) for x in obj]
        if isinstance(obj, dict):
            return [[strip(k), strip(v)] for k, v in obj.items()]
        if isinstance(obj, (str, int, float, bool, bytes, bytearray, type(None))):
            return None
        if f'{type(obj).__module__}.{type(obj).__name__}' in ('numpy.ndarray', 'torch.Tensor', 'torch.nn.parameter.Parameter'):
            return None
        if is_persistent(obj):
            return None
        return obj
    try:
        with io.BytesIO() as f:
            pickle.dump(strip([args, kwargs]), f)
    except Exception as e:
        raise TypeError(f'Constructor arguments of persistent class {class_name} are not pickleable: {e}') from e

#----------------------------------------------------------------------------
