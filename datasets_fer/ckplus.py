"""CK+ (the extended Cohn-Kanade dataset) as a 7-class test set: the 636-image protocol of Ada-CM and ReMoP.

On-disk layout, as distributed (``data_dir`` is the folder holding both trees)::

    <data_dir>/cohn-kanade-images/S005/001/S005_001_00000001.png     (every frame of sequence 001 of subject S005)
    <data_dir>/cohn-kanade-images/S005/001/S005_001_00000011.png
    <data_dir>/Emotion/S005/001/S005_001_00000011_emotion.txt        (only for the 327 labeled sequences)

An emotion file holds one number (written like ``   3.0000000e+00``), the CK+ code of the frame it is named after:
0 neutral, 1 anger, 2 contempt, 3 disgust, 4 fear, 5 happy, 6 sadness, 7 surprise. Codes map to the canonical order
with :data:`datasets_fer.labels.CKPLUS_TO_CANONICAL` (0->0 neutral, 1->6 anger, 3->5 disgust, 4->4 fear, 5->1 happy,
6->2 sad, 7->3 surprise).

Frame selection. For every sequence folder ``Emotion/<S>/<seq>/`` that holds an emotion file (a *labeled*
sequence):

* the **labeled frame** -- the frame the emotion file names (``..._00000011_emotion.txt`` -> ``..._00000011.png``),
  which must be the sequence's last frame (CK+ labels the last, peak frame; an emotion file naming an earlier frame
  means a damaged or re-cut sequence and is an error rather than a guess between the two) -- is the expression,
  with the file's code, unless that code is 2 (contempt), which the protocol excludes;
* the **first frame** -- the lowest frame number among ``<S>_<seq>_<frame>.png`` in
  ``cohn-kanade-images/<S>/<seq>/`` -- is *neutral*, for every labeled sequence, contempt ones included.

Sequences without an emotion file (266 of the 593) contribute nothing. On the full dataset: 327 labeled sequences,
18 of them contempt, give 327 neutral first frames + 309 expression frames = **636 images**: neutral 327, happy 69,
sad 28, surprise 83, fear 25, disgust 59, anger 45 (canonical order). A labeled sequence thus gives 2 images (1 for
contempt).

CK+ is a test-only dataset here (the paper trains on RAF-DB and tests on CK+ through the label mapping): the
:class:`~datasets_fer.index.FERIndex` has an empty ``train`` split and the selected images as ``test``, sorted by
path (subject, sequence, frame). ``num_classes`` may be None or 7.

Strictness: a sequence folder with two emotion files, an emotion file whose name does not match its folder
(``<S>_<seq>_<8-digit frame>_emotion.txt``), a value that is not one integer code 0-7, a ``.png`` in a sequence
folder not named ``<S>_<seq>_<frame>.png``, a labeled frame that is missing or is not the sequence's last frame, or
a labeled sequence with a single frame are one-line :class:`~remop_usb.errors.UserError` s naming the file (and
line). Hidden and non-PNG files (``.DS_Store``) are ignored. The images are always listed (the first and last
frames are found from the listing), so ``check_images`` cannot be turned off; ``cache_dir`` is not used.
"""

from __future__ import annotations

import math
import os
import re
from typing import List, Tuple

import numpy as np

from datasets_fer.common import SHOW_MISSING as SHOW, check_data_dir, read_lines, seven_classes
from datasets_fer.folders import subdirs
from datasets_fer.index import FERIndex
from datasets_fer.labels import CKPLUS_TO_CANONICAL
from remop_usb.errors import UserError, where

__all__ = ["read_ckplus", "IMAGE_DIR", "EMOTION_DIR", "CONTEMPT", "EXPECTED_LAYOUT", "NUM_IMAGES"]

IMAGE_DIR = "cohn-kanade-images"
EMOTION_DIR = "Emotion"
CONTEMPT = 2
NUM_IMAGES = 636  # the protocol's size on the full dataset (informative; subsets are accepted)
EXPECTED_LAYOUT = ("expected <data_dir>/cohn-kanade-images/S005/001/S005_001_00000011.png and "
                   "<data_dir>/Emotion/S005/001/S005_001_00000011_emotion.txt")
_CODES = "0 neutral, 1 anger, 2 contempt, 3 disgust, 4 fear, 5 happy, 6 sadness, 7 surprise"


def _emotion_code(path: str) -> int:
    """The CK+ code in emotion file ``path`` (one number, possibly in float notation, on one line)."""
    rows = [(n, t.strip()) for n, t in enumerate(read_lines(path, "CK+ emotion file"), start=1) if t.strip()]
    lineno = rows[0][0] if rows else 1
    value = None
    if len(rows) == 1 and len(rows[0][1].split()) == 1:
        try:
            value = float(rows[0][1])
        except ValueError:
            value = None
    if value is None or not math.isfinite(value) or not value.is_integer() or not 0 <= value <= 7:
        found = "; ".join(t for _, t in rows)[:80] if rows else "nothing"
        raise UserError(f"{where(path, lineno)}: expected one CK+ emotion code, an integer 0-7 such as "
                        f"'3.0000000e+00' ({_CODES}), found {found!r}")
    return int(value)


