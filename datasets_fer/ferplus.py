"""FERPlus (FER2013 images with the FER+ crowd votes) read as an index of image paths and majority-vote labels.

Two on-disk layouts are accepted; the folder layout is used when both are present (it needs no decoding)::

    csv layout (as distributed: FER2013's CSV + Microsoft's FER+ votes)
        <data_dir>/fer2013.csv      emotion,pixels,Usage
        <data_dir>/fer2013new.csv   Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,
                                    contempt,unknown,NF
    folder layout (what Microsoft's generate_training_data.py writes)
        <data_dir>/FER2013Train/label.csv + fer0000000.png ...
        <data_dir>/FER2013Valid/label.csv + *.png               (optional)
        <data_dir>/FER2013Test/label.csv  + *.png

**csv layout.** The two files are joined BY ROW: data row ``r`` of ``fer2013.csv`` (48x48 grey pixels, 2304
space-separated integers 0-255) is data row ``r`` of ``fer2013new.csv`` (ten vote counts). The ``Usage`` of the two
rows must agree (it is checked: a mismatch means the files are not the same release). Rows whose ``Image name`` is
empty are skipped, but still count as rows, so the join stays aligned. FER2013's own ``emotion`` column is ignored.
Columns of ``fer2013.csv`` are found by header name (so ``emotion, Usage, pixels`` with spaces also works).
The pixels are decoded once into PNG files under ``<cache_dir>/ferplus-<signature>/<r:05d>.png`` (``r`` the 0-based
data row; the signature covers the real path, size and mtime of both CSV files), built under a temporary name and
renamed into place when complete; later reads reuse it without opening ``fer2013.csv``. With ``check_images`` a
cache entry with missing files is rebuilt. ``cache_dir`` defaults to ``$REMOP_USB_CACHE``, else
``~/.cache/remop-usb`` (:func:`datasets_fer.common.default_cache_dir`).

**folder layout.** ``label.csv`` has no header; each line is ``<name>,"(0, 0, 48, 48)",<10 vote counts>`` (the face
box is ignored, as Microsoft's reader does) and the image is ``<folder>/<name>``.

**Labels: Microsoft's "majority" mode** (``FERPlusReader._process_data`` in github.com/microsoft/FERPlus), applied to
the ten counts ``neutral, happiness, surprise, sadness, anger, disgust, fear, contempt, unknown, NF``
(:func:`majority_vote`):

1. outliers: every count <= 1 (a single annotator's vote) is set to 0, in all ten columns;
2. with ``total`` the sum of what remains, the column with the largest count wins if ``2 * count > total`` (a
   strict majority of the remaining votes); otherwise there is no majority (this includes every tie for first
   place, since two tied counts cannot both exceed half, and rows whose votes were all single);
3. rows with no majority, or whose winner is ``unknown`` or ``NF`` (not a face), are dropped.

Example: ``5,1,1,1,1,1,0,0,0,0`` keeps neutral (the five single votes are outliers: 5 of 5); ``4,4,2,0,...`` and
``3,3,2,2,0,...`` are dropped (no strict majority); ``2,0,0,0,0,0,0,0,6,2`` is dropped (unknown wins). The winning
column is mapped to the canonical order with :data:`datasets_fer.labels.FERPLUS_TO_CANONICAL`. ``num_classes`` is 8
by default (the paper); 7 drops the rows that contempt wins (the vote itself is unchanged).

Splits: ``Usage`` Training -> train, PublicTest -> valid (:attr:`FERIndex.valid_paths`), PrivateTest -> test; in the
folder layout FER2013Train / FER2013Valid / FER2013Test. The official release gives 25,060 train / 3,199 valid /
3,153 test images (train per vote column: 8740, 7287, 3149, 3014, 2100, 119, 532, 119). Image names are not unique
in the official ``fer2013new.csv`` (four are repeated): every row is kept, as Microsoft's reader does. Within a split
entries are sorted by (image name, row). Blank lines are ignored; every other problem is a one-line
:class:`~remop_usb.errors.UserError` naming the file and line and what was expected.
"""

from __future__ import annotations

import csv
import json
import os
import warnings
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from datasets_fer.common import (AtomicCacheDir, check_data_dir, check_files_exist, count_or_none, folder_listing,
                                 file_signature, read_lines, resolve_cache_dir, resolve_num_classes)
from datasets_fer.index import FERIndex
from datasets_fer.labels import FERPLUS_TO_CANONICAL
from remop_usb.errors import UserError, where

