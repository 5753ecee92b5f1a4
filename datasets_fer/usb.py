"""FER datasets as USB datasets: indexes -> readable images -> imbalanced split -> USB ``BasicDataset`` objects.

``dispatching_get_dataset`` wraps USB's ``get_dataset`` (a fixed if/elif over built-in names): names in
:data:`datasets_fer.FER_DATASETS` are built here, every other name falls through to USB unchanged.

What becomes which USB dataset (:func:`build_fer_datasets`):

* ``train_lb`` -- the labeled part of ``dataset``'s training split, drawn by :func:`datasets_fer.split.make_split`
  from (dataset, num_labels, lb_imb_ratio, seed).
* ``train_ulb`` -- the rest of that training split (with ``ulb_num_labels`` set: the subset of it whose class
  distribution ``ulb_num_labels`` / ``ulb_imb_ratio`` fix -- consistent, uniform or reversed, see
  :mod:`datasets_fer.split`); or, with ``ulb_dataset`` set, the training images of that
  dataset (read from ``ulb_data_dir``), the *inter-dataset pool* of the paper's Table 5 (the labeled dataset's other
  training images are then not used). Pool labels are ignored by training and kept only as held-back labels for
  diagnostics; pool images of a class the labeled dataset lacks (AffectNet's contempt under a 7-class RAF-DB) stay
  in the pool -- a real unlabeled pool is not filtered by label -- with held-back label -1, counted in
  ``split.json`` as ``ulb_pool.outside_classes``. With ``include_lb_to_ulb`` the labeled images are added to the pool.
* ``eval`` -- ``dataset``'s split named by ``eval_split``: ``test`` (default, the paper's protocol: the best
  checkpoint is selected on it) or ``valid`` (FERPlus has one; a dataset without is an error).
* ``test`` -- with ``test_dataset`` set, the test split of that dataset (read from ``test_data_dir``): the
  *cross-dataset test* (train RAF-DB, test CK+). Labels are canonical, so they match the model's classes directly;
  test images of a class the model lacks (contempt when the model has 7 classes) are excluded and counted, so the
  report covers the classes the two datasets share. Without ``test_dataset`` but with ``eval_split: valid``, it is
  ``dataset``'s own test split; otherwise USB gets no test set. USB evaluates it on ``model_best.pth`` at the end
  and ``results.json`` reports it for the best and the last checkpoint (:mod:`remop_usb.results`).

Readers get ``num_classes`` (the training dataset: ``num_classes``; test and pool datasets: their own), the
resolved ``cache_dir`` (:func:`resolve_cache_dir`: the key, else ``$REMOP_USB_CACHE``, else
:func:`datasets_fer.common.default_cache_dir`) and their own keys (:data:`datasets_fer.READER_KEYS`, e.g.
``rafdb_image_dir``).

One function draws the split: :func:`draw_split` (read, exclude unreadable images, split, pool, test set) is what
:func:`build_fer_datasets` and ``remop-usb split`` (:mod:`datasets_fer.split_cli`) both call, so the command prints
the sha256 and counts a run records.

Unreadable images. Every image a run will load is decoded once at build time (:mod:`datasets_fer.imagecheck`,
cached in ``cache_dir``); the ones that fail are excluded -- training images before the split is drawn -- reported
in one line with the first few paths, and listed in ``split.json`` under ``excluded_images``. Excluding a training
image shifts the indices, so the split's sha256 changes with it. Nothing fails mid-epoch, nothing is dropped
silently; a split left empty is an error.

``demo_data: True`` writes a synthetic dataset (:data:`datasets_fer.DEMO_WRITERS`)
into ``data_dir``, ``test_data_dir`` and ``ulb_data_dir`` when they are missing or empty; an unset
``test_data_dir`` / ``ulb_data_dir`` then defaults to ``demo_<dataset>`` beside ``data_dir``.

The split is printed with its sha256, stored in ``args.split_sha256`` and written as ``split.json`` in the run's save
dir, with the pool, the test set and the excluded images described beside the hashed indices.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image
from semilearn.datasets.cv_datasets.datasetbase import BasicDataset

from remop_usb.errors import UserError
from remop_usb.fileio import write_json_atomic

from . import FER_DATASETS, READER_KEYS, demo_writer
from . import common
from .image_cache import apply_image_cache
from .imagecheck import unreadable_images
from .index import FERIndex
from .labels import CANONICAL, class_names
from .split import Split, make_split
from .transforms import eval_transform, strong_transform, weak_transform

#: the dataset-name key and the folder key of each role a FER dataset can play in a run
ROLES = (("dataset", "data_dir"), ("test_dataset", "test_data_dir"), ("ulb_dataset", "ulb_data_dir"))
EVAL_SPLITS = ("test", "valid")
#: USB's learners that train on the labeled set alone (an empty unlabeled set is fine for them)
SUPERVISED = ("supervised", "fullysupervised")
SHOW_UNREADABLE = 3


class FERImageDataset(BasicDataset):
    """USB's BasicDataset over image paths: images are opened (RGB) when an item is drawn."""

    def __sample__(self, idx):
        img, target = super().__sample__(idx)
        with Image.open(img) as im:
            return im.convert("RGB"), target


