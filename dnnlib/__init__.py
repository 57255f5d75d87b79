"""Small generic utilities shared by the CLIs (EasyDict, caching, URL access)."""

from .util import EasyDict, make_cache_dir_path
