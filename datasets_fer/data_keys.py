"""The FER data keys of a run, declared by the datasets they describe: cross-dataset test, unlabeled pool, eval
split, cache, the weak crop and RAF-DB's image folder.

:func:`add_arguments` puts them into train.py's parser (:func:`remop_usb.config.build_parser`); :func:`check`
refuses what argparse cannot (unregistered names, a folder without its dataset, keys that apply to FER datasets
only), for training and for ``remop-usb split`` (:mod:`datasets_fer.split_cli`) alike.
"""

from __future__ import annotations

import argparse

from remop_usb.errors import UserError, closest

from .transforms import CROP_PADDING_MODES


def add_arguments(p):
    """FER data beyond one dataset: cross-dataset test, unlabeled pool, eval split, cache (datasets_fer.usb)."""
    g = p.add_argument_group("FER data")
    g.add_argument("--test_dataset", type=str, default="",
                   help="[plugin] FER dataset whose test split becomes USB's test set (e.g. ckplus: train RAF-DB, "
                        "test CK+), reported over the classes both share; '': none")
    g.add_argument("--test_data_dir", type=str, default="", help="[plugin] folder of test_dataset")
    g.add_argument("--ulb_dataset", type=str, default="",
                   help="[plugin] FER dataset whose training images are the unlabeled pool instead of the rest of "
                        "dataset's training split (e.g. affectnet); labels ignored; '': none")
    g.add_argument("--ulb_data_dir", type=str, default="", help="[plugin] folder of ulb_dataset")
    g.add_argument("--eval_split", type=str, default="test", choices=("test", "valid"),
                   help="[plugin] dataset's split used as USB's eval (best-checkpoint selection): test (the paper) "
                        "or valid (FERPlus)")
    g.add_argument("--cache_dir", type=str, default="",
                   help="[plugin] readers' conversions and the image-check cache; '': $REMOP_USB_CACHE, else "
                        "~/.cache/remop-usb")
    g.add_argument("--crop_prob", type=float, default=1.0,
                   help="[plugin] probability of the weak (and strong) view's random crop after padding by "
                   "img_size x (1 - crop_ratio) (the ReMoP authors' code: 0.5)")
    g.add_argument("--crop_padding_mode", type=str, default="reflect", choices=CROP_PADDING_MODES,
                   help="[plugin] padding of that crop: reflect (USB's) or constant (zeros: the ReMoP authors' code)")
    g.add_argument("--rafdb_image_dir", type=str, default="aligned",
                   help="[plugin] RAF-DB official layout: the images under basic/Image/ -- aligned (the "
                        "<name>_aligned.jpg crops) or any other folder X holding basic/Image/X/<name>.jpg (e.g. "
                        "remop-usb align's MTCNN crops of basic/Image/original)")


def defaults() -> dict:
    """{key: default} of the FER data arguments (:func:`add_arguments`)."""
    p = argparse.ArgumentParser(add_help=False)
    add_arguments(p)
    return {a.dest: a.default for a in p._actions}


def check(args):
    """The FER data keys: registered names, folders given, and only with a FER dataset."""
    from . import FER_DATASETS

    names = sorted(FER_DATASETS)
    for name_key, dir_key in (("test_dataset", "test_data_dir"), ("ulb_dataset", "ulb_data_dir")):
        name, folder = getattr(args, name_key), getattr(args, dir_key)
        if name and name not in FER_DATASETS:
            raise UserError(f"unknown {name_key} '{name}'{closest(name, names)} registered FER datasets: "
                            f"{', '.join(names)}")
        if folder and not name:
            raise UserError(f"{dir_key} is set ({folder}) but {name_key} is not; set {name_key} to one of "
                            f"{', '.join(names)}")
        if name and not folder and not args.demo_data:
            raise UserError(f"{name_key}: {name} needs {dir_key}, the folder holding {name}")
    default = defaults()
    used = [k for k in ("test_dataset", "ulb_dataset", "eval_split", "cache_dir", "rafdb_image_dir", "crop_prob",
                        "crop_padding_mode")
            if getattr(args, k, default[k]) != default[k]]  # a split's keys (datasets_fer.split_cli) lack the crop
    if used and args.dataset not in FER_DATASETS:
        raise UserError(f"{', '.join(used)} apply to FER datasets only ({', '.join(names)}), not dataset "
                        f"'{args.dataset}'")
    roles = (args.dataset, args.test_dataset, args.ulb_dataset)
    if args.rafdb_image_dir != default["rafdb_image_dir"] and "rafdb" not in roles:
        raise UserError(f"rafdb_image_dir: {args.rafdb_image_dir} selects RAF-DB's image folder, but no dataset of "
                        f"this run is rafdb (dataset, test_dataset, ulb_dataset: {', '.join(r or '-' for r in roles)})")
    _check_ulb_distribution(args)


def _check_ulb_distribution(args):
    """ulb_num_labels / ulb_imb_ratio (datasets_fer.split.check_ulb_keys); a drawn unlabeled subset of the labeled
    dataset's training images cannot be combined with an unlabeled pool (ulb_dataset), whose labels are ignored."""
    from .split import check_ulb_keys

    m1, _ = check_ulb_keys(getattr(args, "ulb_num_labels", None), getattr(args, "ulb_imb_ratio", 1))
    if m1 is not None and args.ulb_dataset:
        raise UserError(f"ulb_num_labels ({m1}) draws the unlabeled set from {args.dataset}'s training images, but "
                        f"ulb_dataset ({args.ulb_dataset}) makes its training images the unlabeled pool; unset one")
