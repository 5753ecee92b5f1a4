"""AffectNet (manually annotated part) read as an index of image paths and expression codes, fast enough for its
287,651 training rows: no image is opened, no pixel is held.

Two on-disk layouts are accepted (the csv layout wins when both are present)::

    csv layout (the original release)
        <data_dir>/training.csv, validation.csv        (or in <data_dir>/Manually_Annotated_file_lists/)
        <data_dir>/Manually_Annotated_Images/<subDirectory_filePath>
                                                       (or <data_dir>/Manually_Annotated/Manually_Annotated_Images/)
    npy layout (the newer release)
        <data_dir>/train_set/images/<n>.jpg   <data_dir>/train_set/annotations/<n>_exp.npy  (_val, _aro, _lnd unused)
        <data_dir>/val_set/images/<n>.jpg     <data_dir>/val_set/annotations/<n>_exp.npy

**csv layout.** The lists have the header ``subDirectory_filePath,face_x,face_y,face_width,face_height,
facial_landmarks,expression,valence,arousal``; only ``subDirectory_filePath`` (e.g. ``689/737db2...ca.jpg``, relative
to the image folder) and ``expression`` are read, columns found by header name. A list without a header is read in
that standard column order. Lines are split on commas directly (a line holding a double quote goes through the
``csv`` module), which indexes the 287,651-row ``training.csv`` in well under the time ``csv.reader`` needs.

**npy layout.** Each ``<n>_exp.npy`` holds one value, the code as a string (``'3'``) or a number; the header of
each distinct npy format is parsed once, so reading 287k files costs one open/read each.

**Labels.** Expression codes: 0 Neutral, 1 Happy, 2 Sad, 3 Surprise, 4 Fear, 5 Disgust, 6 Anger, 7 Contempt -- the
canonical order (:data:`datasets_fer.labels.AFFECTNET_TO_CANONICAL` is the identity) -- and 8 None, 9 Uncertain,
10 No-Face, which are dropped. ``num_classes`` 8 (default; the paper's 287,651-image unlabeled pool) keeps 0-7;
7 also drops contempt (283,901 training images). ``training.csv`` / ``train_set`` is the train split;
``validation.csv`` / ``val_set`` (about 500 images per class) is the test split; there is no valid split. Splits are
sorted by relative path (csv layout) or by the number ``n`` (npy layout).

**Cache.** The parsed index (relative paths and all codes 0-10) is saved as ``<cache_dir>/affectnet-<key>.npz``
(written to a temporary file and renamed) and reused while the sources are unchanged: the key covers the real path,
size and mtime of the two lists (csv layout), or the name, size and mtime of every ``*_exp.npy`` (npy layout, one
directory listing per set). ``cache_dir`` defaults to ``$REMOP_USB_CACHE``, else ``~/.cache/remop-usb``; an
unwritable cache only costs speed. ``check_images`` checks that every image exists with one ``os.scandir`` per
image folder; nothing is opened.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import itertools
import math
import os
import zlib
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from datasets_fer.common import (check_data_dir, check_files_exist, file_signature, resolve_cache_dir,
                                 resolve_num_classes, save_npz_atomic)
from datasets_fer.index import FERIndex
from datasets_fer.labels import AFFECTNET_TO_CANONICAL
from remop_usb.errors import UserError, where

__all__ = ["read_affectnet", "EXPRESSION_NAMES", "DROPPED_CODES", "EXPECTED_LAYOUT", "LIST_FILES", "IMAGE_DIRS",
           "NPY_SETS", "STANDARD_COLUMNS", "read_expression_npy"]

EXPRESSION_NAMES = {0: "Neutral", 1: "Happy", 2: "Sad", 3: "Surprise", 4: "Fear", 5: "Disgust", 6: "Anger",
                    7: "Contempt", 8: "None", 9: "Uncertain", 10: "No-Face"}
DROPPED_CODES = (8, 9, 10)
STANDARD_COLUMNS = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "facial_landmarks",
                    "expression", "valence", "arousal")
LIST_FILES = {"train": "training.csv", "test": "validation.csv"}
LIST_DIRS = ("", "Manually_Annotated_file_lists")
IMAGE_DIRS = ("Manually_Annotated_Images", os.path.join("Manually_Annotated", "Manually_Annotated_Images"))
NPY_SETS = {"train": "train_set", "test": "val_set"}
CACHE_FORMAT = 1
EXPECTED_LAYOUT = ("expected either <data_dir>/training.csv and validation.csv (or under "
                   "Manually_Annotated_file_lists/; columns subDirectory_filePath,...,expression,...) with the images "
                   "in <data_dir>/Manually_Annotated_Images/<subDirectory_filePath>, or <data_dir>/train_set/ and "
                   "val_set/ each with images/<n>.jpg and annotations/<n>_exp.npy")

_CODE_OF_TEXT = {str(c): c for c in EXPRESSION_NAMES}

#: split -> (folder the relative paths start from, relative paths, codes 0-10 as int8); sorted, nothing dropped
_Raw = Dict[str, Tuple[str, List[str], np.ndarray]]


# --------------------------------------------------------------------------------------------------- csv layout


def _list_columns(header_line: str, path: str) -> Tuple[int, int, int, bool]:
    """(path column, expression column, field count, whether line 1 is a header)."""
    fields = [f.strip() for f in next(csv.reader([header_line]), [])]
    if "subDirectory_filePath" in fields and "expression" in fields:
        return fields.index("subDirectory_filePath"), fields.index("expression"), len(fields), True
    if len(fields) == len(STANDARD_COLUMNS) and "/" in fields[0]:  # no header: the standard column order
        return 0, STANDARD_COLUMNS.index("expression"), len(STANDARD_COLUMNS), False
    raise UserError(f"{where(path, 1)}: expected the header {','.join(STANDARD_COLUMNS)} (at least "
                    f"subDirectory_filePath and expression), found {header_line.strip()[:100]!r}")


def _parse_list(path: str) -> Tuple[List[str], np.ndarray]:
    """Relative image paths and expression codes (0-10) of one AffectNet list file, in file order."""
    rels: List[str] = []
    codes: List[int] = []
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            first = fh.readline()
            pcol, ecol, width, has_header = _list_columns(first, path)
            lines = fh if has_header else itertools.chain([first], fh)
            for line_no, line in enumerate(lines, start=2 if has_header else 1):
                line = line.rstrip("\r\n")
                fields = line.split(",") if '"' not in line else next(csv.reader([line]), [])
                if len(fields) != width:
                    if not line.strip():
                        continue
                    raise UserError(f"{where(path, line_no)}: expected {width} comma-separated fields "
                                    f"({','.join(STANDARD_COLUMNS)}), found {len(fields)}")
                code = _CODE_OF_TEXT.get(fields[ecol])
                if code is None:
                    code = _CODE_OF_TEXT.get(fields[ecol].strip())
                rel = fields[pcol].strip()
                if code is None or not rel or rel.startswith("/") or "\\" in rel:
                    _bad_row(path, line_no, rel, fields[ecol])
                rels.append(rel)
                codes.append(code)
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not a UTF-8/ASCII text file ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise UserError(f"cannot read AffectNet list {path}: {err.strerror or err}") from None
    return rels, np.array(codes, dtype=np.int8)


def _bad_row(path: str, line_no: int, rel: str, code: str):
    if not rel or rel.startswith("/") or "\\" in rel:
        raise UserError(f"{where(path, line_no)}: expected a relative image path like '689/737db2.jpg' in "
                        f"subDirectory_filePath, found {rel!r}")
    raise UserError(f"{where(path, line_no)}: expected an expression code, an integer 0-10 (0 Neutral, 1 Happy, "
                    f"2 Sad, 3 Surprise, 4 Fear, 5 Disgust, 6 Anger, 7 Contempt, 8 None, 9 Uncertain, 10 No-Face), "
                    f"found {code!r} for {rel}")


def _find_lists(root: str) -> Optional[Dict[str, str]]:
    """split -> list file, or None when no list is there; UserError when only one of the two is."""
    for sub in LIST_DIRS:
        paths = {s: os.path.join(root, sub, f) for s, f in LIST_FILES.items()}
        found = [p for p in paths.values() if os.path.isfile(p)]
        if len(found) == 2:
            return paths
        if found:
            missing = [p for p in paths.values() if p not in found]
            raise UserError(f"AffectNet: found {found[0]} but not {missing[0]}; {EXPECTED_LAYOUT}")
    return None


def _image_dir(root: str, check_images: bool) -> str:
    for sub in IMAGE_DIRS:
        if os.path.isdir(os.path.join(root, sub)):
            return os.path.join(root, sub)
    if check_images:
        raise UserError(f"AffectNet image folder {os.path.join(root, IMAGE_DIRS[0])} does not exist; "
                        f"{EXPECTED_LAYOUT}")
    return os.path.join(root, IMAGE_DIRS[0])


def _sorted_by_path(rels: List[str], codes: np.ndarray) -> Tuple[List[str], np.ndarray]:
    order = sorted(range(len(rels)), key=rels.__getitem__)
    return [rels[i] for i in order], codes[np.asarray(order, dtype=np.int64)]


def _read_csv_layout(lists: Dict[str, str], image_dir: str, cache_dir) -> _Raw:
    def build():
        return {split: _sorted_by_path(*_parse_list(path)) for split, path in lists.items()}

    key = file_signature([lists["train"], lists["test"]], CACHE_FORMAT, "csv")
    parsed = _cached(cache_dir, key, build)
    return {split: (image_dir, rels, codes) for split, (rels, codes) in parsed.items()}


# --------------------------------------------------------------------------------------------------- npy layout

_NPY_MAGIC = b"\x93NUMPY"
_NPY_MAX_BYTES = 1 << 16  # a one-value annotation is ~130 bytes; anything longer is not one
_npy_formats: Dict[bytes, Optional[Tuple[np.dtype, int]]] = {}


def _npy_format(header: bytes) -> Optional[Tuple[np.dtype, int]]:
    """(dtype, element count) of an npy header dict, parsed once per distinct header; None if unusable."""
    if header not in _npy_formats:
        try:
            d = ast.literal_eval(header.decode("latin1"))
            dtype = np.lib.format.descr_to_dtype(d["descr"])
            _npy_formats[header] = None if dtype.hasobject else (dtype, math.prod(d["shape"]))
        except (ValueError, SyntaxError, KeyError, TypeError):
            _npy_formats[header] = None
    return _npy_formats[header]


def _npy_value(data: bytes):
    """The single element stored in npy bytes ``data``, or None."""
    if data[:6] != _NPY_MAGIC or len(data) < 10:
        return None
    size_bytes = 2 if data[6] == 1 else 4
    start = 8 + size_bytes
    end = start + int.from_bytes(data[8:start], "little")
    fmt = _npy_format(data[start:end])
    if fmt is None or fmt[1] != 1 or len(data) < end + fmt[0].itemsize:
        return None
    return np.frombuffer(data, dtype=fmt[0], count=1, offset=end)[0]


def _code_of(value) -> Optional[int]:
    if isinstance(value, (str, bytes, np.str_, np.bytes_)):
        text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
        return _CODE_OF_TEXT.get(text.strip())
    if isinstance(value, (np.integer, np.floating)) and float(value).is_integer():
        return int(value) if 0 <= value <= 10 else None
    return None


def read_expression_npy(path: str) -> int:
    """The expression code (0-10) in one ``<n>_exp.npy``, or a one-line :class:`UserError`."""
    try:  # os.open/os.read: a third of the cost of open() for 287k tiny files
        fd = os.open(path, os.O_RDONLY)
        try:
            data = os.read(fd, _NPY_MAX_BYTES)
        finally:
            os.close(fd)
    except OSError as err:
        raise UserError(f"cannot read AffectNet annotation {path}: {err.strerror or err}") from None
    value = _npy_value(data)
    code = None if value is None else _code_of(value)
    if code is None:
        shown = "an unreadable or multi-value npy file" if value is None else repr(value.item())
        raise UserError(f"{path}: expected one AffectNet expression code 0-10 (e.g. np.save of '3'), "
                        f"found {shown}")
    return code


def _annotation_stems(folder: str) -> Tuple[List[str], str]:
    """Sorted ``<n>`` of every ``<n>_exp.npy`` in ``folder``, and a digest of their names, sizes and mtimes."""
    stems, count, total, latest, names_crc, times = [], 0, 0, 0, 0, 0
    try:
        with os.scandir(folder) as it:
            for e in it:
                if e.name.endswith("_exp.npy"):
                    st = e.stat()
                    stems.append(e.name[:-8])
                    count, total, times = count + 1, total + st.st_size, times + st.st_mtime_ns
                    latest = max(latest, st.st_mtime_ns)
                    names_crc ^= zlib.crc32(e.name.encode("utf-8", "surrogateescape"))
    except OSError as err:
        raise UserError(f"cannot list AffectNet annotations {folder}: {err.strerror or err}; {EXPECTED_LAYOUT}") \
            from None
    stems.sort(key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0, s))
    digest = f"{os.path.realpath(folder)}|{count}|{total}|{latest}|{times}|{names_crc}"
    return stems, digest


def _read_npy_layout(sets: Dict[str, str], cache_dir) -> _Raw:
    listed = {split: _annotation_stems(os.path.join(d, "annotations")) for split, d in sets.items()}
    for split, (stems, _) in listed.items():
        if not stems:
            raise UserError(f"AffectNet: no *_exp.npy in {os.path.join(sets[split], 'annotations')}; "
                            f"{EXPECTED_LAYOUT}")

    def build():
        out = {}
        for split, (stems, _) in listed.items():
            folder = os.path.join(sets[split], "annotations")
            codes = np.array([read_expression_npy(os.path.join(folder, s + "_exp.npy")) for s in stems],
                             dtype=np.int8)
            out[split] = (["images/" + s + ".jpg" for s in stems], codes)
        return out

    key = hashlib.sha256("\n".join(listed[s][1] for s in sorted(listed)).encode("utf-8", "surrogateescape"))
    parsed = _cached(cache_dir, f"{key.hexdigest()[:16]}-npy{CACHE_FORMAT}", build)
    return {split: (sets[split], rels, codes) for split, (rels, codes) in parsed.items()}


# --------------------------------------------------------------------------------------------------- cache


def _cached(cache_dir, key: str, build: Callable[[], Dict[str, Tuple[List[str], np.ndarray]]]):
    """``build()`` (split -> (relative paths, codes)), loaded from / saved to ``affectnet-<key>.npz``."""
    path = os.path.join(resolve_cache_dir(cache_dir), f"affectnet-{key}.npz")
    try:
        with np.load(path, allow_pickle=False) as z:
            loaded = {split: (_unpack(z[split + "_paths"]), z[split + "_codes"]) for split in LIST_FILES}
        if all(len(rels) == len(codes) for rels, codes in loaded.values()):
            return loaded
    except (OSError, KeyError, ValueError, UnicodeDecodeError):
        pass  # no (usable) cache entry: build it
    parsed = build()
    arrays = {}
    for split, (rels, codes) in parsed.items():
        arrays[split + "_paths"] = np.frombuffer("\n".join(rels).encode("utf-8", "surrogateescape"), dtype=np.uint8)
        arrays[split + "_codes"] = codes
    try:
        save_npz_atomic(path, **arrays)
    except UserError:
        pass  # an unwritable cache only costs speed next time
    return parsed


def _unpack(buf: np.ndarray) -> List[str]:
    text = buf.tobytes().decode("utf-8", "surrogateescape")
    return text.split("\n") if text else []


# --------------------------------------------------------------------------------------------------- index


def _npy_sets(root: str) -> Optional[Dict[str, str]]:
    sets = {s: os.path.join(root, d) for s, d in NPY_SETS.items()}
    found = [d for d in sets.values() if os.path.isdir(os.path.join(d, "annotations"))]
    if len(found) == 2:
        return sets
    if found:
        missing = [d for d in sets.values() if d not in found]
        raise UserError(f"AffectNet: found {os.path.join(found[0], 'annotations')} but not "
                        f"{os.path.join(missing[0], 'annotations')}; {EXPECTED_LAYOUT}")
    return None


def read_affectnet(data_dir, *, num_classes=None, cache_dir=None, check_images: bool = True) -> FERIndex:
    """Index AffectNet under ``data_dir`` (either layout, see the module docstring); codes 8-10 dropped.

    ``num_classes`` 8 (default) keeps codes 0-7, 7 keeps 0-6. ``cache_dir`` holds the parsed index.
    ``check_images`` checks that every kept image exists (one directory listing per folder, nothing opened).
    """
    num_classes = resolve_num_classes(num_classes, 8, "AffectNet", "contempt dropped")
    root = check_data_dir(data_dir, "AffectNet", EXPECTED_LAYOUT)
    lists = _find_lists(root)
    if lists is not None:
        layout, sources = "csv", lists
        raw = _read_csv_layout(lists, _image_dir(root, check_images), cache_dir)
    else:
        sets = _npy_sets(root)
        if sets is None:
            raise UserError(f"AffectNet: no training.csv or train_set/annotations in {root}; {EXPECTED_LAYOUT}")
        layout, sources = "npy", {s: os.path.join(d, "annotations") for s, d in sets.items()}
        raw = _read_npy_layout(sets, cache_dir)
    canonical = np.array([AFFECTNET_TO_CANONICAL.get(c, -1) for c in range(len(EXPRESSION_NAMES))], dtype=np.int64)
    out = {}
    for split, (base, rels, codes) in raw.items():
        keep = np.flatnonzero(codes < num_classes)  # 8-10 always dropped; 7 (contempt) too for 7 classes
        if keep.size == 0:
            raise UserError(f"AffectNet: none of the {len(rels)} {split} images listed in {sources[split]} has an "
                            f"expression code 0-{num_classes - 1} (8 None, 9 Uncertain, 10 No-Face are dropped)")
        prefix = base + os.sep
        paths = [prefix + rels[i] for i in keep.tolist()]
        if check_images:
            check_files_exist(paths, sources[split], EXPECTED_LAYOUT)
        out[split + "_paths"], out[split + "_labels"] = paths, canonical[codes[keep]]
    return FERIndex(num_classes=num_classes, data_dir=root, label_file=sources["train"], layout=layout, **out)
