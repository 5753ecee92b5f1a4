"""Folder listings shared by the readers of folder layouts (class folders, image sequences).

Only visible entries count: hidden files and folders (``.DS_Store``, ``.ipynb_checkpoints``) are never images or
classes. Label files, existence checks and caches are in :mod:`datasets_fer.common`.
"""

from __future__ import annotations

import os
from typing import List

#: file-name endings (matched case-insensitively) that count as images in folder layouts
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


def is_image_name(name: str) -> bool:
    """True for a visible file name with an image extension (``Thumbs.db``, ``notes.txt`` are not images)."""
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def subdirs(path: str) -> List[str]:
    """Sorted names of the visible sub-folders of ``path`` (empty if ``path`` is not a folder)."""
    if not os.path.isdir(path):
        return []
    with os.scandir(path) as it:
        return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))


def image_files(path: str) -> List[str]:
    """Sorted names of the image files (:func:`is_image_name`) directly inside folder ``path``."""
    with os.scandir(path) as it:
        return sorted(e.name for e in it if e.is_file() and is_image_name(e.name))
