"""Helpers shared by the dataset readers: data_dir checks, file-existence checks by directory listing, reading
label files, and on-disk caches that are either complete or absent.

Caches live under ``cache_dir`` (default :func:`default_cache_dir`: ``$REMOP_USB_CACHE``, else
``$XDG_CACHE_HOME/remop-usb``, else ``~/.cache/remop-usb``). Each cache entry is named after :func:`file_signature`
of the files it was made from (their real path, size and modification time), so editing, replacing or moving a
source file makes a new entry and the old one is simply no longer used. Entries are built under a temporary name
and renamed into place at the end (:class:`AtomicCacheDir`, :func:`save_npz_atomic`): an interrupted build leaves
no entry that could be mistaken for a complete one.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections import defaultdict
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np

from remop_usb.errors import UserError
from remop_usb.fileio import atomic_output, current_umask

from .labels import CANONICAL

__all__ = ["SHOW_MISSING", "check_data_dir", "read_lines", "check_files_exist", "default_cache_dir",
           "resolve_cache_dir", "file_signature", "AtomicCacheDir", "save_npz_atomic", "resolve_num_classes",
           "seven_classes", "count_or_none"]

#: how many missing paths an error message shows
SHOW_MISSING = 3


def check_data_dir(data_dir, dataset: str, layout: str) -> str:
    """``data_dir`` as an absolute path; :class:`UserError` (with the expected ``layout``) if it is not a folder."""
    root = os.path.abspath(os.path.expanduser(os.fspath(data_dir)))
    if not os.path.isdir(root):
        what = "is not a directory" if os.path.exists(root) else "does not exist"
        raise UserError(f"{dataset} data_dir {root} {what}; {layout}")
    return root


def read_lines(path: str, what: str) -> List[str]:
    """The lines of text file ``path`` (UTF-8, BOM and CR/LF tolerated), or a one-line :class:`UserError`."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            return fh.read().splitlines()
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: {what} is not a UTF-8/ASCII text file ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise UserError(f"cannot read {what} {path}: {err.strerror or err}") from None


def resolve_num_classes(num_classes, default: int, dataset: str, seven: str) -> int:
    """``num_classes`` (None -> ``default``) checked to be 7 or 8; ``seven`` says what 7 classes drop."""
    value = default if num_classes is None else num_classes
    if isinstance(value, bool) or value not in (7, 8):
        raise UserError(f"{dataset}: num_classes must be 8 (the paper) or 7 ({seven}), not {num_classes!r}")
    return int(value)


def seven_classes(num_classes, dataset: str) -> int:
    """7, the class count of a seven-class dataset: ``num_classes`` must be None or 7; ``dataset`` names it in
    the error (e.g. ``'RAF-DB (basic)'``)."""
    if num_classes is not None and num_classes != 7:
        raise UserError(f"{dataset} has 7 classes ({', '.join(CANONICAL[:7])}), not num_classes={num_classes}")
    return 7


def count_or_none(text: str) -> Optional[int]:
    """``text`` (surrounding white space ignored) as a non-negative integer if it is ASCII digits, else None."""
    s = text.strip()
    return int(s) if s.isascii() and s.isdigit() else None


def folder_listing(folder: str) -> Optional[set]:
    """Names in ``folder`` (one ``os.scandir``), or None if it is not a readable directory."""
    try:
        with os.scandir(folder) as it:
            return {entry.name for entry in it}
    except OSError:
        return None


def check_files_exist(paths: Sequence[str], source: str, layout: str) -> None:
    """Raise one :class:`UserError` if any of ``paths`` is missing; lists each parent folder once, opens nothing.

    ``source`` says where the paths were listed (e.g. the label file), ``layout`` what was expected.
    """
    by_folder: Dict[str, List[str]] = defaultdict(list)
    for p in paths:
        folder, _, name = p.rpartition(os.sep)
        by_folder[folder].append(name)
    missing: List[str] = []
    for folder in sorted(by_folder):
        present = folder_listing(folder) or set()
        missing.extend(folder + os.sep + n for n in by_folder[folder] if n not in present)
    if missing:
        raise UserError(f"{len(missing)} of {len(paths)} images listed in {source} are missing, e.g. "
                        f"{', '.join(missing[:SHOW_MISSING])}; {layout}")


# --------------------------------------------------------------------------------------------------- caches


def default_cache_dir() -> str:
    """``$REMOP_USB_CACHE``, else ``$XDG_CACHE_HOME/remop-usb``, else ``~/.cache/remop-usb``, as an absolute path."""
    if os.environ.get("REMOP_USB_CACHE"):
        return os.path.abspath(os.path.expanduser(os.environ["REMOP_USB_CACHE"]))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.abspath(os.path.expanduser(os.path.join(base, "remop-usb")))


def resolve_cache_dir(cache_dir) -> str:
    """``cache_dir`` (None -> :func:`default_cache_dir`) as an absolute path."""
    return os.path.abspath(os.path.expanduser(os.fspath(cache_dir))) if cache_dir is not None \
        else default_cache_dir()


def file_signature(paths: Iterable[str], *extra) -> str:
    """16 hex digits identifying the current version of ``paths`` (real path, size, mtime in ns) plus ``extra``."""
    h = hashlib.sha256()
    for p in paths:
        st = os.stat(p)
        h.update(f"{os.path.realpath(p)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    for e in extra:
        h.update(f"{e}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:16]


def _cache_error(path: str, err: OSError) -> UserError:
    return UserError(f"cannot write the cache {path}: {err.strerror or err}; pass a writable cache_dir")


class AtomicCacheDir:
    """Build a cache folder under a temporary name; rename it to ``target`` only if the block completes.

    ``with AtomicCacheDir(target) as tmp:`` -- fill ``tmp``; on success it becomes ``target``. If another process
    created ``target`` meanwhile, its copy is kept and ``tmp`` discarded. With ``replace`` an existing ``target``
    (a damaged entry) is moved aside and removed once the new one is in place. On an exception nothing is left.
    """

    def __init__(self, target: str, replace: bool = False):
        self.target, self.replace = target, replace

    def __enter__(self) -> str:
        parent, name = os.path.split(self.target)
        try:
            os.makedirs(parent, exist_ok=True)
            self.tmp = tempfile.mkdtemp(prefix=f".{name}.partial-", dir=parent)
        except OSError as err:
            raise _cache_error(self.target, err) from None
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        old = None
        try:
            if exc_type is not None:
                return False
            os.chmod(self.tmp, 0o777 & ~current_umask())  # mkdtemp makes it 0700
            if self.replace and os.path.lexists(self.target):
                parent, name = os.path.split(self.target)
                old = tempfile.mkdtemp(prefix=f".{name}.old-", dir=parent)
                os.rename(self.target, os.path.join(old, "entry"))
            try:
                os.rename(self.tmp, self.target)
            except OSError:
                if not os.path.isdir(self.target):  # not a concurrent writer's finished copy: a real failure
                    raise
            return False
        except OSError as err:
            raise _cache_error(self.target, err) from None
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)


def save_npz_atomic(path: str, **arrays) -> None:
    """``np.savez`` to a temporary sibling, then rename onto ``path`` (complete or absent, never half-written)."""
    try:
        with atomic_output(path, suffix=".npz") as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)
    except OSError as err:
        raise _cache_error(path, err) from None
