"""Which images cannot be decoded, found once at dataset build time (never mid-epoch), cached across runs.

:func:`unreadable_images` opens every image with PIL in a thread pool and returns the ones that fail with a short
reason. The check decodes the whole file cheaply: a JPEG is decoded in draft mode (libjpeg's 1/8-scale DCT, which
still reads every entropy-coded segment, so a truncated or damaged file fails), any other format is decoded fully
(PNG, BMP: small files here). Zero-byte files, non-images and truncated files are all caught.

Results are cached in ``<cache_dir>/image-check/<16 hex digits>.json``, one file per dataset folder (the digits are
the SHA-256 of its real path), holding ``{relative path: [size, mtime_ns, reason or null]}``. An image whose size and
modification time are unchanged is not opened again, so a 287k-image AffectNet is checked once. A cache that cannot
be read is ignored (everything is checked again); one that cannot be written is reported in one line.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, Optional, Sequence

from PIL import Image

from remop_usb.fileio import write_json_atomic

__all__ = ["check_image", "unreadable_images", "cache_file", "CACHE_VERSION"]

CACHE_VERSION = 1
_REASON_CHARS = 100
_ANNOUNCE = 5000  # print a line before checking at least this many images not in the cache


def check_image(path: str) -> Optional[str]:
    """None if ``path`` decodes, else a short reason such as ``'OSError: image file is truncated'``."""
    try:
        with Image.open(path) as im:
            if im.format == "JPEG":
                im.draft(im.mode, (1, 1))  # decode at the smallest DCT scale: every byte read, 1/64 of the pixels
            im.load()
    except Exception as err:  # noqa: BLE001 -- whatever PIL raises, the image is unusable
        return f"{type(err).__name__}: {str(err).replace(repr(path), 'file')}"[:_REASON_CHARS]
    return None


def cache_file(cache_dir: str, root: str) -> str:
    """The cache file of dataset folder ``root`` under ``cache_dir``."""
    digest = hashlib.sha256(os.path.realpath(root).encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return os.path.join(cache_dir, "image-check", f"{digest}.json")


def _load_cache(path: str, root: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION or data.get("root") != root:
        return {}
    entries = data.get("entries")
    return entries if isinstance(entries, dict) else {}


def _key(path: str, root: str) -> str:
    rel = os.path.relpath(path, root)
    return path if rel.startswith("..") else rel


def _workers() -> int:
    return min(16, 4 * (os.cpu_count() or 1))


def unreadable_images(paths: Sequence[str], root: str, cache_dir: Optional[str]) -> Dict[str, str]:
    """``{path: reason}`` for the images of ``paths`` that cannot be decoded (see the module docstring).

    ``root`` is the dataset folder (it names the cache file and makes the cached paths relative); ``cache_dir``
    None disables the cache. A missing file counts as unreadable.
    """
    root = os.path.abspath(root)
    cache_path = cache_file(cache_dir, root) if cache_dir else None
    cached = _load_cache(cache_path, root) if cache_path else {}

    def one(path, key):
        try:
            st = os.stat(path)
        except OSError as err:
            return key, None, f"{type(err).__name__}: {err.strerror or err}"
        hit = cached.get(key)
        if isinstance(hit, list) and len(hit) == 3 and hit[:2] == [st.st_size, st.st_mtime_ns]:
            return key, hit, hit[2]
        reason = check_image(path)
        return key, [st.st_size, st.st_mtime_ns, reason], reason

    keys = [_key(os.path.abspath(p), root) for p in paths]
    new = sum(1 for key in keys if key not in cached)
    if new >= _ANNOUNCE:
        print(f"[remop-usb] decoding {new} images of {root} once to find unreadable ones"
              + (f" (remembered in {cache_path})" if cache_path else ""))
    with ThreadPoolExecutor(max_workers=_workers()) as pool:
        results = list(pool.map(one, paths, keys))
    bad = {p: reason for p, (_, _, reason) in zip(paths, results) if reason is not None}
    if cache_path:
        entries = {key: entry for key, entry, _ in results if entry is not None}
        if any(cached.get(k) != v for k, v in entries.items()):
            _save_cache(cache_path, root, {**cached, **entries})
    return bad


def _save_cache(path: str, root: str, entries: dict) -> None:
    try:
        write_json_atomic(path, {"version": CACHE_VERSION, "root": root, "entries": entries})
    except OSError as err:
        print(f"[remop-usb] could not write the image-check cache {path} ({err.strerror or err}); the images will "
              f"be checked again next run (set cache_dir to a writable folder)")
