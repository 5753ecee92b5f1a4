"""Speed options reach the place they act: loader kwargs on the built DataLoaders, NHWC parameters, the compiled
network, the autocast dtype inside a forward, the cuDNN flags, and the pre-resized image cache (no timing here:
``remop-usb bench`` measures)."""

import json
import os
import types

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import build_for, one_batch, start_training, step_on, train_argv
from datasets_fer.image_cache import apply_image_cache, cached_path, dataset_resize
from remop_usb.launch import main
from remop_usb.usb_compat import amp, speed, unwrap
from remop_usb.usb_compat.speed import SpeedHook


def built_algorithm(data_dir, save_dir, config="config/demo/fixmatch.yaml", **overrides):
    """The algorithm train.py would build for ``config`` (few-iteration CPU settings, seeded as train.py), untrained."""
    return build_for(data_dir, save_dir, config=config, seed=True, **overrides)


def one_step(algorithm):
    """One USB iteration (train_step, then the parameter update) on the first batches, after ``before_run``."""
    start_training(algorithm)
    step_on(algorithm, one_batch(algorithm))


# -- loaders -------------------------------------------------------------------------------------------------------

def test_worker_options_reach_every_loader_including_adsh_own(tiny_rafdb, tmp_path):
    algorithm = built_algorithm(tiny_rafdb, tmp_path, config="config/demo/adsh.yaml", num_workers=1,
                                persistent_workers=True, prefetch_factor=3)
    assert set(algorithm.loader_dict) == {"train_lb", "train_ulb", "eval", "eval_ulb"}
    for name, loader in algorithm.loader_dict.items():
        assert loader.num_workers == (2 if name == "train_ulb" else 1)
        assert (loader.persistent_workers, loader.prefetch_factor, loader.pin_memory) == (True, 3, False), name


def test_pin_memory_reaches_usb_get_data_loader():
    import semilearn.core.utils as usb_utils

    from remop_usb import registry

    registry.load()  # what every entry point does first (here too: this test may run alone, or first on a worker)
    get_data_loader = usb_utils.get_data_loader
    dataset = torch.utils.data.TensorDataset(torch.zeros(4, 1))
    usb_args = types.SimpleNamespace(net="resnet18_fer", epoch=1, num_train_iter=1)
    for pin in (True, False):
        usb_args.pin_memory = pin
        assert get_data_loader(usb_args, dataset, 2, data_sampler=None, num_workers=0).pin_memory is pin
        # USB's own function hard-codes pin_memory=False: the option arrives through the plugin's wrapper
        assert get_data_loader.usb_original(usb_args, dataset, 2, data_sampler=None, num_workers=0).pin_memory is False


def test_options_that_cannot_apply_on_cpu_say_so_and_are_off(tiny_rafdb, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(speed, "_said", set())
    algorithm = built_algorithm(tiny_rafdb, tmp_path, num_workers=0, pin_memory=True, cudnn_benchmark=True,
                                persistent_workers=True, prefetch_factor=4)
    printed = capsys.readouterr().out
    for line in ("pin_memory ignored on CPU", "cudnn_benchmark ignored on CPU",
                 "persistent_workers ignored with num_workers 0", "prefetch_factor ignored with num_workers 0"):
        assert printed.count(f"[remop-usb] {line}\n") == 1  # said once ...
    args = algorithm.args
    assert (args.pin_memory, args.cudnn_benchmark, args.persistent_workers, args.prefetch_factor) == (
        False, False, False, None)  # ... and off
    loader = algorithm.loader_dict["train_lb"]
    assert (loader.pin_memory, loader.persistent_workers) == (False, False)


def test_an_invalid_prefetch_factor_is_one_line(tiny_rafdb, tmp_path, capsys):
    assert main(train_argv(tiny_rafdb, tmp_path, num_workers=1, prefetch_factor=0)) == 2
    assert capsys.readouterr().err.strip() == "error: prefetch_factor must be at least 1, got 0"


# -- model-level options -------------------------------------------------------------------------------------------

def _convs(model):
    return [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]


def _conv_weights(model):
    """Convolution kernels larger than 1x1 (for those, NCHW and NHWC layouts differ)."""
    return [p for p in model.parameters() if p.dim() == 4 and p.shape[-1] > 1]


def test_channels_last_reaches_both_models_and_trains(tiny_rafdb, tmp_path):
    algorithm = built_algorithm(tiny_rafdb, tmp_path, channels_last=True)
    assert not any(p.is_contiguous(memory_format=torch.channels_last) for p in _conv_weights(algorithm.model))
    seen = []
    _convs(algorithm.model)[-1].register_forward_hook(
        lambda m, i, o: seen.append(o.is_contiguous(memory_format=torch.channels_last)))
    one_step(algorithm)
    for model in (algorithm.model, algorithm.ema_model):
        weights = _conv_weights(model)
        assert weights and all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)
    assert seen == [True]  # the activations follow
    assert torch.isfinite(algorithm.out_dict["loss"])


