"""Shared fixtures: a small synthetic RAF-DB written once per test session (the generator is deterministic)."""

import contextlib
import copy
import json
import os
import tempfile

import numpy as np
import pytest

os.environ.setdefault("WANDB_MODE", "offline")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # one thread per pytest-xdist worker (and per process a test starts): two workers of two threads each on two
    # cores wait on each other in every convolution
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
# caches (FERPlus pixels, image checks, AffectNet index) go to a fresh folder, never the user's ~/.cache
# (REMOP_USB_TEST_CACHE names one to reuse between sessions, e.g. to keep the session's stand-in backbone)
os.environ["REMOP_USB_CACHE"] = os.environ.get("REMOP_USB_TEST_CACHE") or tempfile.mkdtemp(prefix="remop-usb-test-cache-")


@pytest.fixture(scope="session")
def tiny_rafdb(tmp_path_factory):
    """A 280-train / 140-test synthetic RAF-DB at 32 px, in the official layout."""
    from datasets_fer.synthetic import write_rafdb

    root = tmp_path_factory.mktemp("rafdb") / "data"
    write_rafdb(root, num_train=280, num_test=140, size=32, seed=0)
    return str(root)


#: where the stand-in backbone of the tests is kept between sessions: it is keyed on everything its bytes depend on
#: (settings, generator, torch, CPU, threads, Pillow), so sharing the demo's cache is harmless, and it is built once
#: under a file lock however many pytest-xdist workers ask for it at once
BACKBONE_CACHE = os.environ.get("REMOP_USB_TEST_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "remop-usb")


@pytest.fixture(scope="session")
def pretrained_backbone():
    """The stand-in face backbone (``remop-usb pretrain``, test-sized: 48 px, 400 steps), built once (see
    :data:`BACKBONE_CACHE`); its path, for ``pretrain_path``."""
    from remop_usb.pretrain import TEST_SETTINGS, ensure_pretrained

    return ensure_pretrained(TEST_SETTINGS, cache_dir=BACKBONE_CACHE)


@pytest.fixture(scope="session")
def contract_rafdb(tmp_path_factory):
    """``tiny_rafdb`` drawn at the demo's 48 px, for runs from the stand-in backbone (the method contracts): at
    32 px the expressions lose most of the detail the backbone learnt to see."""
    from datasets_fer.synthetic import write_rafdb

    root = tmp_path_factory.mktemp("rafdb48") / "data"
    write_rafdb(root, num_train=280, num_test=140, size=48, seed=0)
    return str(root)


def train_argv(data_dir, save_dir, config="config/demo/remop_fixmatch.yaml", **overrides):
    """Command-line arguments for a few-iteration CPU run of ``config`` on ``data_dir`` (no diagnostics, no plots)."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    values = dict(data_dir=data_dir, save_dir=str(save_dir), num_labels=20, lb_imb_ratio=10, img_size=32,
                  num_train_iter=6, epoch=1, num_eval_iter=3, num_log_iter=1, batch_size=4, eval_batch_size=64,
                  num_workers=0, device="cpu", diagnostics=False, plots=False,  # tests of those turn them on
                  use_pretrain=False, demo_pretrain=False)  # random init; contracts pass the session's stand-in
    values.update(overrides)
    argv = ["--c", os.path.join(repo, config)]
    for k, v in values.items():
        argv += [f"--{k}", str(v)]
    return argv


def short_run_results(data_dir, save_dir, config, iterations=1):
    """Train ``config`` for ``iterations`` steps through train.py's entry point (evaluating each step); the run's
    results.json as a dict (the run is saved as ``<save_dir>/<config's file name>``)."""
    from remop_usb.launch import main

    name = os.path.splitext(os.path.basename(config))[0]
    assert main(train_argv(data_dir, save_dir, config=config, save_name=name, num_train_iter=iterations,
                           num_eval_iter=1)) == 0
    with open(os.path.join(str(save_dir), name, "results.json")) as f:
        return json.load(f)


def build_for(data_dir, save_dir, config="config/demo/remop_fixmatch.yaml", seed=False, **overrides):
    """The algorithm object a few-iteration run of ``config`` would train (models placed, loaders built); with
    ``seed``, the global RNGs are seeded with the run's seed first, as train.py does (identical weights each build)."""
    from remop_usb.config import parse_args
    from remop_usb.launch import build_algorithm, resolve_device, seed_everything

    args = parse_args(train_argv(data_dir, save_dir, config=config, **{"save_name": "alg", **overrides}))
    resolve_device(args)
    if seed:
        seed_everything(args.seed)
    return build_algorithm(args)


@contextlib.contextmanager
def restored(algorithm):
    """Undo, on leaving, what a test did to a shared algorithm's weights and buffers (model, EMA model, EMA shadow)
    and to its tensor, number and string attributes -- so module-scoped algorithms give results independent of the
    order tests run in."""
    import torch

    models = {name: copy.deepcopy(getattr(algorithm, name).state_dict()) for name in ("model", "ema_model")}
    shadow = copy.deepcopy(getattr(getattr(algorithm, "ema", None), "shadow", None))
    plain = (torch.Tensor, int, float, bool, str, type(None))
    attributes = {k: copy.deepcopy(v) for k, v in vars(algorithm).items() if isinstance(v, plain)}
    try:
        yield algorithm
    finally:
        for name, state in models.items():
            getattr(algorithm, name).load_state_dict(state)
        if shadow is not None:
            for key, value in shadow.items():
                algorithm.ema.shadow[key].data.copy_(value)
        for key in [k for k, v in vars(algorithm).items() if isinstance(v, plain) and k not in attributes]:
            delattr(algorithm, key)
        for key, value in attributes.items():
            setattr(algorithm, key, value)


def one_batch(algorithm):
    """The first labeled and unlabeled batches, as one processed ``train_step`` input."""
    data_lb = next(iter(algorithm.loader_dict["train_lb"]))
    data_ulb = next(iter(algorithm.loader_dict["train_ulb"]))
    return algorithm.process_batch(**data_lb, **data_ulb)


def start_training(algorithm):
    """What USB's ``train()`` does before its first step: the ``before_run`` hooks, the first epoch and its
    ``before_train_epoch`` hooks (SAW sets its class weights there)."""
    algorithm.call_hook("before_run")
    algorithm.epoch = algorithm.start_epoch  # ABC reads it
    algorithm.call_hook("before_train_epoch")


def step_on(algorithm, batch):
    """One USB iteration on ``batch``: the ``before_train_step`` hooks, ``train_step``, then the parameter update
    (ParamUpdateHook); returns (out_dict, log_dict)."""
    algorithm.call_hook("before_train_step")  # as USB's loop does (DebiasPL hands its loss p_hat there)
    algorithm.out_dict, algorithm.log_dict = algorithm.train_step(**batch)
    algorithm.call_hook("after_train_step", "ParamUpdateHook")
    return algorithm.out_dict, algorithm.log_dict


@pytest.fixture(scope="session")
def demo_split_sha256(tiny_rafdb):
    """The sha256 of the split ``train_argv``'s keys ask for on ``tiny_rafdb`` (rafdb, K = 7, N1 = 20, gamma = 10,
    seed 0, labeled images not in the unlabeled set), computed from the labels alone."""
    from datasets_fer import FER_DATASETS
    from datasets_fer.split import make_split

    index = FER_DATASETS["rafdb"](tiny_rafdb)
    return make_split("rafdb", index.train_labels, 7, 20, 10, 0, include_lb_to_ulb=False).sha256


def one_line_error(fn, *args, **kwargs):
    """The message of the ``UserError`` that ``fn(*args, **kwargs)`` raises, checked to be one line without
    leading or trailing whitespace."""
    from remop_usb.errors import UserError

    with pytest.raises(UserError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg and msg == msg.strip(), repr(msg)
    return msg


def config_error(tmp_path, text, name="c.yaml"):
    """(path, message): ``text`` written as the YAML config ``name`` under ``tmp_path``, and the one-line
    ``UserError`` message ``parse_args(["--c", path])`` refuses it with."""
    from remop_usb.config import parse_args

    path = tmp_path / name
    path.write_text(text)
    return str(path), one_line_error(parse_args, ["--c", str(path)])


def check_report_accuracies(report, class_names):
    """Assert a results.json head report's accuracies (percent) against its own confusion matrix (rows: true class),
    recomputed here: overall = trace / total, per class = diagonal / row sum (None for a class without test images),
    mean class = the mean over the classes with test images. Returns the matrix."""
    cf = np.array(report["confusion_matrix"])
    assert cf.shape == (len(class_names), len(class_names))
    assert report["num_samples"] == cf.sum()
    assert report["overall_acc"] == pytest.approx(100 * np.trace(cf) / cf.sum())
    per_class = [100 * cf[c, c] / cf[c].sum() if cf[c].sum() else None for c in range(len(class_names))]
    assert [report["per_class_acc"][n] for n in class_names] == pytest.approx(per_class)
    assert report["mean_class_acc"] == pytest.approx(np.mean([a for a in per_class if a is not None]))
    return cf


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


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` (the CUDA tier, docs/cuda_tier.md) are skipped where torch sees no CUDA GPU, and those
    marked ``cuda(gpus=N)`` where it sees fewer than N. torch is asked only when such a test was collected."""
    marked = [(item, item.get_closest_marker("cuda")) for item in items]
    marked = [(item, mark) for item, mark in marked if mark is not None]
    if not marked:
        return
    import torch

    found = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for item, mark in marked:
        needed = mark.kwargs.get("gpus", 1)
        if found < needed:
            reason = "needs a CUDA GPU" if found == 0 else f"needs {needed} CUDA GPUs ({found} here)"
            # skipif, not skip: ``-rs`` then lists each test at its own line instead of folding them into one
            item.add_marker(pytest.mark.skipif(True, reason=reason))


_backbone_builder = []


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session):
    """When a collected test uses the stand-in backbone and the cache does not hold it yet, start building it at
    once, in a background process, so that it trains while the tests that don't need it run (instead of from the
    first test that asks). Every pytest-xdist worker may start one: :func:`~remop_usb.pretrain.ensure_pretrained`'s
    file lock lets one build and the others find the file; a test that asks waits on that lock."""
    from remop_usb.pretrain import TEST_SETTINGS, cached_path

    if session.config.option.collectonly or not any("pretrained_backbone" in getattr(item, "fixturenames", ())
                                                     for item in session.items):
        return
    if os.path.isfile(cached_path(TEST_SETTINGS, BACKBONE_CACHE)):
        return
    import subprocess
    import sys

    code = ("from remop_usb.pretrain import TEST_SETTINGS, ensure_pretrained; "
            f"ensure_pretrained(TEST_SETTINGS, cache_dir={BACKBONE_CACHE!r}, log=lambda *a: None)")
    _backbone_builder.append(subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL))


def pytest_sessionfinish(session):
    """A background build still running when the session ends (e.g. under -x) is stopped; its lock goes with it."""
    for process in _backbone_builder:
        if process.poll() is None:
            process.terminate()
            process.wait()
