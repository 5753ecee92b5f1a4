"""RAF-DB (basic, single-label subset) as a pure index (paths + canonical labels, no pixels), from three layouts.

``data_dir`` is one of these on-disk layouts; :func:`detect_layout` tells them apart by what is on disk:

``official`` -- as distributed (``data_dir`` is the folder that holds ``basic/``)::

    <data_dir>/basic/EmoLabel/list_patition_label.txt      (sic: "patition" is the real file name)
    <data_dir>/basic/Image/aligned/train_00001_aligned.jpg  (100x100 aligned face crops)
    <data_dir>/basic/Image/aligned/test_0001_aligned.jpg
    <data_dir>/basic/Image/original/train_00001.jpg         (the full images: not used by default)

  ``list_patition_label.txt`` has one ``<name> <label>`` line per image, e.g. ``train_00001.jpg 5``. The split is
  the file-name prefix (``train_`` / ``test_``), not the line order. Labels are RAF-DB codes 1-7. The image of
  ``<stem>.jpg`` is ``basic/Image/aligned/<stem>_aligned.jpg``; with ``image_dir`` (config key
  ``rafdb_image_dir``) set to another folder ``X`` it is ``basic/Image/X/<stem>.jpg``, the original names -- what
  ``remop-usb align --src basic/Image/original --dst basic/Image/X`` writes (the paper's 224-px MTCNN crops).
  ``image_dir`` must be one folder name; a value other than ``aligned`` with another layout is an error.

``label-file`` -- the Ada-CM / ReMoP repack: one label file per split, images in separate train and test roots::

    <data_dir>/RAF_train_label2.txt   <data_dir>/RAF_test_label2.txt     (or both in <data_dir>/labels/)
    <data_dir>/train/<file>           <data_dir>/test/<file>              (or <data_dir>/images/{train,test}/)

  Each line is ``<file> <label>`` with ``<file>`` relative to its split's root (e.g. ``train_00001_aligned.jpg``,
  sub-folders allowed, no ``..``) and a **0-based** RAF label 0-6 (RAF code minus one: 0 Surprise ... 6 Neutral).
  Image roots: ``<data_dir>/<split>/`` when it exists, else ``<data_dir>/images/<split>/``.

``class-folders`` -- one folder per class under each split::

    <data_dir>/train/<class>/*.jpg    <data_dir>/test/<class>/*.jpg     (.jpg, .jpeg, .png, .bmp)

  ``<class>`` is a RAF code ``1``-``7``, a RAF-DB name (``Surprise``, ``Fear``, ``Disgust``, ``Happiness``,
  ``Sadness``, ``Anger``, ``Neutral``) or a canonical name (``neutral``, ``happy``, ``sad``, ``surprise``, ``fear``,
  ``disgust``, ``anger``), case-insensitive. Hidden files and non-image files are not images and are skipped; an
  image directly in ``train/`` (outside a class folder) is an error.

Detection (:func:`detect_layout`) looks for each layout's marker and needs exactly one: ``official`` --
``<data_dir>/basic/`` exists; ``label-file`` -- ``RAF_train_label2.txt`` or ``RAF_test_label2.txt`` in ``data_dir``
or ``data_dir/labels``; ``class-folders`` -- ``train/`` or ``test/`` holds a sub-folder named like a class (or any
sub-folder, when there is no label file: the label-file layout may keep images in sub-folders). No marker, or
several, is a one-line error listing the three expected layouts. The layout read is recorded in ``FERIndex.layout``.

RAF codes map to the canonical indices with :data:`datasets_fer.labels.RAFDB_TO_CANONICAL` (1->3 surprise, 2->4
fear, 3->5 disgust, 4->1 happy, 5->2 sad, 6->6 anger, 7->0 neutral), so ``train_00001.jpg 4`` (official) and
``train_00001_aligned.jpg 3`` (label-file) are both canonical class 1, 'happy'.

The official release has 12,271 train and 3,068 test images; training counts in canonical order are neutral 2524,
happy 4772, sad 1982, surprise 1290, fear 281, disgust 717, anger 705. Other sizes (subsets) are accepted.

Within each split the entries are sorted in the same way in every layout: by RAF-DB's image name
(:func:`image_name`: the file name without its extension and without the ``_aligned`` suffix, so ``train_00001``
for ``train_00001.jpg``, ``train_00001_aligned.jpg`` and ``train/4/train_00001_aligned.jpg``), then by the path. So
indices -- and the splits made from them (:mod:`datasets_fer.split`), sha256 included -- depend neither on line or
directory order nor on the layout: the same images in the official, label-file or class-folders layout (or another
``image_dir``) get the same split. Blank lines are skipped; every other problem is a one-line
:class:`~remop_usb.errors.UserError` naming the file (and line) and what was expected. RAF-DB is read straight from
its files, so the reader does not use ``cache_dir``.
"""

