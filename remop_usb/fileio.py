"""Files that are either complete or absent: write to a temporary sibling, fsync, rename. And :func:`read_json`,
the reader of the JSON objects runs and sweeps write (results.json, config.json, sweep.json)."""

import contextlib
import json
import os
import tempfile

from .errors import UserError


def read_json(path, what: str) -> dict:
    """The JSON object in ``path``; a one-line UserError starting ``what: path`` (``what``: the command reading it)
    when the file cannot be read, is no valid JSON or holds no object."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise UserError(f"{what}: {path}:{err.lineno}: not valid JSON ({err.msg}, column {err.colno})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{what}: {path}: cannot be read ({getattr(err, 'strerror', None) or err})") from None
    if not isinstance(data, dict):
        raise UserError(f"{what}: {path}: expected a JSON object, got a {type(data).__name__}")
    return data


def write_text_atomic(path, text: str) -> str:
    """Write ``text`` (UTF-8) to ``path`` atomically; a crash leaves the old file (or none), never half of one."""
    return _write_atomic(path, lambda f: f.write(text), suffix=os.path.splitext(os.fspath(path))[1])


def write_json_atomic(path, obj, **dump_kwargs) -> str:
    """Write ``obj`` as JSON to ``path`` atomically; a crash leaves the old file (or none), never half of one."""

    def dump(f):
        json.dump(obj, f, **dump_kwargs)
        f.write("\n")

    return _write_atomic(path, dump, suffix=".json")


def _write_atomic(path, write, suffix):
    with atomic_output(path, suffix) as tmp, open(tmp, "w", encoding="utf-8") as f:
        write(f)
    return os.fspath(path)


def current_umask() -> int:
    """The process's umask (read by setting it and setting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(path, suffix="", prefix=".tmp-"):
    """Yield a temporary sibling of ``path`` to write (by any writer: savefig, csv, ...); on success it is fsynced,
    given the permissions ``open`` would give and renamed to ``path``; on failure removed. ``suffix`` keeps writers
    that infer the format from the name; ``prefix`` names the temporaries (so a resumed job can find stale ones)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