__all__ = ["read_ferplus", "majority_vote", "VOTE_COLUMNS", "UNKNOWN", "NOT_FACE", "NO_MAJORITY", "EXPECTED_LAYOUT",
           "FER_CSV", "NEW_CSV", "SPLIT_FOLDERS", "LABEL_CSV", "cache_folder"]

VOTE_COLUMNS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt", "unknown",
                "NF")
#: :func:`majority_vote` results that are not an emotion column (0-7)
UNKNOWN, NOT_FACE, NO_MAJORITY = 8, 9, -1
USAGE_TO_SPLIT = {"Training": "train", "PublicTest": "valid", "PrivateTest": "test"}
SPLIT_FOLDERS = {"train": "FER2013Train", "valid": "FER2013Valid", "test": "FER2013Test"}
FER_CSV, NEW_CSV, LABEL_CSV = "fer2013.csv", "fer2013new.csv", "label.csv"
NEW_HEADER = ("Usage", "Image name") + VOTE_COLUMNS
SIDE = 48  # FER2013 images are 48x48 grey
CACHE_FORMAT = 1
MANIFEST = "MANIFEST.json"
EXPECTED_LAYOUT = ("expected either <data_dir>/fer2013.csv (emotion,pixels,Usage) with <data_dir>/fer2013new.csv "
                   "(Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF), "
                   "or <data_dir>/FER2013Train/, FER2013Valid/ (optional), FER2013Test/, each holding its PNG images "
                   "and a header-less label.csv (<name>,\"(0, 0, 48, 48)\",<10 vote counts>)")


class _Row(NamedTuple):
    """One voted image: ``row`` is the 0-based data row (csv layout) or the label.csv line (folder layout)."""

    split: str
    name: str
    row: int
    votes: Tuple[int, ...]
    path: str


def majority_vote(votes: Sequence[int]) -> int:
    """The winning column (0-9) of ten FER+ vote counts, or :data:`NO_MAJORITY` (see the module docstring).

    0-7 are the emotions, :data:`UNKNOWN` (8) and :data:`NOT_FACE` (9) win like any other column.
    """
    kept = [v if v > 1 else 0 for v in votes]  # single votes are outliers
    best = max(range(len(kept)), key=kept.__getitem__)
    return best if 2 * kept[best] > sum(kept) else NO_MAJORITY


# --------------------------------------------------------------------------------------------------- parsing


def _parse_votes(fields: Sequence[str], path: str, line: int) -> Tuple[int, ...]:
    votes = tuple(count_or_none(f) for f in fields)
    if None in votes:
        raise UserError(f"{where(path, line)}: expected 10 vote counts (non-negative integers, in the order "
                        f"{','.join(VOTE_COLUMNS)}), found {','.join(fields)[:80]!r}")
    return votes


def _check_name(name: str, path: str, line: int) -> str:
    if name in (".", "..") or "/" in name or "\\" in name:
        raise UserError(f"{where(path, line)}: expected an image file name like 'fer0000000.png' (no folders), "
                        f"found {name!r}")
    return name


def _read_new_csv(path: str) -> List[Tuple[str, str, Tuple[int, ...], int]]:
    """``(usage, name, votes, line)`` for every data row of ``fer2013new.csv``, in file order."""
    lines = read_lines(path, "FER+ vote file")
    reader = csv.reader(lines)
    header = next(reader, None)
    if header is None or tuple(h.strip() for h in header) != NEW_HEADER:
        found = ",".join(header)[:120] if header else "an empty file"
        raise UserError(f"{where(path, 1)}: expected the header {','.join(NEW_HEADER)}, found {found!r}")
    rows = []
    for line, fields in enumerate(reader, start=2):
        if not fields:
            continue
        if len(fields) != len(NEW_HEADER):
            raise UserError(f"{where(path, line)}: expected {len(NEW_HEADER)} fields (Usage, Image name, "
                            f"10 vote counts), found {len(fields)}")
        usage = fields[0].strip()
        if usage not in USAGE_TO_SPLIT:
            raise UserError(f"{where(path, line)}: expected Usage Training, PublicTest or PrivateTest, "
                            f"found {fields[0]!r}")
        name = _check_name(fields[1].strip(), path, line)
        rows.append((usage, name, _parse_votes(fields[2:], path, line), line))
    return rows


