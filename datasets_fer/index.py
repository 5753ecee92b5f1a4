"""The index every FER loader returns: image paths and canonical labels per split, never pixels.

Readers (``datasets_fer.<dataset>.read_<dataset>``) return a :class:`FERIndex`; :mod:`datasets_fer.usb` turns it
into USB datasets. Labels are canonical indices (:data:`datasets_fer.labels.CANONICAL`), int64, and every split is
sorted in a layout-defined, line-order-independent way so that splits made from an index are reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np

from .labels import class_names as _class_names


@dataclass
class FERIndex:
    """One dataset as paths + canonical labels: ``train`` and ``test`` always, ``valid`` where the dataset has one."""

    train_paths: list
    train_labels: np.ndarray
    test_paths: list
    test_labels: np.ndarray
    num_classes: int = 7
    class_names: List[str] = field(default_factory=list)
    valid_paths: Optional[list] = None
    valid_labels: Optional[np.ndarray] = None
    data_dir: str = ""
    #: which on-disk layout was read (e.g. 'official', 'label-file', 'class-folders')
    layout: str = ""
    #: the file that defines the labels (or the folder, for class-folder layouts)
    label_file: str = ""

    def __post_init__(self):
        if not self.class_names:
            self.class_names = _class_names(self.num_classes)

    def split(self, name: str):
        """(paths, labels) of split ``name``: 'train', 'valid' or 'test'."""
        paths, labels = getattr(self, f"{name}_paths"), getattr(self, f"{name}_labels")
        if paths is None:
            raise KeyError(f"this dataset has no {name} split")
        return paths, labels

    def counts(self, split: str = "train") -> list:
        """Images per canonical class in ``split`` ('train', 'valid' or 'test')."""
        return np.bincount(np.asarray(self.split(split)[1], dtype=np.int64), minlength=self.num_classes).tolist()
