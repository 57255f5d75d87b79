"""Generic helpers: EasyDict, stdout logging, cache dirs, object lookup by name, URL access."""

import glob
import hashlib
import importlib
import io
import os
import re
import sys
import tempfile
import urllib.parse
import urllib.request
from typing import Any, Optional

#----------------------------------------------------------------------------
# A dict whose items double as attributes: d.lr is d['lr'], d.lr = 1 sets
# d['lr']. Dict methods and other real attributes win over items of the
# same name; a missing item reads as AttributeError, so getattr(d, name,
# default), hasattr() and copy/pickle behave as for any object.

class EasyDict(dict):
    def __getattr__(self, name: str) -> Any:
        if name in self:
            return self[name]
        raise AttributeError(name)

    __setattr__ = dict.__setitem__
    __delattr__ = dict.__delitem__

#----------------------------------------------------------------------------
# Tee of sys.stdout and sys.stderr into a log file. Usable as a context
# manager; close() restores the original streams.

class Logger:
    def __init__(self, file_name: Optional[str] = None, file_mode: str = 'w', should_flush: bool = True):
        self.file = open(file_name, file_mode) if file_name is not None else None
        self.should_flush = should_flush
        self.stdout = sys.stdout
        self.stderr = sys.stderr
        self._stdout_tee = _Tee(self, self.stdout)
        self._stderr_tee = _Tee(self, self.stderr)
        sys.stdout = self._stdout_tee
        sys.stderr = self._stderr_tee

    def __enter__(self) -> 'Logger':
        return self

    def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        self.close()

    def write(self, text: str) -> None:
        self._stdout_tee.write(text)

    def flush(self) -> None:
        if self.file is not None:
            self.file.flush()
        self.stdout.flush()
        self.stderr.flush()

    def close(self) -> None:
        self.flush()
        if sys.stdout is self._stdout_tee:
            sys.stdout = self.stdout
        if sys.stderr is self._stderr_tee:
            sys.stderr = self.stderr
        if self.file is not None:
            self.file.close()
            self.file = None

# One teed stream: writes go to the original stream and to the log file.
class _Tee:
    def __init__(self, logger: Logger, stream: Any):
        self._logger = logger
        self._stream = stream

    def write(self, text: str) -> int:
        if isinstance(text, bytes):
            text = text.decode()
        if len(text) == 0:
            return 0
        if self._logger.file is not None:
            self._logger.file.write(text)
        self._stream.write(text)
        if self._logger.should_flush:
            self.flush()
        return len(text)

    def flush(self) -> None:
        if self._logger.file is not None:
            self._logger.file.flush()
        self._stream.flush()

    def isatty(self) -> bool:
        return hasattr(self._stream, 'isatty') and self._stream.isatty()

    def __getattr__(self, name: str) -> Any: # encoding, errors, fileno, ...
        return getattr(self._stream, name)

#----------------------------------------------------------------------------
# Cache directory: $DNNLIB_CACHE_DIR, else ~/.cache/dnnlib.

def make_cache_dir_path(*paths: str) -> str:
    if 'DNNLIB_CACHE_DIR' in os.environ:
        return os.path.join(os.environ['DNNLIB_CACHE_DIR'], *paths)
    return os.path.join(os.path.expanduser('~'), '.cache', 'dnnlib', *paths)

#----------------------------------------------------------------------------
# Can an output path be written? Checked before the work starts, so that a bad --outdir or
# --dest fails in a second with one line instead of a traceback after hours. The check leaves
# the file system as it was (no folders are made): it finds the nearest existing ancestor and
# creates and removes a uniquely named probe file there, which also catches what os.access()
# misses (root on /proc, read-only mounts). Several processes may check the same path at once.

class UnwritablePathError(ValueError):
    """An output path that cannot be created or written; the message names the option."""

def _nearest_existing(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.lexists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path

def _probe_dir(what: str, path: str, verb: str, folder: str) -> None:
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix='.write-test-')
    except OSError as e:
        raise UnwritablePathError(f'{what} {path} cannot be {verb}: {folder} does not accept new files ({e.strerror or e})') from None
    os.close(fd)
    os.remove(probe)

# The folder path will be: an existing one we can write in, or one we can create.
def check_writable_dir(path: str, what: str = 'output folder') -> None:
    if not isinstance(path, str) or not path:
        raise UnwritablePathError(f'{what} must not be empty')
    if os.path.lexists(path):
        if not os.path.isdir(path):
            raise UnwritablePathError(f'{what} {path} cannot be used: it exists and is not a folder')
        _probe_dir(what, path, 'written', path)
        return
    _check_creatable(what, path)

