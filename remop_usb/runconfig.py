"""What identifies a run: its resolved configuration, and the names a run is filed under.

``config.json`` (written in the save dir when a run starts) holds :func:`snapshot` -- every key as parsed, before the
launcher adapts anything to the machine. Two runs are the same experiment when their configurations agree on every
key except :data:`NON_IDENTITY`: keys that say where a run is saved or logged, how it is placed on the machine, or
what is measured beside it, none of which changes the trained model. ``remop-usb sweep`` uses this to skip finished
runs and to refuse to resume or reuse a run made with another configuration.
"""

from __future__ import annotations

import functools
import os

from .fileio import read_json

#: keys that do not change what is trained or how it is evaluated
NON_IDENTITY = frozenset({
    "c", "save_dir", "save_name", "resume", "load_path", "overwrite",
    "use_tensorboard", "use_wandb", "use_aim", "wandb_project", "wandb_group", "wandb_tags",
    "diagnostics", "diag_every", "diag_max_samples", "plots", "plot_tsne_max",
    "num_log_iter", "num_workers", "eval_batch_size", "data_dir", "test_data_dir", "ulb_data_dir", "cache_dir",
    "device",
    "world_size", "rank", "dist_url", "dist_backend", "gpu", "multiprocessing_distributed",
    "preset_conflicts",  # what the config said against a preset (its file:line): the keys themselves are compared
})

CONFIG_FILE = "config.json"


def snapshot(args) -> dict:
    """Every key of ``args`` as JSON values, sorted by name."""
    from .config import to_plain  # here, not at the top: .config imports USB, and readers of config.json need not

    return {k: to_plain(v) for k, v in sorted(vars(args).items())}


def identity(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in NON_IDENTITY}


def key_defaults(config: dict) -> dict:
    """The default of every key a run of this configuration's algorithms has (JSON values)."""
    imb = config.get("imb_algorithm")
    return _defaults(config.get("algorithm"), None if imb in (None, "None", "") else imb,
                     tuple(config.get("plugins") or ()))


@functools.lru_cache(maxsize=None)
def _defaults(algorithm, imb_algorithm, plugins) -> dict:
    from . import registry
    from .config import build_parser, to_plain

    registry.load(list(plugins))
    parser = build_parser(algorithm, imb_algorithm)
    return {a.dest: to_plain(a.default) for a in parser._actions if a.dest != "help"}


def differences(expected: dict, found: dict) -> list:
    """``key: found -> expected`` for every identity key on which two configurations disagree. A key only one side
    has (a run made before the key existed, say) counts at its default value there."""
    a, b = identity(expected), identity(found)
    defaults = key_defaults(expected) if set(a) ^ set(b) else {}
    get = lambda cfg, k: cfg.get(k, defaults.get(k, "<unset>"))  # noqa: E731
    return [f"{k}: {get(b, k)!r} -> {get(a, k)!r}" for k in sorted(set(a) | set(b)) if get(a, k) != get(b, k)]


def read_config(run_dir, what="remop-usb"):
    """The run's config.json, or None when there is none; one that cannot be read is a UserError starting
    ``what`` (the command reading it)."""
    path = os.path.join(run_dir, CONFIG_FILE)
    if not os.path.exists(path):
        return None
    return read_json(path, what)


def _getter(config):
    """``get(key, default=None)`` of a configuration: a dict (config.json, results.json) or an args namespace."""
    return config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)


def method_name(config) -> str:
    """``fixmatch`` or ``fixmatch+remop`` (base learner + imbalanced algorithm)."""
    get = _getter(config)
    imb = get("imb_algorithm")
    return get("algorithm") + (f"+{imb}" if imb else "")


def setting_name(config) -> str:
    """``rafdb-N500-g150``: the dataset and its imbalanced split, the columns of the paper's tables; with a drawn
    unlabeled subset (``ulb_num_labels`` M1, ``ulb_imb_ratio`` gamma_u, negative = reversed) ``rafdb-N40-g10-M40-gu-10``."""
    get = _getter(config)
    name = f"{get('dataset')}-N{get('num_labels')}-g{get('lb_imb_ratio')}"
    if get("ulb_num_labels") not in (None, "None", -1):
        name += f"-M{get('ulb_num_labels')}-gu{get('ulb_imb_ratio')}"
    return name
