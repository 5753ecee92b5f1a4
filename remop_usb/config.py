"""Configuration: USB's own key names, YAML file + command line, strictly checked.

Precedence, lowest first: argument defaults < a preset (e.g. ``remop_preset: official``) < the YAML file (``--c``)
< command-line flags. (USB's train.py does the opposite: its YAML overrides flags.) Every YAML key must be a known
argument -- USB's, this plugin's, or one declared by the chosen algorithm / imbalanced algorithm through USB's
``get_argument()`` -- and have the right type; otherwise a one-line :class:`~remop_usb.errors.UserError` names the
file, the line and the closest valid key. So does a command-line flag: a misspelled one names the closest valid flag,
a value of the wrong type or outside the choices names what the flag expects (:class:`FlagParser`). A number outside
its key's range (:mod:`remop_usb.ranges`) is refused in one line naming where it was set and the range.
"""

from __future__ import annotations

import argparse
import math
import os

from . import registry  # first: imports USB quietly
from semilearn.algorithms.utils import str2bool  # noqa: E402  (USB's, so its algorithms' bool options match)

from .errors import OneLineArgumentParser, UserError, closest, where
from .ranges import KEY_RANGES, violations
from .usb_compat.optim import OPTIMIZERS, SCHEDULES
from datasets_fer import data_keys  # noqa: E402

DESCRIPTION = """Train a USB algorithm (optionally wrapped by an imbalanced algorithm such as ReMoP).
Keys are USB's own names; give them in a YAML file with --c and/or as flags.
Command-line flags OVERRIDE the YAML file (USB's own train.py does the opposite)."""

_NONE_STRINGS = ("None", "none", "null", "")
#: where a command-line problem is, in messages (a YAML one says file:line)
COMMAND_LINE = "command line"


def _flag(action) -> str:
    """The flag of ``action`` spelled like its key (``--world_size`` rather than ``--world-size``)."""
    spelled = f"--{action.dest}"
    return spelled if spelled in action.option_strings else action.option_strings[-1]


class FlagParser(OneLineArgumentParser):
    """train.py's parser: every error is one line (:class:`~remop_usb.errors.OneLineArgumentParser`), and a flag's
    value of the wrong type or outside its choices names the flag and what it expects, as a YAML key's does."""

    def _get_value(self, action, arg_string):
        try:
            return super()._get_value(action, arg_string)
        except argparse.ArgumentError:
            raise UserError(f"{COMMAND_LINE}: flag {_flag(action)} expects {_type_name(action.type)}, "
                            f"got {arg_string!r}") from None

    def _check_value(self, action, value):
        if action.choices is not None and value not in action.choices:
            raise UserError(f"{COMMAND_LINE}: flag {_flag(action)} {_choices_message(action.choices, value)}")


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
    g.add_argument("--num_train_iter", type=int, default=None,
                   help="[plugin default] total iterations; not given: epoch x num_iter_per_epoch")
    g.add_argument("--num_iter_per_epoch", type=int, default=1000,
                   help="[plugin] iterations per epoch, when num_train_iter is not given (the ReMoP paper's 1,000, "
                   "Sec. 5.2; its released code's 800); given, num_train_iter / epoch")
    g.add_argument("--num_warmup_iter", type=int, default=0)
    g.add_argument("--num_eval_iter", type=int, default=10)
    g.add_argument("--num_log_iter", type=int, default=5)
    g.add_argument("-nl", "--num_labels", type=int, default=400, help="N1 for FER datasets: labeled images of "
                   "the most frequent class")
    g.add_argument("-bsz", "--batch_size", type=int, default=8)
    g.add_argument("--uratio", type=int, default=1)
    g.add_argument("--eval_batch_size", type=int, default=16)
    g.add_argument("--ema_m", type=float, default=0.999)
    g.add_argument("--ema_weight_decay", type=float, default=0.0,
                   help="[plugin] after each EMA update, multiply the model's weights by (1 - lr x this): the "
                   "decoupled weight decay of the ReMoP authors' WeightEMA (0.02); 0: off")
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
    g.add_argument("--demo_pretrain", type=str2bool, default=False,
                   help="[plugin] with an empty pretrain_path: load the synthetic face-recognition backbone "
                        "(remop-usb pretrain, the MS-Celeb-1M stand-in), built into cache_dir on first use")

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
    g.add_argument("--ulb_imb_ratio", type=int, default=1, help="gamma_u = M1 / MK of a drawn unlabeled subset "
                   "(ulb_num_labels set); negative: reversed order, as USB (consistent: lb_imb_ratio, uniform: 1, "
                   "reversed: -lb_imb_ratio)")
    g.add_argument("--ulb_num_labels", type=int, default=None, help="M1 for FER datasets: unlabeled images of the "
                   "most frequent class (USB: the total when ulb_imb_ratio is 1); None: every image not labeled")
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