def test_compile_compiles_the_training_network_in_place(tiny_rafdb, tmp_path, monkeypatch):
    calls = []
    real_compile = torch.compile

    def recording_compile(fn, **kwargs):  # inductor on a ResNet-18 takes minutes on 2 cores: trace with eager
        calls.append(kwargs)
        return real_compile(fn, backend="eager")

    monkeypatch.setattr(torch, "compile", recording_compile)
    algorithm = built_algorithm(tiny_rafdb, tmp_path, compile=True, compile_mode="max-autotune-no-cudagraphs")
    keys = list(algorithm.model.state_dict())
    torch._dynamo.reset()
    from torch._dynamo.utils import counters

    counters.clear()
    one_step(algorithm)
    assert calls == [{"mode": "max-autotune-no-cudagraphs"}]
    assert unwrap(algorithm.model)._compiled_call_impl is not None
    assert unwrap(algorithm.ema_model)._compiled_call_impl is None  # evaluation stays eager
    assert counters["stats"]["unique_graphs"] >= 1  # dynamo traced the forward
    assert list(algorithm.model.state_dict()) == keys  # checkpoints and EMA see the same names
    assert torch.isfinite(algorithm.out_dict["loss"])


def test_cudnn_benchmark_replaces_the_launchers_deterministic_flag(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)  # what the launcher sets
    algorithm = types.SimpleNamespace(args=types.SimpleNamespace(cudnn_benchmark=True))
    SpeedHook().before_run(algorithm)
    assert (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic) == (True, False)


