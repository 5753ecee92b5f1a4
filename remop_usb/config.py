"""Configuration: USB's own key names, YAML file + command line, strictly checked.

Precedence, lowest first: argument defaults < a preset (e.g. ``remop_preset: official``) < the YAML file (``--c``)
< command-line flags. (USB's train.py does the opposite: its YAML overrides flags.) Every YAML key must be a known
argument -- USB's, this plugin's, or one declared by the chosen algorithm / imbalanced algorithm through USB's
``get_argument()`` -- and have the right type; otherwise a one-line :class:`~remop_usb.errors.UserError` names the
file, the line and the closest valid key.
"""

from __future__ import annotations

import argparse
import difflib
import math
import os

from . import registry  # first: imports USB quietly
from semilearn.algorithms.utils import str2bool  # noqa: E402  (USB's, so its algorithms' bool options match)

from .errors import UserError, where
from .optim import OPTIMIZERS, SCHEDULES

DESCRIPTION = """Train a USB algorithm (optionally wrapped by an imbalanced algorithm such as ReMoP).
Keys are USB's own names; give them in a YAML file with --c and/or as flags.
Command-line flags OVERRIDE the YAML file (USB's own train.py does the opposite)."""

_NONE_STRINGS = ("None", "none", "null", "")


def _add_usb_arguments(p):
    """The arguments of USB's train.py (not shipped in the wheel), with USB's defaults unless noted."""
    g = p.add_argument_group("saving and loading")
    g.add_argument("--save_dir", type=str, default="./saved_models")
    g.add_argument("-sn", "--save_name", type=str, default="fixmatch")
    g.add_argument("--resume", type=str2bool, default=False, help="resume from load_path (default: the save dir's "
                   "latest_model.pth)")
    g.add_argument("--load_path", type=str, default=None)
    g.add_argument("-o", "--overwrite", type=str2bool, default=True)
    g.add_argument("--use_tensorboard", type=str2bool, default=False)
    g.add_argument("--use_wandb", type=str2bool, default=False)
    g.add_argument("--use_aim", type=str2bool, default=False)

    g = p.add_argument_group("training")
    g.add_argument("--epoch", type=int, default=1)
    g.add_argument("--num_train_iter", type=int, default=20)
    g.add_argument("--num_warmup_iter", type=int, default=0)
    g.add_argument("--num_eval_iter", type=int, default=10)
    g.add_argument("--num_log_iter", type=int, default=5)
    g.add_argument("-nl", "--num_labels", type=int, default=400, help="N1 for FER datasets: labeled images of "
                   "the most frequent class")
    g.add_argument("-bsz", "--batch_size", type=int, default=8)
    g.add_argument("--uratio", type=int, default=1)
    g.add_argument("--eval_batch_size", type=int, default=16)
    g.add_argument("--ema_m", type=float, default=0.999)
    g.add_argument("--ulb_loss_ratio", type=float, default=1.0)

    g = p.add_argument_group("optimizer")
    g.add_argument("--optim", type=str, default="SGD", choices=OPTIMIZERS)
    g.add_argument("--lr", type=float, default=3e-2)
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--weight_decay", type=float, default=5e-4)
    g.add_argument("--layer_decay", type=float, default=1.0)
    g.add_argument("--lr_schedule", type=str, default="cosine", choices=SCHEDULES,
                   help="[plugin] cosine (USB's) or constant (the ReMoP paper's Adam)")

    g = p.add_argument_group("network")
    g.add_argument("--net", type=str, default="wrn_28_2")
    g.add_argument("--net_from_name", type=str2bool, default=False)
    g.add_argument("--use_pretrain", type=str2bool, default=False)
    g.add_argument("--pretrain_path", type=str, default="", help="resnet18_fer: MS-Celeb-1M checkpoint "
                   "(resnet18_msceleb.pth or ijba_res18_naive.pth.tar)")

    g = p.add_argument_group("algorithm")
    g.add_argument("-alg", "--algorithm", type=str, default="fixmatch")
    g.add_argument("-imb_alg", "--imb_algorithm", type=str, default=None)
    g.add_argument("--use_cat", type=str2bool, default=True)
    g.add_argument("--amp", type=str2bool, default=False, help="mixed precision (CUDA only)")
    g.add_argument("--clip_grad", type=float, default=0)

    g = p.add_argument_group("data")
    g.add_argument("--data_dir", type=str, default="./data")
    g.add_argument("-ds", "--dataset", type=str, default="cifar10")
    g.add_argument("-nc", "--num_classes", type=int, default=10)
    g.add_argument("--train_sampler", type=str, default="RandomSampler")
    g.add_argument("--num_workers", type=int, default=1)
    g.add_argument("--include_lb_to_ulb", type=str2bool, default=False,
                   help="[plugin default False, USB's True] also use labeled images as unlabeled ones")
    g.add_argument("--lb_imb_ratio", type=int, default=1, help="gamma = N1 / NK of the labeled split")
    g.add_argument("--ulb_imb_ratio", type=int, default=1)
    g.add_argument("--ulb_num_labels", type=int, default=None)
    g.add_argument("--img_size", type=int, default=32)
    g.add_argument("--crop_ratio", type=float, default=0.875)
    g.add_argument("--max_length", type=int, default=512)
    g.add_argument("--max_length_seconds", type=float, default=4.0)
    g.add_argument("--sample_rate", type=int, default=16000)
    g.add_argument("--demo_data", type=str2bool, default=False,
                   help="[plugin] write the synthetic demo RAF-DB into data_dir when it is empty")

    g = p.add_argument_group("devices and distributed training")
    g.add_argument("--device", type=str, default="auto", choices=("auto", "cpu", "cuda"),
                   help="[plugin] auto: CUDA when available, else CPU")
    g.add_argument("--world-size", "--world_size", dest="world_size", type=int, default=1)
    g.add_argument("--rank", type=int, default=0)
    g.add_argument("-du", "--dist-url", "--dist_url", dest="dist_url", type=str, default="tcp://127.0.0.1:11111")
    g.add_argument("--dist-backend", "--dist_backend", dest="dist_backend", type=str, default="nccl")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--gpu", type=int, default=None)
    g.add_argument("--multiprocessing-distributed", "--multiprocessing_distributed",
                   dest="multiprocessing_distributed", type=str2bool, default=False)
    p.add_argument("--c", type=str, default="", help="YAML config file")