def _option(args, key: str, default=""):
    """A FER data key of ``args`` (namespaces built without this module's keys get the default)."""
    value = getattr(args, key, default)
    return default if value is None else value


# --------------------------------------------------------------------------------------------------- reading


def resolve_cache_dir(value: Optional[str] = "") -> str:
    """``cache_dir``: the value, else :func:`datasets_fer.common.default_cache_dir` (``$REMOP_USB_CACHE``, ...);
    ``''`` (the config key's default) counts as unset."""
    return common.resolve_cache_dir(value or None)


def check_registered(dataset: str) -> None:
    """UserError unless ``dataset`` is in :data:`datasets_fer.FER_DATASETS` (the message lists those that are)."""
    if dataset not in FER_DATASETS:
        raise UserError(f"unknown FER dataset '{dataset}'; registered: {', '.join(sorted(FER_DATASETS))}")


def reader_options(dataset: str, args) -> dict:
    """The reader keywords of ``dataset`` set by config keys of ``args`` (:data:`datasets_fer.READER_KEYS`)."""
    return {keyword: getattr(args, key) for key, keyword in READER_KEYS.get(dataset, {}).items()
            if getattr(args, key, None) is not None}


def read_index(dataset: str, data_dir: str, *, num_classes: Optional[int] = None,
               cache_dir: Optional[str] = None, **options) -> FERIndex:
    """``dataset``'s index read from ``data_dir`` by its reader in :data:`datasets_fer.FER_DATASETS`; ``options``
    are that reader's own keywords (see :func:`reader_options`)."""
    check_registered(dataset)
    return FER_DATASETS[dataset](data_dir, num_classes=num_classes, cache_dir=cache_dir, **options)


@dataclasses.dataclass
class Part:
    """The images of one split of one dataset that a run uses (after unreadable ones are excluded)."""

    dataset: str
    split: str
    paths: np.ndarray
    labels: np.ndarray
    root: str
    num_classes: int
    excluded: List[Tuple[str, str]] = dataclasses.field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.dataset}/{self.split}"


def part_of(index: FERIndex, dataset: str, split: str) -> Part:
    """Split ``split`` of ``index`` as a :class:`Part`; UserError if the dataset lacks it or it is empty."""
    try:
        paths, labels = index.split(split)
    except KeyError:
        raise UserError(f"dataset '{dataset}' ({index.data_dir}) has no {split} split") from None
    if len(paths) == 0:
        raise UserError(f"dataset '{dataset}' ({index.data_dir}) has no {split} images"
                        + (" (it is a test-only dataset: use it as test_dataset)" if split == "train" else ""))
    return Part(dataset, split, np.asarray(paths, dtype=object), np.asarray(labels, dtype=np.int64),
                index.data_dir, index.num_classes)


def exclude_unreadable(parts: List[Part], cache_dir: Optional[str]) -> int:
    """Decode-check every image of ``parts`` (cached), drop the unreadable ones in place; returns how many.

    Prints one line: how many images were checked and, if any failed, how many per part and the first few paths
    with their reasons. A part left with no image is a UserError.
    """
    by_root: Dict[str, List[str]] = {}
    for part in parts:
        by_root.setdefault(part.root, []).extend(part.paths.tolist())
    bad: Dict[str, str] = {}
    for root, paths in by_root.items():
        bad.update(unreadable_images(paths, root, cache_dir))
    total = sum(len(p.paths) for p in parts)
    for part in parts:
        keep = np.array([p not in bad for p in part.paths], dtype=bool)
        part.excluded = [(p, bad[p]) for p in part.paths[~keep].tolist()]
        part.paths, part.labels = part.paths[keep], part.labels[keep]
    _report_unreadable(parts, total, len(bad))
    for part in parts:
        if len(part.paths) == 0:
            raise UserError(f"every image of {part.name} ({part.root}) is unreadable, e.g. "
                            f"{part.excluded[0][0]} ({part.excluded[0][1]})")
    return len(bad)