@pytest.mark.parametrize("dtype_name,dtype,scaled", [("bf16", torch.bfloat16, False), ("fp16", torch.float16, True)])
def test_amp_dtype_reaches_the_forward(tiny_rafdb, tmp_path, dtype_name, dtype, scaled):
    algorithm = built_algorithm(tiny_rafdb, tmp_path, amp=True, amp_dtype=dtype_name)
    assert algorithm.use_amp is False and algorithm.args.amp is False  # training keeps amp CUDA-only
    algorithm.use_amp = algorithm.args.amp = True
    amp.configure(algorithm, torch.device("cpu"))  # the path a GPU run takes, on CPU autocast
    assert algorithm.loss_scaler.is_enabled() is scaled  # a GradScaler for fp16 only
    seen = []
    _convs(algorithm.model)[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    one_step(algorithm)
    assert seen == [dtype]
    assert torch.isfinite(algorithm.out_dict["loss"])


# -- image cache ---------------------------------------------------------------------------------------------------

def _fer_datasets(data_dir, save_dir, **overrides):
    algorithm = built_algorithm(data_dir, save_dir, **overrides)
    return algorithm.dataset_dict


def test_cached_images_have_the_transforms_input_size_and_identical_pixels(tiny_rafdb, tmp_path, capsys):
    cache = tmp_path / "cache"
    plain = _fer_datasets(tiny_rafdb, tmp_path / "a", img_size=24)
    cached = _fer_datasets(tiny_rafdb, tmp_path / "b", img_size=24, image_cache=True, cache_dir=str(cache))
    n = sum(len(cached[k]) for k in ("train_lb", "train_ulb", "eval"))
    assert f"image_cache: {n} images in {cache / 'images'} ({n} resized now, 0 reused)" in capsys.readouterr().out
    for key in ("train_lb", "train_ulb", "eval"):
        assert dataset_resize(cached[key]).size == (24, 24)  # the transforms' first step
        for source, path in zip(plain[key].data, cached[key].data):
            assert str(path).startswith(str(cache / "images")) and str(source).startswith(tiny_rafdb)
            with Image.open(path) as im:
                assert im.size == (24, 24)  # tiny_rafdb is 32 px: resized once, to img_size
    for i in range(len(plain["eval"])):  # the deterministic eval view is bit-identical
        assert torch.equal(plain["eval"][i]["x_lb"], cached["eval"][i]["x_lb"])


def test_second_build_reuses_the_cache(tiny_rafdb, tmp_path, capsys):
    cache = tmp_path / "cache"
    first = _fer_datasets(tiny_rafdb, tmp_path / "a", image_cache=True, cache_dir=str(cache))
    capsys.readouterr()
    stamps = {p: os.stat(p).st_mtime_ns for p in first["eval"].data}
    second = _fer_datasets(tiny_rafdb, tmp_path / "b", image_cache=True, cache_dir=str(cache))
    n = sum(len(second[k]) for k in ("train_lb", "train_ulb", "eval"))
    assert f"({0} resized now, {n} reused)" in capsys.readouterr().out
    assert list(second["eval"].data) == list(first["eval"].data)
    assert {p: os.stat(p).st_mtime_ns for p in second["eval"].data} == stamps


def test_a_changed_source_gets_a_new_cached_copy(tmp_path):
    from torchvision import transforms

    resize = transforms.Resize((4, 4))
    source = tmp_path / "face.png"
    Image.new("RGB", (8, 8), (255, 0, 0)).save(source)
    red, written = cached_path(str(source), resize, str(tmp_path / "cache"))
    assert written and cached_path(str(source), resize, str(tmp_path / "cache")) == (red, False)
    Image.new("RGB", (8, 8), (0, 0, 255)).save(source)
    os.utime(source, ns=(os.stat(source).st_atime_ns, os.stat(source).st_mtime_ns + 10 ** 9))
    blue, written = cached_path(str(source), resize, str(tmp_path / "cache"))
    assert written and blue != red
    with Image.open(blue) as im:
        assert im.getpixel((0, 0)) == (0, 0, 255)
    assert cached_path(str(source), transforms.Resize((2, 2)), str(tmp_path / "cache"))[0] not in (red, blue)


class _Paths:
    """A dataset of one image path whose only transform resizes the shorter side (no fixed output size)."""

    def __init__(self):
        from torchvision import transforms

        self.data = np.asarray(["face.png"], dtype=object)
        self.transform = transforms.Compose([transforms.Resize(24), transforms.ToTensor()])
        self.strong_transform = None

    def __len__(self):
        return len(self.data)


def test_datasets_without_a_fixed_leading_resize_stay_uncached(tmp_path, capsys):
    dataset = _Paths()
    apply_image_cache(types.SimpleNamespace(image_cache=True), [dataset, None], str(tmp_path))
    assert "image_cache: 1 images left uncached" in capsys.readouterr().out
    assert dataset.data.tolist() == ["face.png"]


def test_training_with_the_cache_keeps_the_split(tiny_rafdb, tmp_path, demo_split_sha256):
    argv = train_argv(tiny_rafdb, tmp_path, save_name="cached", num_train_iter=2, num_eval_iter=2,
                      image_cache=True, cache_dir=str(tmp_path / "cache"))
    assert main(argv) == 0
    with open(tmp_path / "cached" / "split.json") as f:
        sha = json.load(f)["sha256"]
    assert sha == demo_split_sha256  # the split of the uncached images, computed from the labels alone


# -- benchmark -----------------------------------------------------------------------------------------------------

def test_bench_flags_become_the_config_keys():
    from remop_usb.experiments.bench import speed_argv

    opts = types.SimpleNamespace(amp="bf16", channels_last=True, compile=True, compile_mode="reduce-overhead",
                                 cudnn_benchmark=False, pin_memory=False, persistent_workers=True,
                                 prefetch_factor=4, image_cache=True)
    assert speed_argv(opts, "/c") == ["--channels_last=True", "--compile=True", "--persistent_workers=True",
                                      "--image_cache=True", "--amp=True", "--amp_dtype=bf16", "--prefetch_factor=4",
                                      "--compile_mode=reduce-overhead", "--cache_dir=/c"]
    none = types.SimpleNamespace(**{**vars(opts), "amp": None, "channels_last": False, "compile": False,
                                    "persistent_workers": False, "prefetch_factor": None, "image_cache": False})
    assert speed_argv(none, "/c") == []


def test_bench_with_options_times_a_default_build_beside(capsys):
    from remop_usb.cli import main as cli

    argv = ["bench", "--device", "cpu", "--json", "--img_size", "32", "--batch_size", "4", "--steps", "1",
            "--warmup", "0", "--batches", "1", "--loader_batches", "1", "--num_images", "140", "--num_workers", "0",
            "--channels_last", "--image_cache"]
    assert cli(argv) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["speed_options"]["channels_last"] is True and out["speed_options"]["image_cache"] is True
    assert out["speed_options"]["compile"] is False
    assert out["options_speedup"] == out["fixmatch_default_step_s"] / out["fixmatch_step_s"]
    assert out["loader_default_images_per_s"]["total"] > 0


def test_runs_with_different_seeds_see_different_data_orders_and_one_seed_the_same():
    """USB's sampler seeds its shuffle with the epoch only; ours with (seed, epoch)."""
    import torch

    import remop_usb.registry as registry

    registry.load()
    from semilearn.datasets import DistributedSampler

    from remop_usb.usb_compat.loaders import shuffle_seed

    def order(seed, epoch):
        sampler = DistributedSampler(list(range(50)), num_replicas=1, rank=0, num_samples=50)
        sampler.seed = seed
        sampler.set_epoch(epoch)
        return list(iter(sampler))

    import numpy as np

    mixed = int(np.random.SeedSequence([3, 1]).generate_state(1)[0])
    expected = torch.randperm(50, generator=torch.Generator().manual_seed(mixed)).tolist()
    assert order(3, 1) == expected and shuffle_seed(3, 1) == mixed
    assert order(3, 1) == order(3, 1) and order(3, 1) != order(4, 1) and order(3, 1) != order(3, 2)
    assert sorted(order(4, 1)) == list(range(50))


# -- the EMA model ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("config,ema_m", [("config/demo/remop_fixmatch.yaml", 0.9), ("config/demo/abc.yaml", 0.9),
                                          ("config/demo/fixmatch.yaml", 0.0)])
