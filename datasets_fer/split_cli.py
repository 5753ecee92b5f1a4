"""``remop-usb split``: print the labeled / unlabeled / test images per class of a dataset's imbalanced split.

The split is the one training draws, through the same function: :func:`datasets_fer.usb.draw_split`, given the
keys a run gets from its config -- ``dataset``, ``data_dir``, ``num_classes``, ``num_labels``, ``lb_imb_ratio``,
``seed``, ``include_lb_to_ulb``, the cross-dataset test set (``--test_dataset`` / ``--test_data_dir``, e.g. CK+),
the unlabeled pool (``--ulb_dataset`` / ``--ulb_data_dir``, e.g. AffectNet: Table 5, where the split is named
``<dataset>+ulb:<pool>`` and its unlabeled indices point at the pool), ``rafdb_image_dir`` and ``cache_dir``
(else ``$REMOP_USB_CACHE``, else ``~/.cache/remop-usb``; unreadable images are excluded as in training). So the
printed sha256 and counts are the ``split_sha256`` and counts a run with the same dataset files and keys records in
its ``split.json``, for every algorithm and every cell of the paper's tables. The keys are checked as training checks
them. Progress messages go to stderr.

Counts are keyed by canonical class name (:data:`datasets_fer.labels.CANONICAL`). ``--json`` prints one object:
``{"labeled": {name: n}, "unlabeled": {name: n}, "test": {name: n}, "sha256": hex}`` (``test``: the dataset's own
test split, training's evaluation set), plus, with ``--test_dataset``, ``"test_set": {"dataset": name, "counts":
{name: n}, "excluded_classes": {name: n}}`` (the images of the classes the model has, as training tests them; the
others are counted as excluded) and, with ``--ulb_dataset``, ``"ulb_pool": {"dataset": name, "num_images": n,
"outside_classes": n}`` (``unlabeled`` then counts the pool's images per class; ``outside_classes`` those of classes
the labeled dataset lacks, which stay in the pool), and, with ``--ulb_num_labels``, ``"ulb_num_labels": M_1,
"ulb_imb_ratio": gamma_u`` (the drawn unlabeled subset: consistent, uniform or reversed, :mod:`datasets_fer.split`).
``--out FILE`` also writes the split's manifest (:meth:`datasets_fer.split.Split.save`: the indices, counts and
sha256 of the ``split.json`` a run writes, which :func:`datasets_fer.split.load_split` reads back).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import sys

import numpy as np

from remop_usb.errors import OneLineArgumentParser, UserError

__all__ = ["main", "split_keys", "key_defaults", "dataset_split", "split_counts", "format_table"]


#: the FER data keys of a run (:func:`datasets_fer.data_keys.add_arguments`) that its split depends on; their
#: defaults are training's, read from its parser (:func:`key_defaults`)
FER_DATA_KEYS = ("test_dataset", "test_data_dir", "ulb_dataset", "ulb_data_dir", "rafdb_image_dir", "cache_dir")


@functools.lru_cache(maxsize=None)
def _training_defaults() -> tuple:
    from .data_keys import add_arguments  # imports torchvision: only once a split is drawn, not for --help

    p = argparse.ArgumentParser(add_help=False)
    add_arguments(p)
    return tuple((key, p.get_default(key)) for key in FER_DATA_KEYS)


def key_defaults() -> dict:
    """The keys of a run's split beyond dataset, data_dir, num_labels, lb_imb_ratio and seed, with training's
    defaults (``num_classes`` None: the dataset's own)."""
    return dict(num_classes=None, include_lb_to_ulb=False, ulb_num_labels=None, ulb_imb_ratio=1,
                **dict(_training_defaults()))


def _parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(prog="remop-usb split",
                description="Print a FER dataset's class-imbalanced labeled/unlabeled split (the one training "
                            "draws): images per class and the split's sha256.")
    p.add_argument("--dataset", required=True, help="registered FER dataset name (e.g. rafdb)")
    p.add_argument("--data_dir", required=True, help="the dataset's folder, as given to training")
    p.add_argument("--num_labels", required=True, type=int,
                   help="N_1: labeled images of the most frequent class (-1: every training image)")
    p.add_argument("--lb_imb_ratio", required=True, type=float, help="gamma = N_1 / N_K")
    p.add_argument("--seed", required=True, type=int)
    p.add_argument("--num_classes", type=int, default=None,
                   help="training's num_classes (FERPlus, AffectNet: 8, or 7 without contempt); "
                        "default: the dataset's own")
    p.add_argument("--include_lb_to_ulb", action="store_true",
                   help="the unlabeled set also holds the labeled images (training's include_lb_to_ulb: True)")
    p.add_argument("--ulb_num_labels", type=int, default=None,
                   help="M_1: unlabeled images of the most frequent class, a drawn subset (default: every training "
                        "image not labeled)")
    p.add_argument("--ulb_imb_ratio", type=float, default=1,
                   help="gamma_u = M_1 / M_K of that subset; negative: reversed order (consistent: "
                        "--lb_imb_ratio, uniform: 1, reversed: minus --lb_imb_ratio)")
    # FER_DATA_KEYS: left out of the namespace when not given; split_keys fills in training's defaults
    fer = dict(default=argparse.SUPPRESS)
    p.add_argument("--test_dataset", **fer, help="training's test_dataset: a cross-dataset test set (e.g. "
                                                 "ckplus), whose test images per class are printed")
    p.add_argument("--test_data_dir", **fer, help="training's test_data_dir: the folder of --test_dataset")
    p.add_argument("--ulb_dataset", **fer, help="training's ulb_dataset: the unlabeled pool (e.g. affectnet)")
    p.add_argument("--ulb_data_dir", **fer, help="training's ulb_data_dir: the folder of --ulb_dataset")
    p.add_argument("--rafdb_image_dir", **fer,
                   help="training's rafdb_image_dir: RAF-DB's image folder under basic/Image (default aligned)")
    p.add_argument("--cache_dir", **fer,
                   help="training's cache_dir (default: $REMOP_USB_CACHE, else ~/.cache/remop-usb)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="also write the split's manifest (indices, counts, sha256: a run's split.json) to FILE")
    return p


def split_keys(dataset, data_dir, num_labels, lb_imb_ratio, seed, **keys) -> argparse.Namespace:
    """The keys :func:`datasets_fer.usb.draw_split` reads, as training's config has them (same defaults, checked
    as training checks them); ``keys``: any of :func:`key_defaults`."""
    from datasets_fer import usb
    from .data_keys import check

    defaults = key_defaults()
    unknown = sorted(set(keys) - set(defaults))
    if unknown:
        raise TypeError(f"split_keys got unknown keys {unknown}")
    values = {**defaults, **keys}
    args = argparse.Namespace(dataset=dataset, data_dir=data_dir, num_labels=num_labels, lb_imb_ratio=lb_imb_ratio,
                              seed=seed, eval_split="test", demo_data=False, **values)
    usb.check_registered(dataset)
    check(args)
    return args


def dataset_split(dataset, data_dir, num_labels, lb_imb_ratio, seed, **keys):
    """Training's split of ``dataset`` (a :class:`datasets_fer.usb.DrawnSplit`), drawn by
    :func:`datasets_fer.usb.draw_split` from :func:`split_keys`; its messages go to stderr."""
    from datasets_fer import usb

    args = split_keys(dataset, data_dir, num_labels, lb_imb_ratio, seed, **keys)
    with contextlib.redirect_stdout(sys.stderr):
        return usb.draw_split(args)


def _per_class(names, labels) -> dict:
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(names))
    return {n: int(counts[c]) for c, n in enumerate(names)}