def _report_unreadable(parts: List[Part], total: int, num_bad: int) -> None:
    if not num_bad:
        print(f"[remop-usb] checked {total} images: all readable")
        return
    per_part = ", ".join(f"{p.name} {len(p.excluded)}" for p in parts if p.excluded)
    first = [f"{path} ({reason})" for p in parts for path, reason in p.excluded][:SHOW_UNREADABLE]
    more = f" and {num_bad - len(first)} more" if num_bad > len(first) else ""
    print(f"[remop-usb] {num_bad} of {total} images are unreadable and excluded ({per_part}): {'; '.join(first)}"
          f"{more}; all are listed in split.json")


# --------------------------------------------------------------------------------------------------- demo data


def prepare_demo_data(args) -> None:
    """With ``demo_data``, write each role's synthetic dataset into its folder when that is missing or empty."""
    if not getattr(args, "demo_data", False):
        return
    for name_key, dir_key in ROLES:
        dataset = _option(args, name_key)
        if not dataset:
            continue
        folder = _option(args, dir_key) or os.path.join(os.path.dirname(os.path.abspath(args.data_dir)),
                                                        f"demo_{dataset}")
        setattr(args, dir_key, folder)
        if os.path.isdir(folder) and os.listdir(folder) or os.path.exists(folder) and not os.path.isdir(folder):
            continue
        try:
            writer = demo_writer(dataset)
        except UserError as err:
            raise UserError(f"demo_data: True, but {err}") from None
        print(f"[remop-usb] {dir_key} {folder} is empty: writing a synthetic {dataset} there ({writer.__name__})")
        writer(folder)


# --------------------------------------------------------------------------------------------------- building


def _check_classes(args, index: FERIndex) -> None:
    """``num_classes`` (None: the dataset's own, as ``remop-usb split`` without ``--num_classes``) must match."""
    if args.num_classes is not None and args.num_classes != index.num_classes:
        raise UserError(f"num_classes is {args.num_classes} but dataset '{args.dataset}' has "
                        f"{index.num_classes} classes ({', '.join(index.class_names)})")


def _eval_split(args) -> str:
    split = _option(args, "eval_split", "test")
    if split not in EVAL_SPLITS:
        raise UserError(f"eval_split must be one of {', '.join(EVAL_SPLITS)}, not {split!r}")
    return split


def _read_role(args, name_key: str, dir_key: str, cache_dir: str, num_classes: Optional[int] = None) -> FERIndex:
    """The index of the dataset a role names (``dataset``, ``test_dataset`` or ``ulb_dataset``), with its options."""
    dataset = _option(args, name_key)
    return read_index(dataset, _option(args, dir_key), num_classes=num_classes, cache_dir=cache_dir,
                      **reader_options(dataset, args))


def _read_parts(args, cache_dir: str) -> Dict[str, Part]:
    """The parts a run uses: 'train', 'eval', and where configured 'test' and 'ulb'."""
    index = _read_role(args, "dataset", "data_dir", cache_dir, num_classes=args.num_classes)
    _check_classes(args, index)
    eval_split = _eval_split(args)
    parts = {"train": part_of(index, args.dataset, "train"), "eval": part_of(index, args.dataset, eval_split)}
    test_dataset = _option(args, "test_dataset")
    if test_dataset:
        parts["test"] = part_of(_read_role(args, "test_dataset", "test_data_dir", cache_dir), test_dataset, "test")
    elif eval_split != "test":
        parts["test"] = part_of(index, args.dataset, "test")
    ulb_dataset = _option(args, "ulb_dataset")
    if ulb_dataset:
        parts["ulb"] = part_of(_read_role(args, "ulb_dataset", "ulb_data_dir", cache_dir), ulb_dataset, "train")
    return parts


