"""``image_cache: True``: every image is resized once, to the size the transforms start with, and read from there.

The FER transforms (:mod:`datasets_fer.transforms`) all begin with ``Resize((img_size, img_size))``: every epoch
decodes a full-size image and shrinks it again. With the cache, each source image is resized once, by that same
``Resize``, to a lossless PNG under ``<cache_dir>/images``; the datasets then read the small copies. Resizing an
image to the size it already has returns it unchanged, so the transforms -- and the training numerics -- are exactly
those of the uncached run (the split, which depends on labels only, is the same too).

A cached file is named by :func:`datasets_fer.common.file_signature` of its source (real path, byte size,
modification time in ns) and the target size and interpolation: a changed source gets a new file, never a stale
one. Files are written atomically (temporary sibling, rename), so concurrent runs (or DDP ranks) filling one cache
are safe.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image
from torchvision import transforms

from remop_usb.errors import UserError
from remop_usb.fileio import atomic_output

from .common import file_signature

#: subfolder of ``cache_dir`` holding the resized copies
SUBDIR = "images"


def leading_resize(transform):
    """The first step of a ``Compose`` when it resizes to a fixed (height, width), else None."""
    steps = getattr(transform, "transforms", None)
    first = steps[0] if steps else None
    if isinstance(first, transforms.Resize) and isinstance(first.size, (tuple, list)) and len(first.size) == 2:
        return first
    return None


def _signature(resize) -> tuple:
    return tuple(resize.size), str(resize.interpolation), resize.max_size, resize.antialias


def dataset_resize(dataset):
    """The Resize every transform of ``dataset`` starts with, or None when they do not all start with the same one."""
    pipelines = [t for t in (dataset.transform, getattr(dataset, "strong_transform", None)) if t is not None]
    resizes = [leading_resize(t) for t in pipelines]
    if not resizes or any(r is None for r in resizes) or len({_signature(r) for r in resizes}) != 1:
        return None
    return resizes[0]


def cached_path(source: str, resize, cache_dir: str) -> tuple:
    """(path of the resized copy of ``source`` under ``cache_dir``, whether it was written now)."""
    key = file_signature([source], *_signature(resize))
    path = os.path.join(cache_dir, key[:2], key + ".png")
    if os.path.exists(path):
        return path, False
    with Image.open(source) as im:
        small = resize(im.convert("RGB"))
    try:
        with atomic_output(path, suffix=".png") as tmp:
            small.save(tmp, format="PNG")
    except OSError as err:
        raise UserError(f"cannot write the image cache {path}: {err.strerror or err}; pass a writable "
                        f"cache_dir") from None
    return path, True


def apply_image_cache(args, datasets, cache_dir: str):
    """With ``args.image_cache``, point each dataset's ``data`` (image paths) at resized copies kept under
    ``cache_dir``/images; prints one line. ``None`` entries (a run without a test set) are skipped."""
    if not getattr(args, "image_cache", False):
        return
    folder = os.path.join(cache_dir, SUBDIR)
    written = reused = 0
    done = {}  # (source, resize) -> its copy: an image in several datasets (labeled and unlabeled) is looked up once
    for dataset in (d for d in datasets if d is not None):
        resize = dataset_resize(dataset)
        if resize is None:
            print(f"[remop-usb] image_cache: {len(dataset)} images left uncached (their transforms do not all "
                  f"start with the same fixed-size Resize)")
            continue
        paths, signature = [], _signature(resize)
        for source in dataset.data:
            path = done.get((source, signature))
            new = False
            if path is None:
                path, new = cached_path(source, resize, folder)
                done[source, signature] = path
            paths.append(path)
            written, reused = written + new, reused + (not new)
        dataset.data = np.asarray(paths, dtype=object)
    print(f"[remop-usb] image_cache: {written + reused} images in {folder} ({written} resized now, {reused} reused)")