def split_counts(drawn) -> dict:
    """``{"labeled", "unlabeled", "test": {canonical name: images}, "sha256": hex}``, plus ``test_set`` and
    ``ulb_pool`` where the split has them (see the module docstring)."""
    from datasets_fer.labels import class_names

    names, split = class_names(drawn.num_classes), drawn.split
    out = {
        "labeled": {n: int(split.lb_counts[c]) for c, n in enumerate(names)},
        "unlabeled": {n: int(split.ulb_counts[c]) for c, n in enumerate(names)},
        "test": _per_class(names, drawn.parts["eval"].labels),
        "sha256": split.sha256,
    }
    if split.ulb_num_labels is not None:
        out.update(ulb_num_labels=split.ulb_num_labels, ulb_imb_ratio=split.ulb_imb_ratio)
    if drawn.test_info is not None:
        out["test_set"] = {"dataset": drawn.test_info["dataset"],
                           "counts": _per_class(names, drawn.parts["test"].labels),
                           "excluded_classes": dict(drawn.test_info["excluded_classes"])}
    if drawn.pool_info is not None:
        out["ulb_pool"] = {k: drawn.pool_info[k] for k in ("dataset", "num_images", "outside_classes")}
    return out


def format_table(counts: dict, title: str) -> str:
    """A fixed-width table: one row per class (a column for the cross-dataset test set, if any), a total row, a line
    for the unlabeled pool, if any, then the sha256 line."""
    columns = [(p, counts[p]) for p in ("labeled", "unlabeled", "test")]
    if "test_set" in counts:
        columns.append((f"{counts['test_set']['dataset']} test", counts["test_set"]["counts"]))
    names = list(counts["labeled"])
    width = max(len("class"), len("total"), *map(len, names))
    widths = [max(9, len(header)) for header, _ in columns]

    def row(label, cells):
        return f"{label:<{width}}  " + "  ".join(f"{cell:>{w}}" for cell, w in zip(cells, widths))

    rows = [title, row("class", [header for header, _ in columns])]
    rows += [row(n, [values[n] for _, values in columns]) for n in names]
    rows.append(row("total", [sum(values.values()) for _, values in columns]))
    if "test_set" in counts and counts["test_set"]["excluded_classes"]:
        excluded = ", ".join(f"{n} {k}" for n, k in counts["test_set"]["excluded_classes"].items())
        rows.append(f"{counts['test_set']['dataset']} test images of classes the model lacks, excluded: {excluded}")
    if "ulb_pool" in counts:
        pool = counts["ulb_pool"]
        rows.append(f"unlabeled: the {pool['num_images']} training images of {pool['dataset']} "
                    f"({pool['outside_classes']} of classes outside these, not in the counts)")
    rows.append(f"sha256 {counts['sha256']}")
    return "\n".join(rows)


def main(argv=None) -> int:
    a = _parser().parse_args(argv)
    keys = key_defaults()
    drawn = dataset_split(a.dataset, a.data_dir, a.num_labels, a.lb_imb_ratio, a.seed,
                          **{k: v for k, v in vars(a).items() if k in keys})
    counts = split_counts(drawn)
    if a.out:
        drawn.split.save(a.out)
        print(f"[remop-usb] wrote the split manifest to {a.out}", file=sys.stderr)
    if a.json:
        print(json.dumps(counts, indent=2))
    else:
        subset = "" if a.ulb_num_labels is None else \
            f" ulb_num_labels={a.ulb_num_labels} ulb_imb_ratio={a.ulb_imb_ratio:g}"
        title = (f"{drawn.split.dataset} num_labels={a.num_labels} lb_imb_ratio={a.lb_imb_ratio:g}{subset} "
                 f"seed={a.seed} include_lb_to_ulb={a.include_lb_to_ulb} ({a.data_dir})")
        print(format_table(counts, title))
    return 0
