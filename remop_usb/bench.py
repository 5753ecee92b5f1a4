"""``remop-usb bench``: what a training step costs, measured in one process on the same data, model and batches.

Figures (medians over timed steps after warm-up):

- ``remop_over_fixmatch``: ReMoP+FixMatch's USB training step over FixMatch's;
- ``plugin_over_plain``: FixMatch's USB training step over a minimal plain-PyTorch FixMatch step on the same
  network and batches (forward of [x_lb, x_ulb_w, x_ulb_s], CE + thresholded pseudo-label CE, backward, Adam, EMA);
- ``loader_images_per_s``: the unlabeled loader's throughput (weak + strong view per image), total and per worker;
- ``peak_memory_mb``: peak resident memory of this process (CPU) or peak allocated GPU memory (CUDA).

A "USB training step" is what USB's loop does per iteration minus data loading: ``process_batch``, ``train_step``,
then the parameter-update and EMA hooks. Batches are drawn once and replayed, so every method sees the same inputs.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

REPO_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "config", "demo")


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_times(steps, n_warmup, n_steps, device):
    """Median seconds per call of each step function, interleaved round by round so drift hits all alike."""
    times = {name: [] for name in steps}
    for i in range(n_warmup + n_steps):
        for name, step in steps.items():
            _sync(device)
            start = time.perf_counter()
            step(i)
            _sync(device)
            if i >= n_warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def _build(config, data_dir, save_dir, opts):
    from .config import parse_args
    from .launch import build_algorithm, resolve_device

    argv = ["--c", os.path.join(REPO_CONFIGS, config), "--data_dir", data_dir, "--save_dir", save_dir,
            "--device", opts.device, "--img_size", str(opts.img_size), "--batch_size", str(opts.batch_size),
            "--num_workers", str(opts.num_workers), "--num_train_iter", "1000", "--epoch", "1",
            "--num_labels", "20", "--lb_imb_ratio", "10"]
    args = parse_args(argv)
    resolve_device(args)
    algorithm = build_algorithm(args)
    algorithm.call_hook("before_run")
    return algorithm


def usb_step(algorithm, batches):
    """One USB iteration on a replayed batch: process_batch, train_step, parameter update, EMA."""

    def step(i):
        lb, ulb = batches[i % len(batches)]
        algorithm.out_dict, algorithm.log_dict = algorithm.train_step(**algorithm.process_batch(**lb, **ulb))
        algorithm.call_hook("after_train_step", "ParamUpdateHook")
        algorithm.call_hook("after_train_step", "EMAHook")

    return step


def plain_fixmatch_step(net, batches, device, lr, p_cutoff=0.95, ema_m=0.999):
    """A minimal FixMatch step in plain PyTorch on ``net`` (a copy is made), for the plugin's overhead."""
    net = copy.deepcopy(net).to(device).train()
    ema = [p.detach().clone() for p in net.parameters()]
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)

    def step(i):
        lb, ulb = batches[i % len(batches)]
        x_lb, y_lb = lb["x_lb"].to(device), lb["y_lb"].to(device)
        x_w, x_s = ulb["x_ulb_w"].to(device), ulb["x_ulb_s"].to(device)
        logits = net(torch.cat((x_lb, x_w, x_s)))["logits"]
        n = x_lb.shape[0]
        logits_w, logits_s = logits[n:].chunk(2)
        conf, pseudo = torch.softmax(logits_w.detach(), dim=-1).max(dim=-1)
        unsup = (F.cross_entropy(logits_s, pseudo, reduction="none") * (conf >= p_cutoff).float()).mean()
        loss = F.cross_entropy(logits[:n], y_lb) + unsup
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in net.parameters()], 1 - ema_m)

    return step


def loader_throughput(loader, n_batches):
    """Unlabeled images per second through the loader (each image yields a weak and a strong view)."""
    it = iter(loader)
    next(it)  # start the workers
    start, images = time.perf_counter(), 0
    for _ in range(n_batches):
        images += next(it)["x_ulb_w"].shape[0]
    return images / (time.perf_counter() - start)


def _peak_memory_mb(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_bench(opts):
    from datasets_fer.synthetic import write_rafdb

    from .usb_compat import device_of, unwrap

    with tempfile.TemporaryDirectory(prefix="remop-bench-") as tmp:
        data_dir = os.path.join(tmp, "data")
        write_rafdb(data_dir, num_train=opts.num_images, num_test=70, size=max(48, min(opts.img_size, 100)),
                    seed=0)
        fixmatch = _build("fixmatch.yaml", data_dir, os.path.join(tmp, "runs"), opts)
        device = device_of(fixmatch)
        loaders = zip(fixmatch.loader_dict["train_lb"], fixmatch.loader_dict["train_ulb"])
        batches = [next(loaders) for _ in range(opts.batches)]
        remop = _build("remop_fixmatch.yaml", data_dir, os.path.join(tmp, "runs"), opts)
        plain = plain_fixmatch_step(unwrap(fixmatch.model), batches, device, lr=fixmatch.args.lr)
        t = median_times({"fixmatch": usb_step(fixmatch, batches), "remop": usb_step(remop, batches),
                          "plain": plain}, opts.warmup, opts.steps, device)
        t_fixmatch, t_remop, t_plain = t["fixmatch"], t["remop"], t["plain"]
        workers = fixmatch.loader_dict["train_ulb"].num_workers
        images_per_s = loader_throughput(fixmatch.loader_dict["train_ulb"], opts.loader_batches)
    return {
        "device": str(device),
        "img_size": opts.img_size,
        "batch_size": opts.batch_size,
        "uratio": 1,
        "timed_steps": opts.steps,
        "fixmatch_step_s": t_fixmatch,
        "remop_fixmatch_step_s": t_remop,
        "plain_fixmatch_step_s": t_plain,
        "remop_over_fixmatch": t_remop / t_fixmatch,
        "plugin_over_plain": t_fixmatch / t_plain,
        "loader_workers": workers,
        "loader_images_per_s": {"total": images_per_s, "per_worker": images_per_s / max(1, workers)},
        "peak_memory_mb": _peak_memory_mb(device),
    }


def main(argv=None):
    p = argparse.ArgumentParser(prog="remop-usb bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--img_size", type=int, default=None, help="default: 48 on CPU, 224 on CUDA")
    p.add_argument("--batch_size", type=int, default=None, help="labeled batch (= unlabeled, uratio 1); "
                   "default: 8 on CPU, 16 on CUDA")
    p.add_argument("--steps", type=int, default=None, help="timed steps per method (default: 10 CPU, 50 CUDA)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batches", type=int, default=4, help="distinct batches replayed")
    p.add_argument("--loader_batches", type=int, default=20)
    p.add_argument("--num_workers", type=int, default=1, help="labeled loader workers (unlabeled: twice this)")
    p.add_argument("--num_images", type=int, default=420, help="size of the generated training set")
    opts = p.parse_args(argv)
    cuda = opts.device == "cuda"
    opts.img_size = opts.img_size or (224 if cuda else 48)
    opts.batch_size = opts.batch_size or (16 if cuda else 8)
    opts.steps = opts.steps or (50 if cuda else 10)
    result = run_bench(opts)
    if opts.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:24s} {value:.4g}" if isinstance(value, float) else f"{key:24s} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
