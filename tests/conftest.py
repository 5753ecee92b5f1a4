"""Shared fixtures: a small synthetic RAF-DB written once per test session (the generator is deterministic)."""

import os
import tempfile

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
# caches (FERPlus pixels, image checks, AffectNet index) go to a fresh folder, never the user's ~/.cache
os.environ["REMOP_USB_CACHE"] = tempfile.mkdtemp(prefix="remop-usb-test-cache-")


@pytest.fixture(scope="session")
def tiny_rafdb(tmp_path_factory):
    """A 280-train / 140-test synthetic RAF-DB at 32 px, in the official layout."""
    from datasets_fer.synthetic import write_rafdb

    root = tmp_path_factory.mktemp("rafdb") / "data"
    write_rafdb(root, num_train=280, num_test=140, size=32, seed=0)
    return str(root)


def train_argv(data_dir, save_dir, config="config/demo/remop_fixmatch.yaml", **overrides):
    """Command-line arguments for a few-iteration CPU run of ``config`` on ``data_dir`` (no diagnostics, no plots)."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    values = dict(data_dir=data_dir, save_dir=str(save_dir), num_labels=20, lb_imb_ratio=10, img_size=32,
                  num_train_iter=6, epoch=1, num_eval_iter=3, num_log_iter=1, batch_size=4, eval_batch_size=64,
                  num_workers=0, device="cpu", diagnostics=False, plots=False)  # tests of those turn them on
    values.update(overrides)
    argv = ["--c", os.path.join(repo, config)]
    for k, v in values.items():
        argv += [f"--{k}", str(v)]
    return argv


def build_for(data_dir, save_dir, config="config/demo/remop_fixmatch.yaml", **overrides):
    """The algorithm object a few-iteration run of ``config`` would train (models placed, loaders built)."""
    from remop_usb.config import parse_args
    from remop_usb.launch import build_algorithm, resolve_device

    args = parse_args(train_argv(data_dir, save_dir, config=config, **{"save_name": "alg", **overrides}))
    resolve_device(args)
    return build_algorithm(args)


def one_batch(algorithm):
    """The first labeled and unlabeled batches, as one processed ``train_step`` input."""
    data_lb = next(iter(algorithm.loader_dict["train_lb"]))
    data_ulb = next(iter(algorithm.loader_dict["train_ulb"]))
    return algorithm.process_batch(**data_lb, **data_ulb)


def start_training(algorithm):
    """What USB's ``train()`` does before its first step: the ``before_run`` hooks and the first epoch."""
    algorithm.call_hook("before_run")
    algorithm.epoch = algorithm.start_epoch  # ABC reads it


def step_on(algorithm, batch):
    """One USB iteration on ``batch``: ``train_step``, then the parameter update (ParamUpdateHook); returns
    (out_dict, log_dict)."""
    algorithm.out_dict, algorithm.log_dict = algorithm.train_step(**batch)
    algorithm.call_hook("after_train_step", "ParamUpdateHook")
    return algorithm.out_dict, algorithm.log_dict


def demo_configs():
    """Every ``config/demo/*.yaml``, relative to the repository (one per method of the demo)."""
    import glob

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return sorted(os.path.relpath(p, repo) for p in glob.glob(os.path.join(repo, "config", "demo", "*.yaml")))


def spy(algorithm, hook_name, method):
    """Record the keyword arguments (after any wrapper's substitution) and the result of one hook method."""
    hook = algorithm.hooks_dict[hook_name]
    original, seen = getattr(hook, method), {}

    def wrapper(alg, *args, **kwargs):
        seen.update(kwargs)
        seen["result"] = original(alg, *args, **kwargs)
        return seen["result"]

    setattr(hook, method, wrapper)
    return seen