def _read_label_csv(path: str, split: str, folder: str) -> List[_Row]:
    """The rows of one header-less folder-layout ``label.csv`` (names checked, images not)."""
    rows = []
    for line, fields in enumerate(csv.reader(read_lines(path, "FERPlus label file")), start=1):
        if not fields:
            continue
        if len(fields) != 12:
            raise UserError(f"{where(path, line)}: expected 12 fields (<name>,\"(0, 0, 48, 48)\",<10 vote counts>), "
                            f"found {len(fields)}: {','.join(fields)[:80]!r}")
        name = _check_name(fields[0].strip(), path, line)
        if name:
            rows.append(_Row(split, name, line, _parse_votes(fields[2:], path, line), os.path.join(folder, name)))
    return rows


# --------------------------------------------------------------------------------------------------- folder layout


def _read_folder_layout(root: str, check_images: bool) -> Tuple[List[_Row], str]:
    rows, label_files = [], []
    for split, sub in SPLIT_FOLDERS.items():
        folder = os.path.join(root, sub)
        label = os.path.join(folder, LABEL_CSV)
        if not os.path.isfile(label):
            if split == "valid":
                continue
            raise UserError(f"FERPlus label file {label} not found; {EXPECTED_LAYOUT}")
        split_rows = _read_label_csv(label, split, folder)
        if check_images:
            check_files_exist(sorted({r.path for r in split_rows}), label, EXPECTED_LAYOUT)
        rows += split_rows
        label_files.append(label)
    return rows, label_files[0]


# --------------------------------------------------------------------------------------------------- csv layout


def cache_folder(cache_dir, data_dir) -> str:
    """The cache entry that holds (or will hold) the decoded images of ``data_dir``'s current CSV files."""
    paths = [os.path.join(os.path.abspath(os.fspath(data_dir)), f) for f in (FER_CSV, NEW_CSV)]
    return os.path.join(resolve_cache_dir(cache_dir), f"ferplus-{file_signature(paths, CACHE_FORMAT)}")


def _cached_name(row: int) -> str:
    return f"{row:05d}.png"


def _decode_pixels(text: str, path: str, line: int) -> np.ndarray:
    """48x48 uint8 image from FER2013's space-separated pixel string (DeprecationWarnings raised as errors)."""
    try:
        values = np.fromstring(text, dtype=np.int32, sep=" ")
    except (ValueError, DeprecationWarning):
        values = None
    if values is None or values.size != SIDE * SIDE or values.min() < 0 or values.max() > 255:
        tokens = text.split()
        bad = next((t for t in tokens if not (t.isascii() and t.isdigit() and int(t) <= 255)), None)
        found = f"{len(tokens)} values" if len(tokens) != SIDE * SIDE or bad is None else f"the value {bad!r}"
        raise UserError(f"{where(path, line)}: expected {SIDE * SIDE} space-separated integers 0-255 (a {SIDE}x{SIDE} "
                        f"grey image) in the pixels column, found {found}")
    return values.astype(np.uint8).reshape(SIDE, SIDE)


def _fer_columns(header: Optional[List[str]], path: str) -> Tuple[int, int, int]:
    names = [h.strip() for h in header or []]
    if "pixels" not in names or "Usage" not in names:
        found = ",".join(header)[:80] if header else "an empty file"
        raise UserError(f"{where(path, 1)}: expected a header with the columns emotion,pixels,Usage, found {found!r}")
    return names.index("pixels"), names.index("Usage"), len(names)


def _decode_all(fer_path: str, new_path: str, new_rows, out: str) -> int:
    """Stream ``fer2013.csv``, check the row join, write the PNG of every named row into ``out``; rows read."""
    r = 0
    with open(fer_path, encoding="utf-8-sig", newline="") as fh, warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # np.fromstring's "could not be read to its end"
        reader = csv.reader(fh)
        pixels, usage, width = _fer_columns(next(reader, None), fer_path)
        for fields in reader:
            if not fields:
                continue
            line = reader.line_num
            if len(fields) != width:
                raise UserError(f"{where(fer_path, line)}: expected {width} fields (emotion,pixels,Usage), "
                                f"found {len(fields)}")
            if r >= len(new_rows):
                raise UserError(f"{where(fer_path, line)}: more data rows than the {len(new_rows)} of {new_path}; "
                                f"the two files are joined by row and must come from the same release")
            new_usage, name, _, new_line = new_rows[r]
            if fields[usage].strip() != new_usage:
                raise UserError(f"{where(fer_path, line)}: Usage {fields[usage].strip()!r} but the same row of "
                                f"{where(new_path, new_line)} says {new_usage!r}; the files are joined by row and "
                                f"must come from the same release")
            if name:
                img = _decode_pixels(fields[pixels], fer_path, line)
                Image.fromarray(img, "L").save(os.path.join(out, _cached_name(r)), format="PNG", compress_level=1)
            r += 1
    if r != len(new_rows):
        raise UserError(f"{fer_path} has {r} data rows but {new_path} has {len(new_rows)}; the two files are joined "
                        f"by row and must come from the same release")
    return r