from __future__ import annotations

import os

import numpy as np

from datasets_fer.common import check_data_dir, check_files_exist, count_or_none, read_lines, seven_classes
from datasets_fer.folders import image_files, is_image_name, subdirs
from datasets_fer.index import FERIndex
from datasets_fer.labels import CANONICAL, RAFDB_NAMES, RAFDB_TO_CANONICAL
from remop_usb.errors import UserError, where

__all__ = ["read_rafdb", "detect_layout", "LAYOUTS", "LABEL_FILE", "IMAGE_ROOT", "ALIGNED",
           "ALIGNED_DIR", "EXPECTED_LAYOUT", "EXPECTED_LAYOUTS", "SPLIT_LABEL_FILE", "NUM_TRAIN", "NUM_TEST",
           "folder_class", "image_name"]

LABEL_FILE = os.path.join("basic", "EmoLabel", "list_patition_label.txt")
#: official layout: the image folders (``image_dir``) are under basic/Image
IMAGE_ROOT = os.path.join("basic", "Image")
#: the default ``image_dir``: the distributed 100x100 crops, ``<stem>_aligned.jpg``
ALIGNED = "aligned"
ALIGNED_SUFFIX = "_aligned"
ALIGNED_DIR = os.path.join(IMAGE_ROOT, ALIGNED)
#: label-file layout: one file per split, ``{split}`` is train or test
SPLIT_LABEL_FILE = "RAF_{split}_label2.txt"
LAYOUTS = ("official", "label-file", "class-folders")
EXPECTED_LAYOUT = ("expected <data_dir>/basic/EmoLabel/list_patition_label.txt and "
                   "<data_dir>/basic/Image/aligned/*_aligned.jpg")
EXPECTED_LAYOUTS = ("expected one of the RAF-DB layouts: official (<data_dir>/basic/EmoLabel/list_patition_label.txt "
                    "+ <data_dir>/basic/Image/aligned/*_aligned.jpg), label-file (RAF_train_label2.txt + "
                    "RAF_test_label2.txt, 0-based labels, in <data_dir> or <data_dir>/labels, images in "
                    "<data_dir>/{train,test}/ or <data_dir>/images/{train,test}/), class-folders "
                    "(<data_dir>/{train,test}/<class>/*.jpg, class = 1-7 or an expression name)")
NUM_TRAIN, NUM_TEST = 12271, 3068  # official sizes (informative; subsets are accepted)
SPLITS = ("train", "test")


# --------------------------------------------------------------------------------------------------- detection


def _label_file_dir(root: str):
    """The folder holding the label-file layout's files (``root`` or ``root/labels``), or None."""
    for folder in (root, os.path.join(root, "labels")):
        if any(os.path.isfile(os.path.join(folder, SPLIT_LABEL_FILE.format(split=s))) for s in SPLITS):
            return folder
    return None


def _markers(root: str) -> dict:
    """layout -> what on disk says ``root`` is in that layout (only the layouts whose marker is present)."""
    found = {}
    if os.path.isdir(os.path.join(root, "basic")):
        found["official"] = os.path.join(root, "basic") + os.sep
    label_dir = _label_file_dir(root)
    if label_dir is not None:
        found["label-file"] = os.path.join(label_dir, SPLIT_LABEL_FILE.format(split="{train,test}"))
    folders = [os.path.join(root, split, f) for split in SPLITS for f in subdirs(os.path.join(root, split))]
    named = [f for f in folders if os.path.basename(f).lower() in _FOLDER_NAMES]
    if named or (folders and label_dir is None):
        found["class-folders"] = (named or folders)[0] + os.sep
    return found


def _unrecognised_hint(root: str) -> str:
    if os.path.isfile(os.path.join(root, "EmoLabel", "list_patition_label.txt")):
        return f" (data_dir looks like the 'basic' folder itself: use its parent {os.path.dirname(root) or '.'})"
    return ""


