"""FER datasets as USB datasets: index -> imbalanced split -> USB ``BasicDataset`` objects.

``dispatching_get_dataset`` wraps USB's ``get_dataset`` (a fixed if/elif over built-in names): names in
:data:`datasets_fer.FER_DATASETS` are built here, every other name falls through to USB unchanged. The split depends
only on (dataset, num_labels, lb_imb_ratio, seed); it is printed with its sha256, stored in ``args.split_sha256``
and written as ``split.json`` in the run's save dir.
"""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image
from semilearn.datasets.cv_datasets.datasetbase import BasicDataset

from remop_usb.errors import UserError

from . import FER_DATASETS
from .labels import class_names
from .split import make_split
from .transforms import eval_transform, strong_transform, weak_transform


class FERImageDataset(BasicDataset):
    """USB's BasicDataset over image paths: images are opened (RGB) when an item is drawn."""

    def __sample__(self, idx):
        img, target = super().__sample__(idx)
        with Image.open(img) as im:
            return im.convert("RGB"), target


def _prepare_demo_data(args):
    if not getattr(args, "demo_data", False):
        return
    data_dir = args.data_dir
    if os.path.isdir(data_dir) and os.listdir(data_dir):
        return
    from .synthetic import ensure_demo_rafdb

    if args.dataset != "rafdb":
        raise UserError(f"demo_data: True generates a synthetic RAF-DB only, not dataset '{args.dataset}'")
    print(f"[remop-usb] data_dir {data_dir} is empty: writing the synthetic demo RAF-DB there")
    ensure_demo_rafdb(data_dir)


def build_fer_datasets(args, algorithm: str):
    """USB's dataset dict {'train_lb', 'train_ulb', 'eval', 'test'} for a FER dataset name."""
    _prepare_demo_data(args)
    index = FER_DATASETS[args.dataset](args.data_dir)
    if args.num_classes != index.num_classes:
        raise UserError(f"num_classes is {args.num_classes} but dataset '{args.dataset}' has "
                        f"{index.num_classes} classes ({', '.join(index.class_names)})")
    split = make_split(args.dataset, index.train_labels, index.num_classes, args.num_labels,
                       args.lb_imb_ratio, args.seed, include_lb_to_ulb=args.include_lb_to_ulb)
    names = class_names(index.num_classes)
    _record_split(args, split, names, index.test_labels)

    train_paths = np.asarray(index.train_paths, dtype=object)
    labels = np.asarray(index.train_labels, dtype=np.int64)
    weak, strong = weak_transform(args.img_size, args.crop_ratio), strong_transform(args.img_size, args.crop_ratio)
    lb = FERImageDataset(algorithm, train_paths[split.lb_idx], labels[split.lb_idx], index.num_classes,
                         weak, False, None, False)
    ulb = FERImageDataset(algorithm, train_paths[split.ulb_idx], labels[split.ulb_idx], index.num_classes,
                          weak, True, strong, False)
    test = FERImageDataset(algorithm, np.asarray(index.test_paths, dtype=object),
                           np.asarray(index.test_labels, dtype=np.int64), index.num_classes,
                           eval_transform(args.img_size), False, None, False)
    # The paper (and every reference implementation) selects the best checkpoint on the official test split;
    # results.json reports both that "best" and the "last" checkpoint.
    return {"train_lb": lb, "train_ulb": ulb, "eval": test, "test": None}


def _record_split(args, split, names, test_labels):
    """Print the split, check it against the one a resumed run started with, write split.json (rank 0)."""
    args.split_sha256 = split.sha256
    test_counts = np.bincount(np.asarray(test_labels, dtype=np.int64), minlength=len(names))
    rows = ", ".join(f"{n} {split.lb_counts[i]}/{split.ulb_counts[i]}/{int(test_counts[i])}"
                     for i, n in enumerate(names))
    print(f"[remop-usb] split {args.dataset} N1={args.num_labels} gamma={args.lb_imb_ratio} seed={args.seed} "
          f"sha256={split.sha256} (labeled/unlabeled/test: {rows})")
    manifest = os.path.join(args.save_dir, args.save_name, "split.json")
    if getattr(args, "resume", False) and os.path.exists(manifest):
        with open(manifest, encoding="utf-8") as f:
            started_with = json.load(f).get("sha256")
        if started_with != split.sha256:
            raise UserError(f"resume: this run's split (sha256 {split.sha256[:12]}) differs from the one it "
                            f"started with ({str(started_with)[:12]} in {manifest}); the dataset files, "
                            f"num_labels, lb_imb_ratio or seed changed")
    if getattr(args, "rank", 0) == 0:
        split.save(manifest)


def dispatching_get_dataset(usb_get_dataset):
    """Wrap USB's get_dataset so FER names are built here and USB's own names still work."""

    def get_dataset(args, algorithm, dataset, num_labels, num_classes, data_dir="./data", include_lb_to_ulb=True):
        if dataset in FER_DATASETS:
            return build_fer_datasets(args, algorithm)
        return usb_get_dataset(args, algorithm, dataset, num_labels, num_classes, data_dir, include_lb_to_ulb)

    return get_dataset
