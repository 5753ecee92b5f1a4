"""What every layout writer of the synthetic data shares: the marker, atomic writing, class counts, checks.

* :data:`MARKER_NAME` (``SYNTHETIC_FER.json``), written last by :func:`write_marker`, names the generator and its
  :data:`VERSION`; :func:`read_marker` finds it. :class:`AtomicDir` builds a dataset in a hidden temporary folder
  and moves it into place only once it is complete.
* :func:`largest_remainder` scales a reference class histogram to an exact total; :func:`split_counts` does so
  with one image for every class when there is room.
* :func:`shuffled_labels` (the file order of classes), :func:`noise_image` (a not-a-face picture) and the argument
  checks :func:`check_int`, :func:`check_choice`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
from PIL import Image

from remop_usb.errors import UserError
from remop_usb.fileio import current_umask

from .faces import face_rng

GENERATOR = "remop-usb synthetic FER"
#: Bump when the rendering or a layout changes, so a stale demo dataset can be recognised from its marker.
VERSION = 2
MARKER_NAME = "SYNTHETIC_FER.json"
JPEG_QUALITY = 95

# ---------------------------------------------------------------------------------------------------------------
# Class counts
# ---------------------------------------------------------------------------------------------------------------


def largest_remainder(total: int, weights: Sequence[float]) -> List[int]:
    """Integers proportional to ``weights`` summing exactly to ``total`` (Hamilton / largest-remainder method).

    Each entry gets ``floor(total * w / sum(w))``; the leftover units go to the largest fractional parts (ties:
    larger weight first, then earlier position). Exact integer arithmetic for integer weights. The result never
    reverses the order of two weights (a larger weight never gets a smaller count), though near-equal weights can
    tie at small totals.
    """
    if total < 0:
        raise ValueError("total must be >= 0")
    ws = list(weights)
    if not ws or any(w < 0 for w in ws) or sum(ws) <= 0:
        raise ValueError("weights must be non-negative with a positive sum")
    den = sum(ws)
    if all(isinstance(w, (int, np.integer)) for w in ws):
        num = [total * int(w) for w in ws]
        base = [q // den for q in num]
        rem_key = [q % den for q in num]  # remainders over a common denominator: exact comparison
    else:
        num = [total * w / den for w in ws]
        base = [int(math.floor(q)) for q in num]
        rem_key = [q - b for q, b in zip(num, base)]
    left = total - sum(base)
    order = sorted(range(len(ws)), key=lambda i: (-rem_key[i], -ws[i], i))
    for i in order[:left]:
        base[i] += 1
    return base


def split_counts(total: int, reference: Dict[int, int]) -> Dict[int, int]:
    codes = sorted(reference)
    counts = dict(zip(codes, largest_remainder(total, [reference[c] for c in codes])))
    # A class with no images breaks class-conditional samplers; when there is room, give every class one image,
    # taken from the currently largest class (which keeps the frequency order).
    if total >= len(codes):
        for c in sorted(codes, key=lambda c: -reference[c]):
            if counts[c] == 0:
                big = max(codes, key=lambda d: (counts[d], reference[d]))
                counts[big] -= 1
                counts[c] = 1
    return counts


# ---------------------------------------------------------------------------------------------------------------
# Atomic directory writing
# ---------------------------------------------------------------------------------------------------------------


def is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def read_marker(path) -> Optional[dict]:
    """The synthetic-dataset marker of directory ``path``, or None if there is none (or it is unreadable)."""
    try:
        with open(Path(path) / MARKER_NAME, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("generator") == GENERATOR else None


def check_int(name, value, lo):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise UserError(f"synthetic dataset: {name} must be an integer >= {lo}, got {value!r}")
    return int(value)


PARTIAL_PREFIX = ".synthetic-partial-"


class AtomicDir:
    """Build a dataset in a hidden temporary directory and move it into ``target`` only once it is complete.

    * ``target`` missing: the data is built in a sibling ``.<name>.synthetic-partial-*`` and moved with one rename,
      so ``target`` never exists half-written.
    * ``target`` an existing empty directory (or, with ``overwrite``, a synthetic dataset): renaming onto it would
      fail for a mount point (a container volume) and would strand a process whose working directory it is, so the
      data is built in ``target/.synthetic-partial-*`` and its top-level entries are renamed in, the marker last.
      Until the marker appears the directory does not count as a dataset (``overwrite`` removes the old marker
      first), so an interruption can never leave something that passes for a complete dataset.
    """

    def __init__(self, target, overwrite: bool):
        self.target, self.overwrite = Path(os.path.abspath(target)), overwrite

    def __enter__(self) -> Path:
        t = self.target
        if t.exists() and not t.is_dir():
            raise UserError(f"synthetic dataset: {t} exists and is not a directory")
        self.in_place = t.is_dir()
        if self.in_place:
            if not is_empty_dir(t) and not (self.overwrite and read_marker(t) is not None):
                raise UserError(f"synthetic dataset: {t} already exists and is not empty "
                                "(only an existing synthetic dataset can be overwritten)")
            self.tmp = Path(tempfile.mkdtemp(prefix=PARTIAL_PREFIX, dir=t))
        else:
            t.parent.mkdir(parents=True, exist_ok=True)
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{t.name}{PARTIAL_PREFIX}", dir=t.parent))
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        tmp, t = self.tmp, self.target
        try:
            if exc_type is not None:
                return False
            if not self.in_place:
                os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes it 0700
                try:
                    os.rename(tmp, t)
                except OSError as err:
                    if read_marker(t) is not None:  # a concurrent writer got there first with its own copy
                        return False
                    raise UserError(f"synthetic dataset: could not move the generated data to {t}: {err}") from err
                return False
            entries = sorted(p.name for p in tmp.iterdir() if p.name != MARKER_NAME)
            if self.overwrite:
                (t / MARKER_NAME).unlink(missing_ok=True)  # from here on the old data no longer counts as complete
            for name in entries:
                dst = t / name
                if os.path.lexists(dst):
                    if not self.overwrite:
                        if read_marker(t) is not None:
                            return False
                        raise UserError(f"synthetic dataset: {dst} appeared while the dataset was being written")
                    os.rename(dst, tmp / f".old-{name}")  # removed with tmp below
                os.rename(tmp / name, dst)
            os.rename(tmp / MARKER_NAME, t / MARKER_NAME)
            return False
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def write_marker(root: Path, layout: str, args: dict, counts: dict, **extra) -> Path:
    """Write the marker (sorted keys, no timestamps, so it is byte-identical for equal arguments)."""
    info = {"generator": GENERATOR, "version": VERSION, "layout": layout, "args": args, "counts": counts, **extra}
    path = root / MARKER_NAME
    path.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def shuffled_labels(counts: Dict[int, int], seed: int, stream: str) -> List[int]:
    labels = [c for c in sorted(counts) for _ in range(counts[c])]
    perm = face_rng(seed, stream + "/labels", 0).permutation(len(labels))
    return [labels[i] for i in perm]


# ---------------------------------------------------------------------------------------------------------------
# Shared by the FERPlus and AffectNet writers
# ---------------------------------------------------------------------------------------------------------------


def noise_image(seed: int, stream: str, index: int, size: int, mode: str = "RGB") -> Image.Image:
    """A not-a-face picture (uniform noise) for rows labelled not-a-face / No-Face."""
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    return Image.fromarray(face_rng(seed, stream + "/noise", index).integers(0, 256, shape, dtype=np.uint8), mode)


def check_choice(name: str, value, choices: Sequence[str]) -> str:
    if value not in choices:
        raise UserError(f"synthetic dataset: {name} must be one of {', '.join(choices)}, not {value!r}")
    return value