def detect_layout(root: str) -> str:
    """The layout of RAF-DB folder ``root`` (one of :data:`LAYOUTS`); see the module docstring for the markers."""
    found = _markers(root)
    if not found:
        raise UserError(f"RAF-DB data_dir {root}: no known layout ({os.path.join(root, LABEL_FILE)} not found, no "
                        f"RAF_train_label2.txt, no train/<class>/ folders){_unrecognised_hint(root)}; "
                        f"{EXPECTED_LAYOUTS}")
    if len(found) > 1:
        evidence = ", ".join(f"{layout} ({path})" for layout, path in found.items())
        raise UserError(f"RAF-DB data_dir {root} is ambiguous: it holds the markers of several layouts: {evidence}; "
                        f"point data_dir at a folder with only one; {EXPECTED_LAYOUTS}")
    return next(iter(found))


# --------------------------------------------------------------------------------------------------- label lines


def _two_fields(path: str, lineno: int, text: str, expected: str):
    """(name, code) of a ``<name> <code>`` label line, else a UserError saying the line should look like
    ``expected``."""
    fields = text.split()
    if len(fields) != 2:
        raise UserError(f"{where(path, lineno)}: expected {expected}, found {len(fields)} fields: "
                        f"{text.strip()[:80]!r}")
    return fields


def _check_unique(seen: dict, key: str, path: str, lineno: int) -> None:
    if key in seen:
        raise UserError(f"{where(path, lineno)}: duplicate image name {key!r} (first listed on line {seen[key]}); "
                        f"each image must appear once")
    seen[key] = lineno


def _label_lines(path: str, parse):
    """``parse(path, lineno, text)`` of every non-blank line of RAF-DB label file ``path``, in file order; ``parse``
    returns a tuple whose first item is the image name, which must be unique in the file."""
    seen = {}
    for lineno, text in enumerate(read_lines(path, "RAF-DB label file"), start=1):
        if not text.strip():
            continue
        parsed = parse(path, lineno, text)
        _check_unique(seen, parsed[0], path, lineno)
        yield parsed


# --------------------------------------------------------------------------------------------------- official


def _parse_official_line(path: str, lineno: int, text: str):
    """(name, split, stem, RAF code) of one line of list_patition_label.txt."""
    name, code = _two_fields(path, lineno, text, "'<name>.jpg <label 1-7>' (e.g. 'train_00001.jpg 5')")
    stem = name[:-4] if name.endswith(".jpg") else None
    prefix = "train_" if name.startswith("train_") else "test_" if name.startswith("test_") else None
    if prefix is None or stem is None or len(stem) <= len(prefix) or "/" in name or "\\" in name:
        raise UserError(f"{where(path, lineno)}: expected an image name like 'train_00001.jpg' or 'test_0001.jpg' "
                        f"(prefix train_ or test_, ending in .jpg), found {name!r}")
    label = count_or_none(code)
    if label not in RAFDB_TO_CANONICAL:
        raise UserError(f"{where(path, lineno)}: expected a RAF-DB label, an integer 1-7 (1 Surprise, 2 Fear, "
                        f"3 Disgust, 4 Happiness, 5 Sadness, 6 Anger, 7 Neutral), found {code!r} for {name}")
    return name, prefix[:-1], stem, label


def _official_label_file(root: str) -> str:
    label_path = os.path.join(root, LABEL_FILE)
    if not os.path.isfile(label_path):
        hint = ""
        if os.path.isfile(os.path.join(root, "basic", "EmoLabel", "list_partition_label.txt")):
            hint = " (found list_partition_label.txt: the official name is spelled 'patition')"
        raise UserError(f"RAF-DB label file {label_path} not found{hint}; {EXPECTED_LAYOUT}")
    return label_path


def _official_image(image_dir: str, name: str, stem: str) -> str:
    """Path (relative to data_dir) of image ``name`` (``<stem>.jpg``) in folder ``image_dir`` of basic/Image."""
    if image_dir == ALIGNED:
        return os.path.join(ALIGNED_DIR, stem + ALIGNED_SUFFIX + ".jpg")
    return os.path.join(IMAGE_ROOT, image_dir, name)


def _expected_official(image_dir: str) -> str:
    if image_dir == ALIGNED:
        return EXPECTED_LAYOUT
    return (f"expected <data_dir>/basic/EmoLabel/list_patition_label.txt and <data_dir>/basic/Image/{image_dir}/"
            f"<name>.jpg for every listed name (rafdb_image_dir: {image_dir}; the file names of basic/Image/original, "
            f"as remop-usb align keeps them)")