def _restrict_test(part: Part, num_classes: int, names: List[str]) -> dict:
    """Drop test images of classes the model lacks; the test set's description for results.json.

    Both class sets are prefixes of the canonical order (7 or 8 classes), so the shared classes are the first
    ``min(model classes, test dataset classes)``; a shared class without test images has no accuracy (null) and
    is left out of the mean class accuracy."""
    outside = part.labels >= num_classes
    dropped = {CANONICAL[c]: int(n) for c, n in enumerate(np.bincount(part.labels[outside])) if n}
    part.paths, part.labels = part.paths[~outside], part.labels[~outside]
    if len(part.paths) == 0:
        raise UserError(f"{part.name}: none of its images is of a class the model has ({', '.join(names)})")
    return {"dataset": part.dataset, "split": part.split, "data_dir": part.root, "num_samples": int(len(part.paths)),
            "shared_classes": names[:min(num_classes, part.num_classes)], "excluded_classes": dropped}


def _pool_split(split: Split, train: Part, pool: Part, num_classes: int) -> Tuple[Split, np.ndarray]:
    """The split whose unlabeled indices point into [training images..., pool images...]; held-back labels."""
    n, m = len(train.paths), len(pool.paths)
    ulb_idx = np.arange(n, n + m, dtype=np.int64)
    if split.include_lb_to_ulb:
        ulb_idx = np.concatenate([split.lb_idx, ulb_idx])
    held_back = np.concatenate([train.labels, np.where(pool.labels < num_classes, pool.labels, -1)])
    ulb_labels = held_back[ulb_idx]
    combined = dataclasses.replace(
        split, dataset=f"{split.dataset}+ulb:{pool.dataset}", ulb_idx=ulb_idx,
        ulb_counts=np.bincount(ulb_labels[ulb_labels >= 0], minlength=num_classes).tolist())
    return combined, held_back


@dataclasses.dataclass
class DrawnSplit:
    """The images a run trains and is tested on, and its split (:func:`draw_split`); no image is loaded."""

    #: 'train', 'eval', and where configured 'test' (only the model's classes) and 'ulb' (the pool)
    parts: Dict[str, Part]
    #: indices into ``paths``; named ``<dataset>+ulb:<pool>`` with a pool
    split: Split
    #: the training images, then the pool's
    paths: np.ndarray
    #: their labels; pool images of a class the model lacks: -1
    held_back: np.ndarray
    num_classes: int
    cache_dir: str
    pool_info: Optional[dict] = None
    test_info: Optional[dict] = None


def draw_split(args) -> DrawnSplit:
    """The split a run with the FER data keys of ``args`` draws; training (:func:`build_fer_datasets`) and
    ``remop-usb split`` both get it here. Reads every role's index, excludes unreadable images, draws
    :func:`~datasets_fer.split.make_split`, then points the unlabeled indices at the pool (``ulb_dataset``) and keeps
    the test set's images of the model's classes (``test_dataset``). ``args.num_classes`` None: the dataset's own."""
    cache_dir = resolve_cache_dir(_option(args, "cache_dir"))
    parts = _read_parts(args, cache_dir)
    exclude_unreadable(list(parts.values()), cache_dir)
    train = parts["train"]
    k = train.num_classes
    split = make_split(args.dataset, train.labels, k, args.num_labels, args.lb_imb_ratio, args.seed,
                       include_lb_to_ulb=args.include_lb_to_ulb, ulb_num_labels=_option(args, "ulb_num_labels", None),
                       ulb_imb_ratio=_option(args, "ulb_imb_ratio", 1))
    drawn = DrawnSplit(parts, split, train.paths, train.labels, k, cache_dir)
    if "ulb" in parts:
        pool = parts["ulb"]
        drawn.split, drawn.held_back = _pool_split(split, train, pool, k)
        drawn.paths = np.concatenate([train.paths, pool.paths])
        drawn.pool_info = {"dataset": pool.dataset, "data_dir": pool.root, "num_images": int(len(pool.paths)),
                           "index_offset": int(len(train.paths)),
                           "outside_classes": int((drawn.held_back[len(train.paths):] < 0).sum())}
    if "test" in parts:
        drawn.test_info = _restrict_test(parts["test"], k, class_names(k))
    return drawn