def test_fast_ema_follows_usb_ema(tiny_rafdb, tmp_path, config, ema_m):
    """Two identical runs, one with USB's EMAHook methods, one with ours: after every step the same buffers, and
    parameters equal up to the rounding of lerp against USB's (1 - d) p + d s -- exactly equal with ema_m 0."""
    from semilearn.core.hooks import EMAHook

    from remop_usb import registry
    from remop_usb.usb_compat.ema import USB_METHODS

    registry.load()  # the patches (and so USB's originals) are in place
    usb_hook = types.SimpleNamespace(before_run=USB_METHODS["before_run"],
                                     after_train_step=USB_METHODS["after_train_step"])
    runs = []
    for methods in (usb_hook, EMAHook):
        alg = built_algorithm(tiny_rafdb, tmp_path, config=config, ema_m=ema_m, save_name=f"ema{len(runs)}")
        start_training(alg)
        batch = one_batch(alg)
        methods.before_run(None, alg)
        runs.append((alg, batch, methods))
    assert type(runs[0][0].ema).__name__ == "EMA" and type(runs[1][0].ema).__name__ == "FastEMA"
    param_names = {n for n, _ in runs[1][0].ema_model.named_parameters()}
    for step in range(4):
        states = []
        for alg, batch, methods in runs:
            torch.manual_seed(step)  # the same dropout and ABC draws in both runs
            alg.out_dict, alg.log_dict = alg.train_step(**batch)
            alg.call_hook("after_train_step", "ParamUpdateHook")
            methods.after_train_step(None, alg)
            states.append(alg.ema_model.state_dict())
        (usb, ours) = states
        assert usb.keys() == ours.keys()
        for k in usb:
            if k in param_names and ema_m > 0:
                assert torch.allclose(usb[k], ours[k], rtol=1e-5, atol=1e-7), k
            else:
                assert torch.equal(usb[k], ours[k]), k
    # the shadow is the EMA model's weights; with ema_m 0.9 they are not the live weights
    alg = runs[1][0]
    name, live = next((n, p) for n, p in alg.model.named_parameters() if n.endswith("classifier.weight"))
    assert alg.ema.shadow[name].data_ptr() == dict(alg.ema_model.named_parameters())[name].data_ptr()
    assert torch.equal(ours[name], live.detach()) == (ema_m == 0)
