"""Facial-expression datasets for USB: loaders of the real on-disk layouts, the paper's imbalanced split, and a
synthetic generator writing the same layouts.

``FER_DATASETS`` maps a USB ``dataset`` name to the function reading that dataset's index (paths and canonical
labels, never pixels). :mod:`datasets_fer.usb` turns an index into USB's labeled / unlabeled / eval datasets.
"""

from .labels import CANONICAL, class_names  # noqa: F401


def _lazy_reader(dataset: str):
    """``datasets_fer.<dataset>.read_<dataset>``, imported on its first call (importing the package stays cheap)."""

    def read(data_dir, **options):
        from importlib import import_module

        return getattr(import_module(f"{__name__}.{dataset}"), f"read_{dataset}")(data_dir, **options)

    read.__name__ = read.__qualname__ = f"_read_{dataset}"
    return read


#: dataset name -> reader ``f(data_dir, *, num_classes=None, cache_dir=None, ...)`` returning a
#: :class:`~datasets_fer.index.FERIndex` (paths and canonical labels, never pixels)
FER_DATASETS = {name: _lazy_reader(name) for name in ("rafdb", "ckplus", "ferplus", "affectnet")}

#: dataset name -> {config key: reader keyword}: the keys of one dataset's reader beyond ``num_classes`` and
#: ``cache_dir``. Declared as arguments in :mod:`remop_usb.config`; :func:`datasets_fer.usb.reader_options` passes
#: them to the reader wherever the dataset is read (``dataset``, ``test_dataset`` or ``ulb_dataset``).
READER_KEYS = {"rafdb": {"rafdb_image_dir": "image_dir"}}

#: dataset name -> name of its synthetic writer in :mod:`datasets_fer.synthetic`, ``f(out_dir, ...)`` writing that
#: dataset's on-disk layout with demo-sized defaults (used by ``demo_data: True`` and ``remop-usb demo-data``)
DEMO_WRITERS = {"rafdb": "write_rafdb", "ckplus": "write_ckplus", "ferplus": "write_ferplus",
                "affectnet": "write_affectnet"}


def demo_writer(dataset: str):
    """The synthetic writer of ``dataset`` (see :data:`DEMO_WRITERS`), or a UserError listing those that exist."""
    from remop_usb.errors import UserError

    from . import synthetic

    writer = getattr(synthetic, DEMO_WRITERS.get(dataset, ""), None)
    if writer is None:
        have = [d for d, w in DEMO_WRITERS.items() if hasattr(synthetic, w)]
        raise UserError(f"no synthetic writer for dataset '{dataset}' (available: {', '.join(have)})")
    return writer