# The file path will be written (created, or replaced by a new file).
def check_writable_file(path: str, what: str = 'output file') -> None:
    if not isinstance(path, str) or not path:
        raise UnwritablePathError(f'{what} must not be empty')
    if os.path.isdir(path):
        raise UnwritablePathError(f'{what} {path} cannot be written: it is a folder')
    if os.path.lexists(path):
        if not os.access(path, os.W_OK):
            raise UnwritablePathError(f'{what} {path} cannot be written: permission denied')
        _probe_dir(what, path, 'written', os.path.dirname(os.path.abspath(path)))
        return
    _check_creatable(what, path)

def _check_creatable(what: str, path: str) -> None:
    base = _nearest_existing(path)
    if not os.path.isdir(base):
        raise UnwritablePathError(f'{what} {path} cannot be created: {base} is a file, not a folder')
    _probe_dir(what, path, 'created', base)

#----------------------------------------------------------------------------
# Human-readable duration: 5s, 3m 04s, 2h 03m 04s, 1d 02h 03m.

def format_time(seconds: float) -> str:
    s = int(round(float(seconds)))
    if s < 60:
        return f'{s}s'
    if s < 60 * 60:
        return f'{s // 60}m {s % 60:02d}s'
    if s < 24 * 60 * 60:
        return f'{s // (60 * 60)}h {(s // 60) % 60:02d}m {s % 60:02d}s'
    return f'{s // (24 * 60 * 60)}d {(s // (60 * 60)) % 24:02d}h {(s // 60) % 60:02d}m'

#----------------------------------------------------------------------------
# Resolve a dotted name such as 'training.networks.EDMPrecond' or
# 'torch.optim.Adam': import the longest importable module prefix, then
# follow attributes.

def get_obj_by_name(name: str) -> Any:
    if not isinstance(name, str) or not name:
        raise ValueError(f'Expected a dotted object name, got {name!r}')
    parts = name.split('.')
    for split in range(len(parts), 0, -1):
        module_name = '.'.join(parts[:split])
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            # Only swallow the error if it is this very prefix that is missing,
            # not a broken import inside an existing module.
            if e.name is not None and module_name != e.name and not module_name.startswith(e.name + '.'):
                raise
            continue
        obj = module
        try:
            for attr in parts[split:]:
                obj = getattr(obj, attr)
        except AttributeError:
            raise ValueError(f'Cannot find {name!r}: module {module_name!r} has no attribute path {".".join(parts[split:])!r}') from None
        return obj
    raise ValueError(f'Cannot find {name!r}: no module named {parts[0]!r}')

#----------------------------------------------------------------------------
# Call a function given by dotted name.

def call_func_by_name(*args: Any, func_name: Optional[str] = None, **kwargs: Any) -> Any:
    if func_name is None:
        raise ValueError('call_func_by_name() needs func_name')
    func = get_obj_by_name(func_name)
    if not callable(func):
        raise ValueError(f'{func_name!r} is not callable')
    return func(*args, **kwargs)

#----------------------------------------------------------------------------
# Construct an object of a class given by dotted name (config dicts carry the
# class name as 'class_name').

def construct_class_by_name(*args: Any, class_name: Optional[str] = None, **kwargs: Any) -> Any:
    if class_name is None:
        raise ValueError('construct_class_by_name() needs class_name')
    return call_func_by_name(*args, func_name=class_name, **kwargs)

#----------------------------------------------------------------------------
# True if obj is a string that looks like a URL (http, https, ...; file://
# only with allow_file_urls).

def is_url(obj: Any, allow_file_urls: bool = False) -> bool:
    if not isinstance(obj, str) or '://' not in obj:
        return False
    if allow_file_urls and obj.startswith('file://'):
        return True
    try:
        res = urllib.parse.urlparse(obj)
        if not res.scheme or not res.netloc or '.' not in res.netloc and res.hostname != 'localhost':
            return False
        res = urllib.parse.urlparse(urllib.parse.urljoin(obj, '/'))
        if not res.scheme or not res.netloc:
            return False
    except ValueError:
        return False
    return True

#----------------------------------------------------------------------------
# Open a local path, a file:// URL or an http(s) URL. Downloads are cached in
# <cache_dir>/<md5 of url>_<file name>, so the second call (and an offline
# machine whose cache was filled by hand) needs no network. Returns a binary
# file object, or the local file name with return_filename=True.