def _labeled_frame(folder: str, subject: str, seq: str):
    """(emotion file path, frame number) of sequence folder ``folder`` under Emotion/, or None if unlabeled."""
    files = sorted(f for f in os.listdir(folder) if f.endswith("_emotion.txt") and not f.startswith("."))
    if not files:
        return None
    if len(files) > 1:
        raise UserError(f"{folder}: {len(files)} emotion files ({', '.join(files[:SHOW])}); a CK+ sequence has "
                        f"one, for its last frame")
    match = re.fullmatch(rf"{re.escape(subject)}_{re.escape(seq)}_(\d{{8}})_emotion\.txt", files[0])
    if match is None:
        raise UserError(f"{os.path.join(folder, files[0])}: expected an emotion file named "
                        f"{subject}_{seq}_<8-digit frame>_emotion.txt in {folder}")
    return os.path.join(folder, files[0]), int(match.group(1))


def _frames(folder: str, subject: str, seq: str) -> dict:
    """frame number -> file name of the PNG frames in image sequence folder ``folder`` (empty if missing)."""
    if not os.path.isdir(folder):
        return {}
    pattern = re.compile(rf"{re.escape(subject)}_{re.escape(seq)}_(\d+)\.png")
    frames = {}
    for name in sorted(os.listdir(folder)):
        if name.startswith(".") or not name.lower().endswith(".png"):
            continue
        match = pattern.fullmatch(name)
        if match is None:
            raise UserError(f"{os.path.join(folder, name)}: expected CK+ frames named {subject}_{seq}_<frame>.png "
                            f"in {folder}")
        frames[int(match.group(1))] = name
    return frames


def _select(root: str) -> Tuple[List[Tuple[str, int]], list]:
    """[(image path, canonical label)] of the protocol and the labeled frames that are missing."""
    images, emotions = os.path.join(root, IMAGE_DIR), os.path.join(root, EMOTION_DIR)
    selected, missing = [], []
    for subject in subdirs(emotions):
        for seq in subdirs(os.path.join(emotions, subject)):
            labeled = _labeled_frame(os.path.join(emotions, subject, seq), subject, seq)
            if labeled is None:
                continue
            emotion_file, frame = labeled
            code = _emotion_code(emotion_file)
            seq_dir = os.path.join(images, subject, seq)
            frames = _frames(seq_dir, subject, seq)
            if frame not in frames:
                missing.append(os.path.join(seq_dir, f"{subject}_{seq}_{frame:08d}.png"))
                continue
            first, last = min(frames), max(frames)
            if first == frame:
                raise UserError(f"{seq_dir}: the labeled sequence has a single frame ({frames[frame]}); the "
                                f"protocol takes its first frame as neutral and its last as the expression")
            if frame != last:
                raise UserError(f"{emotion_file}: labels frame {frames[frame]}, but the sequence {seq_dir} runs to "
                                f"{frames[last]}; CK+ labels a sequence's last (peak) frame, which the protocol "
                                f"takes as the expression")
            selected.append((os.path.join(seq_dir, frames[first]), CKPLUS_TO_CANONICAL[0]))
            if code != CONTEMPT:
                selected.append((os.path.join(seq_dir, frames[frame]), CKPLUS_TO_CANONICAL[code]))
    return selected, missing


def _check_trees(root: str) -> None:
    for name in (IMAGE_DIR, EMOTION_DIR):
        path = os.path.join(root, name)
        if not os.path.isdir(path):
            nested = [d for d in subdirs(root) if os.path.isdir(os.path.join(root, d, name))]
            hint = f" (found {os.path.join(root, nested[0], name)}: use {os.path.join(root, nested[0])})" \
                if nested else ""
            raise UserError(f"CK+ folder {path} does not exist{hint}; {EXPECTED_LAYOUT}")


def read_ckplus(data_dir, *, num_classes=None, cache_dir=None, check_images: bool = True) -> FERIndex:
    """Index CK+ under ``data_dir`` with the 636-image protocol (see the module docstring); test split only."""
    num_classes = seven_classes(num_classes, "CK+ (636-image protocol, contempt excluded)")
    root = check_data_dir(data_dir, "CK+", EXPECTED_LAYOUT)
    _check_trees(root)
    selected, missing = _select(root)
    if missing:
        raise UserError(f"{len(missing)} CK+ frames named by emotion files in {os.path.join(root, EMOTION_DIR)} "
                        f"are missing, e.g. {', '.join(missing[:SHOW])}; {EXPECTED_LAYOUT}")
    if not selected:
        raise UserError(f"{os.path.join(root, EMOTION_DIR)}: no labeled sequences (no <S>/<seq>/*_emotion.txt); "
                        f"{EXPECTED_LAYOUT}")
    selected.sort()
    return FERIndex(train_paths=[], train_labels=np.zeros(0, dtype=np.int64),
                    test_paths=[p for p, _ in selected], test_labels=np.array([c for _, c in selected], np.int64),
                    num_classes=num_classes, data_dir=root, layout="ckplus",
                    label_file=os.path.join(root, EMOTION_DIR))