def _cache_is_complete(folder: str, names: Sequence[str], check_images: bool) -> bool:
    if not os.path.isfile(os.path.join(folder, MANIFEST)):
        return False
    if not check_images:
        return True
    present = folder_listing(folder) or set()
    return all(n in present for n in names)


def _read_csv_layout(root: str, cache_dir, check_images: bool) -> Tuple[List[_Row], str]:
    fer_path, new_path = os.path.join(root, FER_CSV), os.path.join(root, NEW_CSV)
    new_rows = _read_new_csv(new_path)
    folder = cache_folder(cache_dir, root)
    names = [_cached_name(r) for r, (_, name, _, _) in enumerate(new_rows) if name]
    if not _cache_is_complete(folder, names, check_images):
        damaged = os.path.isdir(folder)
        with AtomicCacheDir(folder, replace=damaged) as tmp:
            n = _decode_all(fer_path, new_path, new_rows, tmp)
            manifest = {"format": CACHE_FORMAT, "fer2013": fer_path, "fer2013new": new_path, "rows": n,
                        "images": len(names)}
            with open(os.path.join(tmp, MANIFEST), "w", encoding="utf-8") as f:
                json.dump(manifest, f, indent=1, sort_keys=True)
    rows = [_Row(USAGE_TO_SPLIT[usage], name, r, votes, os.path.join(folder, _cached_name(r)))
            for r, (usage, name, votes, _) in enumerate(new_rows) if name]
    return rows, new_path


# --------------------------------------------------------------------------------------------------- index


def _detect_layout(root: str) -> str:
    folders = [os.path.join(root, SPLIT_FOLDERS[s], LABEL_CSV) for s in ("train", "test")]
    csvs = [os.path.join(root, f) for f in (FER_CSV, NEW_CSV)]
    for layout, files in (("folders", folders), ("csv", csvs)):
        found = [f for f in files if os.path.isfile(f)]
        if len(found) == len(files):
            return layout
        if found:
            missing = [f for f in files if f not in found]
            raise UserError(f"FERPlus: found {found[0]} but not {missing[0]}; {EXPECTED_LAYOUT}")
    raise UserError(f"FERPlus: no fer2013new.csv or FER2013Train/label.csv in {root}; {EXPECTED_LAYOUT}")


def _label_rows(rows: Sequence[_Row], num_classes: int) -> Dict[str, list]:
    """Canonical label per row that survives the vote (and the class count), grouped by split."""
    out: Dict[str, list] = {"train": [], "valid": [], "test": []}
    for row in rows:
        label = FERPLUS_TO_CANONICAL.get(majority_vote(row.votes))
        if label is not None and label < num_classes:
            out[row.split].append((row.name, row.row, row.path, label))
    return out


def read_ferplus(data_dir, *, num_classes=None, cache_dir=None, check_images: bool = True) -> FERIndex:
    """Index FERPlus under ``data_dir`` (either layout, see the module docstring) with majority-vote labels.

    ``num_classes`` is 8 (default) or 7 (contempt's rows dropped). ``cache_dir`` holds the decoded images of the csv
    layout. ``check_images`` checks that every image exists (one directory listing per folder, nothing opened).
    """
    num_classes = resolve_num_classes(num_classes, 8, "FERPlus", "contempt's rows dropped")
    root = check_data_dir(data_dir, "FERPlus", EXPECTED_LAYOUT)
    layout = _detect_layout(root)
    if layout == "folders":
        rows, label_file = _read_folder_layout(root, check_images)
    else:
        rows, label_file = _read_csv_layout(root, cache_dir, check_images)
    by_split = _label_rows(rows, num_classes)
    for split in ("train", "test"):
        if not by_split[split]:
            listed = sum(r.split == split for r in rows)
            source = label_file if layout == "csv" else os.path.join(root, SPLIT_FOLDERS[split], LABEL_CSV)
            raise UserError(f"FERPlus: no {split} image has a majority-vote emotion label ({listed} {split} rows "
                            f"in {source}); {EXPECTED_LAYOUT}")
    out = {}
    for split, entries in by_split.items():
        if entries or split != "valid":  # no valid rows: valid_paths stays None
            entries.sort()
            out[split + "_paths"] = [e[2] for e in entries]
            out[split + "_labels"] = np.array([e[3] for e in entries], dtype=np.int64)
    return FERIndex(num_classes=num_classes, data_dir=root, label_file=label_file, layout=layout, **out)
