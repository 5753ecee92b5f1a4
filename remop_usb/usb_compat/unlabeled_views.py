"""Extra views of an unlabeled image for algorithms USB's datasets do not know by name.

==============================================================  ==================================================
quirk in 0.3.2                                                  what we do
==============================================================  ==================================================
``BasicDataset.__getitem__`` picks the unlabeled views by the   :func:`with_second_weak_view` copies a USB dataset
algorithm's *name*; any other name gets ``x_ulb_w`` and         into a subclass of its own class whose unlabeled
``x_ulb_s`` only, so a new algorithm cannot ask for a second    items also carry ``x_ulb_w_2``, a second draw of
weak view (Ada-CM needs two weak views and a strong one)        the weak transform (Ada-CM's ``set_dataset``)
==============================================================  ==================================================

Nothing is patched globally (no ``install()``): an algorithm that needs a second weak view calls
:func:`with_second_weak_view`.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

from ..errors import UserError


@functools.lru_cache(maxsize=None)
def _with_second_view_class(base_cls):
    """``base_cls`` whose unlabeled items also hold ``x_ulb_w_2``: the weak transform drawn a second time."""

    class WithSecondWeakView(base_cls):
        _base_class = base_cls

        def __getitem__(self, idx):
            item = super().__getitem__(idx)
            if isinstance(item, dict) and "x_ulb_w" in item and self.transform is not None:
                img, _ = self.__sample__(idx)
                if isinstance(img, np.ndarray):
                    img = Image.fromarray(img)
                item["x_ulb_w_2"] = self.transform(img)
            return item

        def __reduce_ex__(self, protocol):
            """Copied or pickled as the plain dataset re-wrapped (the generated class has no importable name)."""
            plain = object.__new__(self._base_class)
            plain.__dict__.update(self.__dict__)
            return with_second_weak_view, (plain,)

    WithSecondWeakView.__name__ = WithSecondWeakView.__qualname__ = f"{base_cls.__name__}WithSecondWeakView"
    return WithSecondWeakView


def with_second_weak_view(dataset):
    """A shallow copy of the USB image dataset ``dataset`` whose unlabeled items also hold ``x_ulb_w_2``.

    It stays an instance of the dataset's own class (a generated subclass), so code that copies the dataset and
    changes ``is_ulb`` / ``transform`` on the copy (the diagnostics pass) gets what it asked for.
    """
    if hasattr(type(dataset), "_base_class"):
        return dataset
    if getattr(dataset, "transform", None) is None or not hasattr(dataset, "__sample__"):
        raise UserError(f"a second weak view needs an image dataset with a weak transform, got "
                        f"{type(dataset).__name__}")
    copy = object.__new__(_with_second_view_class(type(dataset)))
    copy.__dict__.update(dataset.__dict__)
    return copy
