"""Generic helpers: EasyDict, stdout logging, cache dirs, object lookup by name, URL access."""

import os

#----------------------------------------------------------------------------
# Dict whose keys can also be read and written as attributes.

class EasyDict(dict):
    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name)

    def __setattr__(self, name, value):
        self[name] = value

    def __delattr__(self, name):
        del self[name]

#----------------------------------------------------------------------------
# Cache directory: $DNNLIB_CACHE_DIR, else ~/.cache/dnnlib.

def make_cache_dir_path(*paths):
    if 'DNNLIB_CACHE_DIR' in os.environ:
        return os.path.join(os.environ['DNNLIB_CACHE_DIR'], *paths)
    return os.path.join(os.path.expanduser('~'), '.cache', 'dnnlib', *paths)

#----------------------------------------------------------------------------