def _add_tracking_arguments(p):
    """W&B, training diagnostics and end-of-run plots (remop_usb.tracking, .diagnostics, .plots)."""
    g = p.add_argument_group("tracking, diagnostics and plots")
    g.add_argument("--wandb_project", type=str, default="remop-usb", help="[plugin] W&B project (use_wandb: True)")
    g.add_argument("--wandb_group", type=str, default=None,
                   help="[plugin] W&B group; default the setting <dataset>-N<num_labels>-g<lb_imb_ratio>")
    g.add_argument("--wandb_tags", type=str, default="",
                   help="[plugin] extra W&B tags, comma-separated (the method is always a tag)")
    g.add_argument("--diagnostics", type=str2bool, default=True,
                   help="[plugin] pseudo-label quality and neural-collapse geometry on the unlabeled set")
    g.add_argument("--diag_every", type=int, default=0, help="[plugin] diagnostics interval; 0: num_eval_iter")
    g.add_argument("--diag_max_samples", type=int, default=1000,
                   help="[plugin] at most this many unlabeled images per diagnostics pass (a fixed subset); 0: all")
    g.add_argument("--plots", type=str2bool, default=True, help="[plugin] PNGs in the save dir at the end")
    g.add_argument("--plot_tsne_max", type=int, default=2000, help="[plugin] test images in the t-SNE plot")