def _check_image_dir(image_dir, layout: str, root: str) -> str:
    """``image_dir`` (rafdb_image_dir) checked: one folder name, and only for the official layout."""
    if not isinstance(image_dir, str) or image_dir in ("", ".", "..") or "/" in image_dir or "\\" in image_dir:
        raise UserError(f"rafdb_image_dir must be one folder name under <data_dir>/basic/Image ({ALIGNED}, or e.g. "
                        f"original, mtcnn), not {image_dir!r}")
    if image_dir != ALIGNED and layout != "official":
        raise UserError(f"rafdb_image_dir: {image_dir} selects a folder of basic/Image in RAF-DB's official layout, "
                        f"but data_dir {root} is in the {layout} layout; leave rafdb_image_dir at {ALIGNED}")
    return image_dir


def _read_official(root: str, check_images: bool, image_dir: str = ALIGNED) -> dict:
    label_path = _official_label_file(root)
    expected = _expected_official(image_dir)
    entries = {"train": [], "test": []}
    for name, split, stem, label in _label_lines(label_path, _parse_official_line):
        entries[split].append((_official_image(image_dir, name, stem), RAFDB_TO_CANONICAL[label]))
    for split in SPLITS:
        if not entries[split]:
            raise UserError(f"{label_path}: no {split}_*.jpg lines (found {len(entries['train'])} train and "
                            f"{len(entries['test'])} test); the official file lists {NUM_TRAIN} train and "
                            f"{NUM_TEST} test images")
    folder = os.path.join(root, IMAGE_ROOT, image_dir)
    if check_images and not os.path.isdir(folder):
        present = subdirs(os.path.join(root, IMAGE_ROOT))
        hint = f" ({os.path.join(root, IMAGE_ROOT)} holds: {', '.join(present)})" if present else ""
        raise UserError(f"RAF-DB image folder {folder} does not exist{hint}; {expected}")
    return dict(entries=entries, label_file=label_path, expected=expected)


# --------------------------------------------------------------------------------------------------- label-file


def _parse_split_line(path: str, lineno: int, text: str):
    """(relative image path with '/' separators, RAF code 1-7) of one line of a label-file layout label file."""
    name, code = _two_fields(path, lineno, text, "'<file> <label 0-6>' (e.g. 'train_00001_aligned.jpg 3')")
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or ".." in parts or not is_image_name(parts[-1]):
        raise UserError(f"{where(path, lineno)}: expected an image path relative to the split's image folder, "
                        f"ending in .jpg/.jpeg/.png/.bmp, without '..', found {name!r}")
    label = count_or_none(code)
    if label is None or not 0 <= label <= 6:
        hint = " (this layout's labels are 0-based: RAF code minus one)" if label == 7 else ""
        raise UserError(f"{where(path, lineno)}: expected a 0-based RAF-DB label, an integer 0-6 (0 Surprise, "
                        f"1 Fear, 2 Disgust, 3 Happiness, 4 Sadness, 5 Anger, 6 Neutral), found {code!r} for "
                        f"{name}{hint}")
    return "/".join(parts), label + 1


def _split_image_root(root: str, split: str) -> str:
    for folder in (os.path.join(root, split), os.path.join(root, "images", split)):
        if os.path.isdir(folder):
            return folder
    raise UserError(f"RAF-DB {split} image folder not found: neither {os.path.join(root, split)} nor "
                    f"{os.path.join(root, 'images', split)} exists; {EXPECTED_LAYOUTS}")


def _read_label_file_layout(root: str) -> dict:
    label_dir = _label_file_dir(root)
    entries, label_paths = {}, []
    for split in SPLITS:
        label_path = os.path.join(label_dir, SPLIT_LABEL_FILE.format(split=split))
        if not os.path.isfile(label_path):
            raise UserError(f"RAF-DB label file {label_path} not found (the label-file layout needs both "
                            f"RAF_train_label2.txt and RAF_test_label2.txt); {EXPECTED_LAYOUTS}")
        label_paths.append(label_path)
        image_root = os.path.relpath(_split_image_root(root, split), root)
        rows = [(os.path.join(image_root, *name.split("/")), RAFDB_TO_CANONICAL[code])
                for name, code in _label_lines(label_path, _parse_split_line)]
        if not rows:
            raise UserError(f"{label_path}: no '<file> <label>' lines; the {split} split is empty")
        entries[split] = rows
    return dict(entries=entries, label_file=label_paths[0], source=" and ".join(label_paths),
                expected=EXPECTED_LAYOUTS)


# --------------------------------------------------------------------------------------------------- class-folders


def _folder_names() -> dict:
    """Accepted class-folder names (lower case) -> RAF code 1-7."""
    names = {str(code): code for code in RAFDB_NAMES}
    names.update({name.lower(): code for code, name in RAFDB_NAMES.items()})
    names.update({CANONICAL[canon]: code for code, canon in RAFDB_TO_CANONICAL.items()})
    return names


