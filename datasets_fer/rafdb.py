"""RAF-DB (basic, single-label subset) read from its official layout, as a pure index (paths + labels, no pixels).

On-disk layout, as distributed (``data_dir`` is the folder that holds ``basic/``)::

    <data_dir>/basic/EmoLabel/list_patition_label.txt      (sic: "patition" is the real file name)
    <data_dir>/basic/Image/aligned/train_00001_aligned.jpg  (100x100 aligned face crops)
    <data_dir>/basic/Image/aligned/test_0001_aligned.jpg
    <data_dir>/basic/Image/original/...                     (not used)

``list_patition_label.txt`` has one ``<name> <label>`` line per image, e.g. ``train_00001.jpg 5``. The split is the
file-name prefix (``train_`` / ``test_``), not the line order. Labels are RAF-DB codes 1-7: 1 Surprise, 2 Fear,
3 Disgust, 4 Happiness, 5 Sadness, 6 Anger, 7 Neutral; they are mapped to the project's canonical indices with
:data:`datasets_fer.labels.RAFDB_TO_CANONICAL` (1->3 surprise, 2->4 fear, 3->5 disgust, 4->1 happy, 5->2 sad,
6->6 anger, 7->0 neutral), so ``train_00001.jpg 4`` is canonical class 1, 'happy'. The image of ``<stem>.jpg`` is
``basic/Image/aligned/<stem>_aligned.jpg``.

The official release has 12,271 train and 3,068 test images; training counts in canonical order are neutral 2524,
happy 4772, sad 1982, surprise 1290, fear 281, disgust 717, anger 705. Other sizes (subsets) are accepted.

Within each split the entries are sorted by file name, so indices (and the splits made from them, see
:mod:`datasets_fer.split`) do not depend on the order of lines in the label file. Blank lines are skipped; every
other problem is a one-line :class:`~remop_usb.errors.UserError` naming the file (and line) and what was expected.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from datasets_fer.labels import RAFDB_TO_CANONICAL, class_names as _class_names
from remop_usb.errors import UserError, where

__all__ = ["RafdbIndex", "read_rafdb", "LABEL_FILE", "ALIGNED_DIR", "EXPECTED_LAYOUT", "NUM_TRAIN", "NUM_TEST"]

LABEL_FILE = os.path.join("basic", "EmoLabel", "list_patition_label.txt")
ALIGNED_DIR = os.path.join("basic", "Image", "aligned")
EXPECTED_LAYOUT = ("expected <data_dir>/basic/EmoLabel/list_patition_label.txt and "
                   "<data_dir>/basic/Image/aligned/*_aligned.jpg")
NUM_TRAIN, NUM_TEST = 12271, 3068  # official sizes (informative; subsets are accepted)
_SHOW_MISSING = 3


@dataclass
class RafdbIndex:
    """RAF-DB basic as paths and canonical labels (int64), train and test each sorted by file name."""

    train_paths: list
    train_labels: np.ndarray
    test_paths: list
    test_labels: np.ndarray
    num_classes: int = 7
    class_names: list = field(default_factory=lambda: _class_names(7))
    data_dir: str = ""
    label_file: str = ""

    def counts(self, split: str = "train") -> list:
        """Images per canonical class in ``split`` ('train' or 'test')."""
        labels = {"train": self.train_labels, "test": self.test_labels}[split]
        return np.bincount(labels, minlength=self.num_classes).tolist()


def _parse_line(path: str, lineno: int, text: str):
    fields = text.split()
    if len(fields) != 2:
        raise UserError(f"{where(path, lineno)}: expected '<name>.jpg <label 1-7>' (e.g. 'train_00001.jpg 5'), "
                        f"found {len(fields)} fields: {text.strip()[:80]!r}")
    name, code = fields
    stem = name[:-4] if name.endswith(".jpg") else None
    prefix = "train_" if name.startswith("train_") else "test_" if name.startswith("test_") else None
    if prefix is None or stem is None or len(stem) <= len(prefix) or "/" in name or "\\" in name:
        raise UserError(f"{where(path, lineno)}: expected an image name like 'train_00001.jpg' or 'test_0001.jpg' "
                        f"(prefix train_ or test_, ending in .jpg), found {name!r}")
    label = int(code) if code.isascii() and code.isdigit() else None
    if label not in RAFDB_TO_CANONICAL:
        raise UserError(f"{where(path, lineno)}: expected a RAF-DB label, an integer 1-7 (1 Surprise, 2 Fear, "
                        f"3 Disgust, 4 Happiness, 5 Sadness, 6 Anger, 7 Neutral), found {code!r} for {name}")
    return prefix[:-1], name, stem, label


def read_rafdb(data_dir, check_images: bool = True) -> RafdbIndex:
    """Index RAF-DB basic under ``data_dir`` (see the module docstring for the layout).

    ``check_images`` verifies that every listed aligned image exists. Raises :class:`UserError` for a missing
    folder or label file, a malformed or duplicate line, missing images, or an empty train or test split.
    """
    root = os.path.expanduser(os.fspath(data_dir))
    if not os.path.isdir(root):
        what = "is not a directory" if os.path.exists(root) else "does not exist"
        raise UserError(f"RAF-DB data_dir {root} {what}; {EXPECTED_LAYOUT}")
    label_path = os.path.join(root, LABEL_FILE)
    if not os.path.isfile(label_path):
        hint = ""
        if os.path.isfile(os.path.join(root, "EmoLabel", "list_patition_label.txt")):
            hint = f" (data_dir looks like the 'basic' folder itself: use its parent {os.path.dirname(root) or '.'})"
        elif os.path.isfile(os.path.join(root, "basic", "EmoLabel", "list_partition_label.txt")):
            hint = " (found list_partition_label.txt: the official name is spelled 'patition')"
        raise UserError(f"RAF-DB label file {label_path} not found{hint}; {EXPECTED_LAYOUT}")

    try:
        with open(label_path, encoding="utf-8-sig") as fh:
            lines = fh.read().splitlines()
    except UnicodeDecodeError as err:
        raise UserError(f"{label_path}: not a UTF-8/ASCII text file ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise UserError(f"cannot read RAF-DB label file {label_path}: {err.strerror or err}") from None

    seen = {}
    entries = {"train": [], "test": []}
    for lineno, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        split, name, stem, label = _parse_line(label_path, lineno, text)
        if name in seen:
            raise UserError(f"{where(label_path, lineno)}: duplicate image name {name!r} (first listed on line "
                            f"{seen[name]}); each image must appear once")
        seen[name] = lineno
        entries[split].append((name, stem, RAFDB_TO_CANONICAL[label]))

    for split in ("train", "test"):
        if not entries[split]:
            raise UserError(f"{label_path}: no {split}_*.jpg lines (found {len(entries['train'])} train and "
                            f"{len(entries['test'])} test); the official file lists {NUM_TRAIN} train and "
                            f"{NUM_TEST} test images")

    aligned = os.path.join(root, ALIGNED_DIR)
    if check_images:
        if not os.path.isdir(aligned):
            raise UserError(f"RAF-DB image folder {aligned} does not exist; {EXPECTED_LAYOUT}")
        present = set(os.listdir(aligned))
        missing = [os.path.join(aligned, stem + "_aligned.jpg")
                   for split in ("train", "test") for _, stem, _ in sorted(entries[split])
                   if stem + "_aligned.jpg" not in present]
        if missing:
            total = len(entries["train"]) + len(entries["test"])
            raise UserError(f"{len(missing)} of {total} RAF-DB aligned images listed in {label_path} are missing, "
                            f"e.g. {', '.join(missing[:_SHOW_MISSING])}; {EXPECTED_LAYOUT}")

    out = {}
    for split in ("train", "test"):
        rows = sorted(entries[split])
        out[split + "_paths"] = [os.path.join(aligned, stem + "_aligned.jpg") for _, stem, _ in rows]
        out[split + "_labels"] = np.array([c for _, _, c in rows], dtype=np.int64)
    return RafdbIndex(num_classes=7, class_names=_class_names(7), data_dir=root, label_file=label_path, **out)