def _add_speed_arguments(p):
    """Speed options; those that change the numerics are off by default (remop_usb.usb_compat.speed, .amp,
    .loaders; datasets_fer.image_cache). One that cannot apply on this device says so in one line and is turned off."""
    g = p.add_argument_group("speed")
    g.add_argument("--amp_dtype", type=str, default="fp16", choices=("fp16", "bf16"),
                   help="[plugin] amp: True precision: fp16 (USB's, with a GradScaler) or bf16 (no scaler)")
    g.add_argument("--channels_last", type=str2bool, default=False, help="[plugin] NHWC memory format for the models")
    g.add_argument("--compile", type=str2bool, default=False, help="[plugin] torch.compile the training model")
    g.add_argument("--compile_mode", type=str, default="default",
                   choices=("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
                   help="[plugin] torch.compile mode")
    g.add_argument("--cudnn_benchmark", type=str2bool, default=False,
                   help="[plugin] autotuned cuDNN kernels instead of deterministic ones (CUDA only)")
    g.add_argument("--pin_memory", type=str2bool, default=False, help="[plugin] page-locked loader batches "
                   "(CUDA only)")
    g.add_argument("--persistent_workers", type=str2bool, default=False,
                   help="[plugin] keep loader workers alive between epochs (num_workers > 0)")
    g.add_argument("--prefetch_factor", type=int, default=None,
                   help="[plugin] batches loaded ahead per worker (num_workers > 0); default PyTorch's 2")
    g.add_argument("--image_cache", type=str2bool, default=False,
                   help="[plugin] read images pre-resized once to the transforms' input size (FER datasets), "
                   "kept under cache_dir/images")


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
    p = FlagParser(prog="train.py", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_usb_arguments(p)
    _add_tracking_arguments(p)
    _add_speed_arguments(p)
    data_keys.add_arguments(p)
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
    return {str(k): to_plain(v) for k, v in data.items()}, lines


def to_plain(value):
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
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
        raise UserError(f"{origin}: key '{key}' {_choices_message(action.choices, result)}")
    return result


def _choices_message(choices, value) -> str:
    return f"must be one of {', '.join(map(str, choices))}; got {value!r}"


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


def _unknown_key(key, valid, origin, algorithm, imb, flag=False, hint=""):
    """The UserError for a YAML key (or, with ``flag``, a command-line flag) that no argument of this run declares:
    another algorithm's option, or unknown with the closest valid one."""
    noun, spell = ("flag", lambda k: f"--{k}") if flag else ("key", lambda k: f"'{k}'")
    owner = _owner_of(key)
    if owner:
        return UserError(f"{origin}: {noun} {spell(key)} is an option of {owner}, which this run does not use "
                         f"(algorithm: {algorithm}, imb_algorithm: {imb})")
    return UserError(f"{origin}: unknown {noun} {spell(key)}{closest(key, valid, spell)} ({hint} lists the valid "
                     f"{noun}s)")


def _unexpected_argument(extra, valid, algorithm, imb):
    """The UserError for the first command-line word that argparse left over."""
    if not extra.startswith("-"):
        return UserError(f"{COMMAND_LINE}: unexpected argument {extra!r} (flags take the form --key value)")
    key = extra.lstrip("-").split("=", 1)[0]
    return _unknown_key(key, valid, COMMAND_LINE, algorithm, imb, flag=True, hint="python train.py --help")


def _resolve_names(cli_argv, yaml_values):
    pre = OneLineArgumentParser(prog="train.py", add_help=False)
    pre.add_argument("-alg", "--algorithm", default=None)
    pre.add_argument("-imb_alg", "--imb_algorithm", default=None)
    known, _ = pre.parse_known_args(cli_argv)
    algorithm = known.algorithm or yaml_values.get("algorithm") or "fixmatch"
    imb = known.imb_algorithm if known.imb_algorithm is not None else yaml_values.get("imb_algorithm")
    if isinstance(imb, str) and imb in _NONE_STRINGS:
        imb = None
    if algorithm not in registry.algorithms():
        raise UserError(f"unknown algorithm '{algorithm}'{closest(algorithm, registry.algorithms())} "
                        f"registered: {', '.join(registry.algorithms())}")
    if imb is not None and imb not in registry.imb_algorithms():
        raise UserError(f"unknown imb_algorithm '{imb}'{closest(imb, registry.imb_algorithms())} "
                        f"registered: {', '.join(registry.imb_algorithms())}")
    from .usb_compat.imb_algorithms import refusal

    refused = refusal(algorithm, imb)  # USB's imbalanced algorithms that cannot run here, or not on this learner
    if refused:
        raise UserError(refused)
    return algorithm, imb


#: a key that, with ``epoch``, fixes a preset key: an explicit num_train_iter fixes the iterations per epoch
IMPLIED_BY = {"num_iter_per_epoch": "num_train_iter"}


def run_classes(algorithm, imb_algorithm) -> list:
    """The classes of this run's algorithms: the learner's, then the imbalanced algorithm's (either may be None)."""
    classes = [registry.algorithm_class(algorithm)] if algorithm else []
    return classes + ([registry.imb_algorithm_class(imb_algorithm)] if imb_algorithm else [])


def preset_classes(algorithm, imb_algorithm):
    """The classes of this run's algorithms that declare presets (``PRESET_KEY`` and ``PRESETS``)."""
    return [cls for cls in run_classes(algorithm, imb_algorithm) if getattr(cls, "PRESET_KEY", None)]


def preset_keys(cls) -> set:
    """Every key some preset of ``cls`` sets."""
    return {k for preset in cls.PRESETS.values() for k in preset}


def pinning_keys(algorithm, imb_algorithm) -> set:
    """Keys a config of these algorithms must leave unset for every preset to take effect: the keys the presets set
    and the keys that imply them (:data:`IMPLIED_BY`)."""
    keys = set().union(*(preset_keys(cls) for cls in preset_classes(algorithm, imb_algorithm)))
    return keys | {IMPLIED_BY[k] for k in keys if k in IMPLIED_BY}


def _implied(args, key):
    """The value of ``key`` that its :data:`IMPLIED_BY` key sets (iterations per epoch: num_train_iter / epoch)."""
    value = args.num_train_iter / args.epoch
    return int(value) if value == int(value) else value


def _explicit_setting(args, key, origins):
    """(value, key that sets it) when the YAML or the command line fixes ``key``, directly or through
    :data:`IMPLIED_BY`; else None."""
    if key in origins:
        return getattr(args, key), key
    via = IMPLIED_BY.get(key)
    if via in origins and getattr(args, via) is not None:
        return _implied(args, key), via
    return None


def _contradiction(preset_key, preset, key, value, setting, origins, args) -> str:
    """The line naming an explicit setting that contradicts the preset (the explicit one wins)."""
    explicit, via = setting
    origin = origins[via]
    said = f"--{via} {getattr(args, via)}" if origin == COMMAND_LINE else _shown(getattr(args, via))
    if via != key:
        said = (f"{said if origin == COMMAND_LINE else f'{via} {said}'} (epoch {args.epoch}: {_shown(explicit)} "
                f"per epoch)")
    return f"[remop-usb] {preset_key} {preset} sets {key}={_shown(value)}; {origin} sets {said}, which wins"


def _shown(value) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def _apply_presets(args, origins):
    """Fill keys from a preset (e.g. remop_preset: official) unless the YAML or the command line set them
    (``origins``: key -> file:line or COMMAND_LINE); each such key that contradicts the preset is named in one printed
    line, with the value that wins (the explicit one). Equal values say nothing. The lines are also kept in
    ``args.preset_conflicts`` (a list, empty without any), which the launcher writes into the run's log.txt and
    config.json."""
    args.preset_conflicts = []
    for cls in preset_classes(args.algorithm, args.imb_algorithm):
        preset = getattr(args, cls.PRESET_KEY)
        for k, v in cls.PRESETS[preset].items():
            setting = _explicit_setting(args, k, origins)
            if setting is None:
                setattr(args, k, v)
            elif setting[0] != v:
                args.preset_conflicts.append(_contradiction(cls.PRESET_KEY, preset, k, v, setting, origins, args))
                print(args.preset_conflicts[-1])


def _check_schedule(args):
    if args.epoch < 1 or (args.num_train_iter is not None and args.num_train_iter < 1) or args.num_iter_per_epoch < 1:
        raise UserError(f"epoch ({args.epoch}), num_train_iter ({args.num_train_iter}) and num_iter_per_epoch "
                        f"({args.num_iter_per_epoch}) must be positive")
    if args.num_train_iter is not None and args.num_train_iter % args.epoch:
        raise UserError(f"num_train_iter ({args.num_train_iter}) must be a multiple of epoch ({args.epoch}): pass "
                        f"--epoch {_epoch_for(args.num_train_iter, args.epoch)} (or another divisor of "
                        f"{args.num_train_iter})")


def _epoch_for(num_train_iter, epoch) -> int:
    """The largest divisor of ``num_train_iter`` not above ``epoch``: the epochs closest to those asked for."""
    return max(d for d in range(1, min(epoch, num_train_iter) + 1) if num_train_iter % d == 0)


def _derive_epoch(args, origins):
    """``--num_train_iter`` on the command line that the config's (or the default) epoch does not divide: epoch
    becomes :func:`_epoch_for`, said in one line -- a user shortening a run need not change epoch as well. With
    ``--epoch`` on the command line too, or ``num_iter_per_epoch`` set, nothing is derived (the error names what to
    pass)."""
    n, epoch = args.num_train_iter, args.epoch
    if (n is None or n < 1 or epoch < 1 or n % epoch == 0 or origins.get("num_train_iter") != COMMAND_LINE
            or origins.get("epoch") == COMMAND_LINE or "num_iter_per_epoch" in origins):
        return
    args.epoch = _epoch_for(n, epoch)
    print(f"[remop-usb] --num_train_iter {n} is not a multiple of epoch {epoch} ({origins.get('epoch', 'default')}):"
          f" training {args.epoch} epochs of {n // args.epoch} iterations (--epoch sets another divisor of {n})")


def _resolve_schedule(args, origins):
    """num_train_iter = epoch x num_iter_per_epoch when num_train_iter is not given; given, it sets the iterations
    per epoch (both given and disagreeing: an error)."""
    if args.num_train_iter is None:
        args.num_train_iter = args.epoch * args.num_iter_per_epoch
        return
    per_epoch = args.num_train_iter // args.epoch
    if "num_iter_per_epoch" in origins and args.num_iter_per_epoch != per_epoch:
        raise UserError(f"{origins['num_train_iter']}: num_train_iter {args.num_train_iter} is {args.epoch} epochs x "
                        f"{per_epoch}, but {origins['num_iter_per_epoch']} sets num_iter_per_epoch "
                        f"{args.num_iter_per_epoch}; give one of them")
    args.num_iter_per_epoch = per_epoch


def parse_args(argv=None):
    """Parse ``argv`` (default: sys.argv[1:]) into USB's args namespace, YAML first, flags on top."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    pre = OneLineArgumentParser(prog="train.py", add_help=False)
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
            raise _unknown_key(key, list(actions), origin, algorithm, imb, hint=f"python train.py --c {known.c} --help")
        if key == "plugins":
            defaults[key] = list(value or [])
            continue
        defaults[key] = convert_value(key, value, actions[key], origin)
    parser.set_defaults(**defaults)
    args, extras = parser.parse_known_args(argv)
    if extras:
        raise _unexpected_argument(extras[0], list(actions), algorithm, imb)

    command_line = set(vars(build_parser(algorithm, imb, suppress_defaults=True).parse_args(argv)))
    origins = {k: where(known.c, yaml_lines.get(k)) for k in yaml_values}
    origins.update((k, COMMAND_LINE) for k in command_line)
    args.algorithm, args.imb_algorithm = algorithm, imb
    _derive_epoch(args, origins)
    _check_schedule(args)
    _apply_presets(args, origins)
    _resolve_schedule(args, origins)
    validate(args, origins)
    return args


def range_table(algorithm, imb_algorithm) -> dict:
    """{key: range} of a run of these algorithms: :data:`~remop_usb.ranges.KEY_RANGES`, overridden by the ``RANGES``
    of the algorithm's class, then by the imbalanced algorithm's."""
    table = dict(KEY_RANGES)
    for cls in run_classes(algorithm, imb_algorithm):
        table.update(getattr(cls, "RANGES", {}))
    return table


def _check_ranges(args, origins):
    """The first numeric key outside its range (:func:`range_table`) as a one-line UserError naming where it was set
    (``origins``: key -> file:line or COMMAND_LINE), its value and the range."""
    for key, value, allowed in violations(vars(args), range_table(args.algorithm, args.imb_algorithm)):
        origin = origins.get(key)
        if origin == COMMAND_LINE:
            said = f"{COMMAND_LINE}: --{key} {value}"
        else:
            said = f"{origin}: {key} {value}" if origin else f"{key} {value} (default)"
        raise UserError(f"{said} is out of range: expected {allowed.text(key)}")


def validate(args, origins=None):
    """Checks that argparse cannot do: finite numbers, each numeric key in its range (``origins``: key -> where it
    was set, for the messages), and checks across keys."""
    for key, value in vars(args).items():
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"key '{key}' must be a finite number, got {value}")
    _check_ranges(args, origins or {})
    _check_schedule(args)
    if args.dataset not in registry.datasets():
        raise UserError(f"unknown dataset '{args.dataset}'{closest(args.dataset, registry.datasets())} "
                        f"known: {', '.join(registry.datasets())}")
    data_keys.check(args)
    if not args.net_from_name and args.net not in registry.nets():
        raise UserError(f"unknown net '{args.net}'{closest(args.net, registry.nets())} "
                        f"registered: {', '.join(registry.nets())}")
    from .usb_compat.imb_algorithms import schedule_problem

    problem = schedule_problem(args)  # USB keys that an imbalanced algorithm accepts but that break it silently
    if problem:
        raise UserError(problem)