_FOLDER_NAMES = _folder_names()


def folder_class(folder: str, name: str) -> int:
    """The canonical class of class folder ``name`` (inside ``folder``), or a UserError listing the valid names."""
    code = _FOLDER_NAMES.get(name.lower())
    if code is None:
        raise UserError(f"{os.path.join(folder, name)}: not a RAF-DB class folder; expected a RAF code 1-7 or one "
                        f"of {', '.join(RAFDB_NAMES[c] for c in sorted(RAFDB_NAMES))} or "
                        f"{', '.join(CANONICAL[:7])} (case-insensitive)")
    return RAFDB_TO_CANONICAL[code]


def _read_class_folders(root: str) -> dict:
    entries = {}
    for split in SPLITS:
        folder = os.path.join(root, split)
        if not os.path.isdir(folder):
            raise UserError(f"RAF-DB {split} folder {folder} does not exist (the class-folders layout needs both "
                            f"train/ and test/); {EXPECTED_LAYOUTS}")
        loose = image_files(folder)
        if loose:
            raise UserError(f"{os.path.join(folder, loose[0])}: image outside a class folder ({len(loose)} such in "
                            f"{folder}); expected {split}/<class>/<image>")
        rows, owner = [], {}
        for name in subdirs(folder):
            label = folder_class(folder, name)
            if label in owner:
                raise UserError(f"{folder}: class folders '{owner[label]}' and '{name}' are both "
                                f"'{CANONICAL[label]}'; keep one folder per class")
            owner[label] = name
            rows += [(os.path.join(split, name, f), label) for f in image_files(os.path.join(folder, name))]
        if not rows:
            raise UserError(f"{folder}: no images in its class folders; {EXPECTED_LAYOUTS}")
        entries[split] = rows
    return dict(entries=entries, label_file=os.path.join(root, "train"), expected=EXPECTED_LAYOUTS)


# --------------------------------------------------------------------------------------------------- reader


def image_name(rel: str) -> str:
    """RAF-DB's name of the image at path ``rel``: the file name without its extension and without the
    ``_aligned`` suffix of the aligned crops (``train_00001`` for ``train_00001.jpg`` and
    ``train_00001_aligned.jpg``). Entries are sorted by (image name, path) in every layout."""
    stem = os.path.splitext(os.path.basename(rel))[0]
    return stem[:-len(ALIGNED_SUFFIX)] if stem.endswith(ALIGNED_SUFFIX) else stem


def _canonical_order(rows):
    return sorted(rows, key=lambda row: (image_name(row[0]), row[0]))


def read_rafdb(data_dir, *, num_classes=None, cache_dir=None, check_images: bool = True,
               image_dir: str = ALIGNED) -> FERIndex:
    """Index RAF-DB basic under ``data_dir``, in whichever layout it is (see the module docstring).

    ``num_classes`` may be None or 7. ``cache_dir`` is accepted for the common reader signature and not used (RAF-DB
    needs no conversion). ``check_images`` verifies that every listed image exists. ``image_dir`` (config key
    ``rafdb_image_dir``) is the official layout's image folder under basic/Image. Raises :class:`UserError` for a
    missing folder or label file, an unknown or ambiguous layout, a malformed or duplicate line, missing images, an
    empty train or test split, or an ``image_dir`` other than aligned with another layout.
    """
    num_classes = seven_classes(num_classes, "RAF-DB (basic)")
    root = check_data_dir(data_dir, "RAF-DB", EXPECTED_LAYOUTS)
    layout = detect_layout(root)
    image_dir = _check_image_dir(image_dir, layout, root)
    if layout == "official":
        found = _read_official(root, check_images, image_dir)
    elif layout == "label-file":
        found = _read_label_file_layout(root)
    else:
        found = _read_class_folders(root)
    out = {}
    for split in SPLITS:
        rows = _canonical_order(found["entries"][split])
        out[split + "_paths"] = [os.path.join(root, rel) for rel, _ in rows]
        out[split + "_labels"] = np.array([c for _, c in rows], dtype=np.int64)
    if check_images and layout != "class-folders":  # class folders are listed from disk: their images exist
        check_files_exist(out["train_paths"] + out["test_paths"], found.get("source", found["label_file"]),
                          found["expected"])
    return FERIndex(num_classes=num_classes, data_dir=root, label_file=found["label_file"], layout=layout, **out)