def open_url(url: str, cache_dir: Optional[str] = None, num_attempts: int = 10, verbose: bool = True,
        return_filename: bool = False, cache: bool = True, timeout: float = 60) -> Any:
    if not isinstance(url, str) or not url:
        raise ValueError(f'open_url() expects a path or URL string, got {url!r}')
    if num_attempts < 1:
        raise ValueError('open_url(): num_attempts must be at least 1')
    if return_filename and not cache:
        raise ValueError('open_url(): return_filename=True requires cache=True')

    # Local files.
    if '://' not in url:
        return _open_local(url, return_filename)
    scheme = url.split('://', 1)[0].lower()
    if scheme == 'file':
        path = urllib.request.url2pathname(urllib.parse.urlparse(url).path)
        return _open_local(path, return_filename)
    if scheme not in ('http', 'https'):
        raise ValueError(f'Unsupported URL scheme {scheme!r} in {url!r} (expected a path, file://, http:// or https://)')

    # Cached download?
    if cache_dir is None:
        cache_dir = make_cache_dir_path('downloads')
    url_md5 = hashlib.md5(url.encode('utf-8')).hexdigest()
    if cache:
        hits = sorted(f for f in glob.glob(os.path.join(glob.escape(cache_dir), url_md5 + '_*')) if os.path.isfile(f))
        if len(hits) >= 1:
            return hits[0] if return_filename else open(hits[0], 'rb')
    cache_file = url_cache_path(url, cache_dir)

    # Download, retrying on network errors.
    import requests # lazy: only needed for downloads
    last_error = None
    for attempt in range(num_attempts):
        if verbose:
            print(f'Downloading {url} ...' + (f' (attempt {attempt + 1}/{num_attempts})' if attempt > 0 else ''), end='', flush=True)
        try:
            with requests.Session() as session:
                with session.get(url, stream=True, timeout=timeout) as res:
                    res.raise_for_status()
                    if cache:
                        os.makedirs(cache_dir, exist_ok=True)
                        fd, temp_file = tempfile.mkstemp(dir=cache_dir, prefix='.tmp-' + url_md5)
                        try:
                            size = 0
                            with os.fdopen(fd, 'wb') as f:
                                for chunk in res.iter_content(chunk_size=1 << 20):
                                    f.write(chunk)
                                    size += len(chunk)
                            if size == 0:
                                raise IOError('the server returned an empty file')
                            os.replace(temp_file, cache_file)
                        finally:
                            if os.path.exists(temp_file):
                                os.remove(temp_file)
                    else:
                        data = res.content
                        if len(data) == 0:
                            raise IOError('the server returned an empty file')
            if verbose:
                print(' done')
            if not cache:
                return io.BytesIO(data)
            return cache_file if return_filename else open(cache_file, 'rb')
        except KeyboardInterrupt:
            raise
        except Exception as e: # pylint: disable=broad-except
            last_error = e
            if verbose:
                print(' failed')
            status = getattr(getattr(e, 'response', None), 'status_code', None)
            if status is not None and 400 <= status < 500 and status != 429:
                break # Not found, forbidden, ...: retrying will not help.

    raise IOError(f'Could not download {url}: {last_error}\n'
        f'If this machine is offline, download the file by hand and pass its local path instead, '
        f'or save it as {cache_file} (the download cache; set DNNLIB_CACHE_DIR to move it).')

# Where open_url() stores (and looks for) the download of url: a file placed
# there by hand is used without network access.
def url_cache_path(url: str, cache_dir: Optional[str] = None) -> str:
    if cache_dir is None:
        cache_dir = make_cache_dir_path('downloads')
    url_md5 = hashlib.md5(url.encode('utf-8')).hexdigest()
    safe_name = re.sub(r'[^0-9a-zA-Z_.-]', '_', os.path.basename(urllib.parse.urlparse(url).path)) or 'download'
    return os.path.join(cache_dir, f'{url_md5}_{safe_name}')

# Open a local file with a clear error if it is missing.
def _open_local(path: str, return_filename: bool) -> Any:
    if not os.path.isfile(path):
        if os.path.isdir(path):
            raise IsADirectoryError(f'Expected a file, got a directory: {path}')
        raise FileNotFoundError(f'File not found: {path}')
    return path if return_filename else open(path, 'rb')

#----------------------------------------------------------------------------