def _add_algorithm_arguments(p, cls, title):
    arguments = cls.get_argument() if hasattr(cls, "get_argument") else []
    if not arguments:
        return
    g = p.add_argument_group(title)
    choices = getattr(cls, "CHOICES", {})
    for a in arguments:
        dest = a.name.lstrip("-")
        if any(dest == act.dest for act in p._actions):
            continue  # an algorithm re-declaring a common key
        g.add_argument(a.name, type=a.type, default=a.default, help=a.help or None, choices=choices.get(dest))


def build_parser(algorithm=None, imb_algorithm=None, suppress_defaults=False):
    p = argparse.ArgumentParser(prog="train.py", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_usb_arguments(p)
    p.add_argument("--plugins", nargs="*", default=[], help="[plugin] modules to import before building the "
                   "algorithm (they may register algorithms, nets, datasets)")
    if algorithm:
        _add_algorithm_arguments(p, registry.algorithm_class(algorithm), f"algorithm '{algorithm}'")
    if imb_algorithm:
        _add_algorithm_arguments(p, registry.imb_algorithm_class(imb_algorithm),
                                 f"imbalanced algorithm '{imb_algorithm}'")
    if suppress_defaults:  # a parser that returns only what the command line sets
        for action in p._actions:
            action.default = argparse.SUPPRESS
    return p


# -- YAML ----------------------------------------------------------------------------------------------------------

def read_yaml(path):
    """The YAML mapping of ``path`` and, per key, its 1-based line number."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    if not os.path.isfile(path):
        raise UserError(f"config file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = YAML(typ="rt").load(f)
    except YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise UserError(f"{where(path, line)}: not valid YAML: {getattr(e, 'problem', e)}") from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of USB keys to values, got a {type(data).__name__}")
    lines = {k: data.lc.key(k)[0] + 1 for k in data}
    return {str(k): _plain(v) for k, v in data.items()}, lines


def _plain(value):
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return str(value)


def _type_name(t):
    return {int: "an integer", float: "a finite number", str: "a string", str2bool: "true or false"}.get(t, str(t))


def convert_value(key, value, action, origin):
    """A YAML value as the argument's type, or a UserError naming ``origin`` (file:line)."""
    t = action.type
    if value is None or (isinstance(value, str) and value in _NONE_STRINGS and t is not str2bool):
        if action.default is None or t is str:
            return None
    try:
        if isinstance(value, (list, dict)):
            raise ValueError
        if t is str2bool:
            result = str2bool(value) if isinstance(value, (bool, str)) else None
            if result is None:
                raise ValueError
        elif t is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            result = int(value)
        elif t is float:
            if isinstance(value, bool):
                raise ValueError
            result = float(value)
            if not math.isfinite(result):
                raise ValueError
        elif t is str or t is None:
            result = str(value)
        else:
            result = t(value)
    except (ValueError, TypeError, argparse.ArgumentTypeError):
        raise UserError(f"{origin}: key '{key}' expects {_type_name(t)}, got {value!r}") from None
    if action.choices is not None and result not in action.choices:
        raise UserError(f"{origin}: key '{key}' must be one of {', '.join(map(str, action.choices))}; "
                        f"got {result!r}")
    return result


def _closest(key, valid):
    match = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f"; did you mean '{match[0]}'?" if match else ""


def _owner_of(key):
    """'algorithm X' / 'imb_algorithm Y' when another registered algorithm declares ``key``."""
    for kind, names, get in (("algorithm", registry.algorithms(), registry.algorithm_class),
                             ("imb_algorithm", registry.imb_algorithms(), registry.imb_algorithm_class)):
        for name in names:
            cls = get(name)
            declared = cls.get_argument() if hasattr(cls, "get_argument") else []
            if any(a.name.lstrip("-") == key for a in declared):
                return f"{kind} '{name}'"
    return None


def _resolve_names(cli_argv, yaml_values):
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("-alg", "--algorithm", default=None)
    pre.add_argument("-imb_alg", "--imb_algorithm", default=None)
    known, _ = pre.parse_known_args(cli_argv)
    algorithm = known.algorithm or yaml_values.get("algorithm") or "fixmatch"
    imb = known.imb_algorithm if known.imb_algorithm is not None else yaml_values.get("imb_algorithm")
    if isinstance(imb, str) and imb in _NONE_STRINGS:
        imb = None
    if algorithm not in registry.algorithms():
        raise UserError(f"unknown algorithm '{algorithm}'{_closest(algorithm, registry.algorithms())} "
                        f"registered: {', '.join(registry.algorithms())}")
    if imb is not None and imb not in registry.imb_algorithms():
        raise UserError(f"unknown imb_algorithm '{imb}'{_closest(imb, registry.imb_algorithms())} "
                        f"registered: {', '.join(registry.imb_algorithms())}")
    return algorithm, imb


def _apply_presets(args, explicit):
    """Fill keys from a preset (e.g. remop_preset: official) unless the YAML or the command line set them."""
    for name in (args.algorithm, args.imb_algorithm):
        if not name:
            continue
        cls = registry.imb_algorithm_class(name) if name == args.imb_algorithm else registry.algorithm_class(name)
        key = getattr(cls, "PRESET_KEY", None)
        if key is None:
            continue
        for k, v in cls.PRESETS[getattr(args, key)].items():
            if k not in explicit:
                setattr(args, k, v)


def parse_args(argv=None):
    """Parse ``argv`` (default: sys.argv[1:]) into USB's args namespace, YAML first, flags on top."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--c", default="")
    pre.add_argument("--plugins", nargs="*", default=None)
    known, _ = pre.parse_known_args(argv)
    yaml_values, yaml_lines = read_yaml(known.c) if known.c else ({}, {})
    plugins = known.plugins if known.plugins is not None else yaml_values.get("plugins", []) or []
    registry.load(plugins)
    algorithm, imb = _resolve_names(argv, yaml_values)

    parser = build_parser(algorithm, imb)
    actions = {a.dest: a for a in parser._actions if a.dest != "help"}
    defaults = {}
    for key, value in yaml_values.items():
        origin = where(known.c, yaml_lines.get(key))
        if key not in actions:
            owner = _owner_of(key)
            if owner:
                raise UserError(f"{origin}: key '{key}' is an option of {owner}, which this run does not use "
                                f"(algorithm: {algorithm}, imb_algorithm: {imb})")
            raise UserError(f"{origin}: unknown key '{key}'{_closest(key, list(actions))} "
                            f"(python train.py --c {known.c} --help lists the valid keys)")
        if key == "plugins":
            defaults[key] = list(value or [])
            continue
        defaults[key] = convert_value(key, value, actions[key], origin)
    parser.set_defaults(**defaults)
    args = parser.parse_args(argv)

    explicit = set(yaml_values) | set(vars(build_parser(algorithm, imb, suppress_defaults=True).parse_args(argv)))
    args.algorithm, args.imb_algorithm = algorithm, imb
    _apply_presets(args, explicit)
    validate(args)
    return args


def validate(args):
    """Checks across keys that argparse cannot do."""
    for key, value in vars(args).items():
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"key '{key}' must be a finite number, got {value}")
    if args.epoch < 1 or args.num_train_iter < 1:
        raise UserError(f"epoch ({args.epoch}) and num_train_iter ({args.num_train_iter}) must be positive")
    if args.num_train_iter % args.epoch:
        raise UserError(f"num_train_iter ({args.num_train_iter}) must be a multiple of epoch ({args.epoch})")
    if args.dataset not in registry.datasets():
        raise UserError(f"unknown dataset '{args.dataset}'{_closest(args.dataset, registry.datasets())} "
                        f"known: {', '.join(registry.datasets())}")
    if not args.net_from_name and args.net not in registry.nets():
        raise UserError(f"unknown net '{args.net}'{_closest(args.net, registry.nets())} "
                        f"registered: {', '.join(registry.nets())}")