def build_fer_datasets(args, algorithm: str):
    """USB's dataset dict {'train_lb', 'train_ulb', 'eval', 'test'} for a FER dataset name."""
    prepare_demo_data(args)
    drawn = draw_split(args)
    parts, split, k = drawn.parts, drawn.split, drawn.num_classes
    if split.ulb_idx.size == 0 and algorithm not in SUPERVISED:
        raise UserError(f"the unlabeled set is empty (num_labels={args.num_labels} labels every training image of "
                        f"{args.dataset}) but algorithm '{algorithm}' learns from unlabeled images; set ulb_dataset "
                        f"(an unlabeled pool such as affectnet) or a smaller num_labels")
    extras = {"eval_split": parts["eval"].name, "ulb_pool": drawn.pool_info, "test_set": drawn.test_info,
              "excluded_images": {p.name: [list(e) for e in p.excluded] for p in parts.values() if p.excluded}}
    _record_split(args, split, class_names(k), parts["eval"].labels, extras)

    crop = {name: getattr(args, key) for key, name in (("crop_prob", "crop_prob"), ("crop_padding_mode", "padding_mode"))
            if hasattr(args, key)}  # the crop options; a namespace without them gets the transforms' defaults
    weak = weak_transform(args.img_size, args.crop_ratio, **crop)
    strong = strong_transform(args.img_size, args.crop_ratio, **crop)
    evaluation = eval_transform(args.img_size)
    train = parts["train"]
    lb = FERImageDataset(algorithm, train.paths[split.lb_idx], train.labels[split.lb_idx], k, weak, False, None,
                         False)
    ulb = FERImageDataset(algorithm, drawn.paths[split.ulb_idx], drawn.held_back[split.ulb_idx], k, weak, True,
                          strong, False)
    eval_set = FERImageDataset(algorithm, parts["eval"].paths, parts["eval"].labels, k, evaluation, False, None,
                               False)
    test = None
    if "test" in parts:
        test = FERImageDataset(algorithm, parts["test"].paths, parts["test"].labels, k, evaluation, False, None,
                               False)
        test.report = drawn.test_info  # read by remop_usb.results
    apply_image_cache(args, (lb, ulb, eval_set, test), drawn.cache_dir)
    return {"train_lb": lb, "train_ulb": ulb, "eval": eval_set, "test": test}


def _record_split(args, split, names, eval_labels, extras):
    """Print the split, check it against the one a resumed run started with, write split.json (rank 0)."""
    args.split_sha256 = split.sha256
    eval_counts = np.bincount(np.asarray(eval_labels, dtype=np.int64), minlength=len(names))
    rows = ", ".join(f"{n} {split.lb_counts[i]}/{split.ulb_counts[i]}/{int(eval_counts[i])}"
                     for i, n in enumerate(names))
    pool = extras["ulb_pool"]
    source = f"; unlabeled: {pool['num_images']} images of {pool['dataset']} ({pool['outside_classes']} outside " \
             f"these classes)" if pool else ""
    drawn = "" if split.ulb_num_labels is None else f" M1={split.ulb_num_labels} gamma_u={split.ulb_imb_ratio}"
    print(f"[remop-usb] split {split.dataset} N1={args.num_labels} gamma={args.lb_imb_ratio}{drawn} seed={args.seed} "
          f"sha256={split.sha256} (labeled/unlabeled/{extras['eval_split']}: {rows}{source})")
    manifest = os.path.join(args.save_dir, args.save_name, "split.json")
    if getattr(args, "resume", False) and os.path.exists(manifest):
        with open(manifest, encoding="utf-8") as f:
            started_with = json.load(f).get("sha256")
        if started_with != split.sha256:
            raise UserError(f"resume: this run's split (sha256 {split.sha256[:12]}) differs from the one it "
                            f"started with ({str(started_with)[:12]} in {manifest}); the dataset files, "
                            f"num_labels, lb_imb_ratio, ulb_num_labels, ulb_imb_ratio or seed changed")
    if getattr(args, "rank", 0) == 0:
        write_json_atomic(manifest, {**split.manifest(), **extras}, sort_keys=True)


def dispatching_get_dataset(usb_get_dataset):
    """Wrap USB's get_dataset so FER names are built here and USB's own names still work."""

    def get_dataset(args, algorithm, dataset, num_labels, num_classes, data_dir="./data", include_lb_to_ulb=True):
        if dataset in FER_DATASETS:
            return build_fer_datasets(args, algorithm)
        return usb_get_dataset(args, algorithm, dataset, num_labels, num_classes, data_dir, include_lb_to_ulb)

    return get_dataset
