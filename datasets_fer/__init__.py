"""Facial-expression datasets for USB: loaders of the real on-disk layouts, the paper's imbalanced split, and a
synthetic generator writing the same layouts.

``FER_DATASETS`` maps a USB ``dataset`` name to the function reading that dataset's index (paths and canonical
labels, never pixels). :mod:`datasets_fer.usb` turns an index into USB's labeled / unlabeled / eval datasets.
"""

from .labels import CANONICAL, class_names  # noqa: F401


def _read_rafdb(data_dir):
    from .rafdb import read_rafdb

    return read_rafdb(data_dir)


#: dataset name -> function(data_dir) returning the dataset's index (paths, canonical labels, num_classes)
FER_DATASETS = {
    "rafdb": _read_rafdb,
}
