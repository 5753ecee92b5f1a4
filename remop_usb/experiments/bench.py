"""``remop-usb bench``: what a training step costs, measured in one process on the same data, model and batches.

Figures (medians over timed steps after warm-up):

- ``remop_over_fixmatch``: ReMoP+FixMatch's USB training step over FixMatch's;
- ``plugin_over_plain``: FixMatch's USB training step over a minimal plain-PyTorch FixMatch step on the same
  network and batches (forward of [x_lb, x_ulb_w, x_ulb_s], CE + thresholded pseudo-label CE, backward, Adam, EMA),
  with the same speed options as the USB step (AMP autocast and loss scaling, ``channels_last``, ``compile``, cuDNN
  flags), so the two steps stay alike whatever options are given;
- ``loader_images_per_s``: the unlabeled loader's throughput (weak + strong view per image), total and per worker;
- ``peak_memory_mb``: peak resident memory of this process (CPU) or peak allocated GPU memory (CUDA).

Targets (:data:`TARGETS`): ``remop_over_fixmatch`` <= 1.03 and ``plugin_over_plain`` <= 1.10. Both outputs carry
a ``targets`` block, ``{figure: {value, limit, met}}``; ``--check`` exits 1 (after printing) when one is missed.

The two configs are the demo configs of :mod:`remop_usb.paper_configs` (``config/demo/<method>.yaml``), rendered
from its table into the bench's temporary folder: no checkout is needed.

A "USB training step" is what USB's loop does per iteration minus data loading: ``process_batch``, ``train_step``,
then the parameter-update and EMA hooks. Batches are drawn once and replayed, so every method sees the same inputs.

Speed options (``--amp bf16``, ``--channels_last``, ``--compile``, ``--cudnn_benchmark``, ``--pin_memory``,
``--persistent_workers``, ``--prefetch_factor N``, ``--image_cache``; the config keys of the same names) apply to
every USB algorithm built here, exactly as in training (an option that cannot apply on the device says so and is
off). With any of them, a FixMatch built without options is timed as well, interleaved with the rest and under its
own cuDNN flags, giving ``fixmatch_default_step_s``, ``options_speedup`` (default step / step with the options) and
``loader_default_images_per_s``; ``speed_options`` lists the options in effect. The generated images are 100 px
(RAF-DB's aligned size), so the loader pays for the resize that ``image_cache`` saves.
"""

from __future__ import annotations

import contextlib
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

from ..errors import OneLineArgumentParser

#: the methods timed, each built from its demo config
METHODS = ("fixmatch", "remop_fixmatch")
#: figure -> the largest value that meets the target
TARGETS = {"remop_over_fixmatch": 1.03, "plugin_over_plain": 1.10}


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


#: bench flags that switch on the config key of the same name
SWITCHES = ("channels_last", "compile", "cudnn_benchmark", "pin_memory", "persistent_workers", "image_cache")
#: the config keys reported under ``speed_options``
SPEED_KEYS = ("amp", "amp_dtype") + SWITCHES + ("compile_mode", "prefetch_factor")


def speed_argv(opts, cache_dir) -> list:
    """Config flags for the speed options given to the bench (empty when none is)."""
    argv = [f"--{key}=True" for key in SWITCHES if getattr(opts, key)]
    if opts.amp:
        argv += ["--amp=True", f"--amp_dtype={opts.amp}"]
    if opts.prefetch_factor is not None:
        argv += [f"--prefetch_factor={opts.prefetch_factor}"]
    if opts.compile:
        argv += [f"--compile_mode={opts.compile_mode}"]
    if opts.image_cache:
        argv += [f"--cache_dir={cache_dir}"]
    return argv


def write_configs(folder, methods=METHODS) -> dict:
    """{method: path} of each method's demo config, rendered from :mod:`.paper_configs`' table into ``folder``."""
    from ..fileio import write_text_atomic
    from ..paper_configs import demo_config

    return {m: write_text_atomic(os.path.join(folder, f"{m}.yaml"), demo_config(m)[1]) for m in methods}


def targets(result) -> dict:
    """{figure: {value, limit, met}} for every figure of :data:`TARGETS` in ``result``."""
    return {name: {"value": result[name], "limit": limit, "met": result[name] <= limit}
            for name, limit in TARGETS.items() if name in result}


def _build(config, data_dir, save_dir, opts, extra=()):
    from ..config import parse_args
    from ..launch import build_algorithm, resolve_device

    argv = ["--c", config, "--data_dir", data_dir, "--save_dir", save_dir,
            "--device", opts.device, "--img_size", str(opts.img_size), "--batch_size", str(opts.batch_size),
            "--num_workers", str(opts.num_workers), "--num_train_iter", "1000", "--epoch", "1",
            "--num_labels", "20", "--lb_imb_ratio", "10", "--diagnostics=False",
            "--demo_pretrain=False", "--use_pretrain=False", *extra]  # step times do not depend on the weights
    args = parse_args(argv)
    resolve_device(args)
    algorithm = build_algorithm(args)
    algorithm.call_hook("before_run")
    return algorithm


def cudnn_flags(args):
    """The cuDNN flags ``args``' own options ask for (``cudnn_benchmark`` is process-wide, so each step sets them)."""
    benchmark = bool(getattr(args, "cudnn_benchmark", False))
    return torch.backends.cudnn.flags(enabled=True, benchmark=benchmark, deterministic=not benchmark)


def usb_step(algorithm, batches):
    """One USB iteration on a replayed batch: process_batch, train_step, parameter update, EMA -- under the cuDNN
    flags the algorithm's own options ask for."""

    def step(i):
        lb, ulb = batches[i % len(batches)]
        with cudnn_flags(algorithm.args):
            algorithm.out_dict, algorithm.log_dict = algorithm.train_step(**algorithm.process_batch(**lb, **ulb))
            algorithm.call_hook("after_train_step", "ParamUpdateHook")
            algorithm.call_hook("after_train_step", "EMAHook")

    return step


def plain_network(net, device, args):
    """A copy of ``net`` on ``device`` in training mode, with the model-level speed options of ``args`` applied as
    USB's algorithms get them (``channels_last``; ``compile`` in place, which a deep copy does not carry)."""
    from ..usb_compat.speed import apply_model_options

    net = copy.deepcopy(net).to(device).train()
    apply_model_options(net, args)
    return net


def plain_fixmatch_step(net, batches, device, args, autocast=None, scaled=False, p_cutoff=0.95, ema_m=0.999):
    """A minimal FixMatch step in plain PyTorch on a copy of ``net``, for the plugin's overhead: ``args`` gives the
    learning rate and the speed options, ``autocast`` (a context-manager factory, e.g. the algorithm's ``amp_cm``;
    None: full precision) the mixed precision, ``scaled`` whether the loss goes through a GradScaler (as the USB
    step's does: :func:`scales_loss`)."""
    net = plain_network(net, device, args)
    ema = [p.detach().clone() for p in net.parameters()]
    optimizer = torch.optim.Adam(net.parameters(), lr=args.lr)
    scaler = torch.amp.GradScaler(device.type, enabled=scaled)
    autocast = autocast or contextlib.nullcontext

    def step(i):
        lb, ulb = batches[i % len(batches)]
        x_lb, y_lb = lb["x_lb"].to(device), lb["y_lb"].to(device)
        x_w, x_s = ulb["x_ulb_w"].to(device), ulb["x_ulb_s"].to(device)
        with cudnn_flags(args), autocast():
            logits = net(torch.cat((x_lb, x_w, x_s)))["logits"]
            n = x_lb.shape[0]
            logits_w, logits_s = logits[n:].chunk(2)
            conf, pseudo = torch.softmax(logits_w.detach(), dim=-1).max(dim=-1)
            unsup = (F.cross_entropy(logits_s, pseudo, reduction="none") * (conf >= p_cutoff).float()).mean()
            loss = F.cross_entropy(logits[:n], y_lb) + unsup
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in net.parameters()], 1 - ema_m)

    return step


def scales_loss(algorithm) -> bool:
    """Whether USB's ParamUpdateHook steps ``algorithm`` through its GradScaler (amp, and a scaler that is on)."""
    return bool(algorithm.use_amp and algorithm.loss_scaler.is_enabled())


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


def _replayed_batches(algorithm, n):
    loaders = zip(algorithm.loader_dict["train_lb"], algorithm.loader_dict["train_ulb"])
    return [next(loaders) for _ in range(n)]


def run_bench(opts):
    from datasets_fer.synthetic import write_rafdb

    from ..usb_compat import device_of, unwrap

    with tempfile.TemporaryDirectory(prefix="remop-bench-") as tmp:
        data_dir, runs = os.path.join(tmp, "data"), os.path.join(tmp, "runs")
        write_rafdb(data_dir, num_train=opts.num_images, num_test=70, size=100, seed=0)
        speed = speed_argv(opts, os.path.join(tmp, "image_cache"))
        configs = write_configs(os.path.join(tmp, "config"))
        fixmatch = _build(configs["fixmatch"], data_dir, runs, opts, speed)
        device = device_of(fixmatch)
        batches = _replayed_batches(fixmatch, opts.batches)
        steps = {"fixmatch": usb_step(fixmatch, batches),
                 "remop": usb_step(_build(configs["remop_fixmatch"], data_dir, runs, opts, speed), batches),
                 "plain": plain_fixmatch_step(unwrap(fixmatch.model), batches, device, fixmatch.args,
                                              fixmatch.amp_cm if fixmatch.use_amp else None, scales_loss(fixmatch))}
        default = _build(configs["fixmatch"], data_dir, runs, opts) if speed else None
        if default is not None:
            steps["default"] = usb_step(default, batches)
        t = median_times(steps, opts.warmup, opts.steps, device)
        loader = fixmatch.loader_dict["train_ulb"]
        result = {
            "device": str(device),
            "img_size": opts.img_size,
            "batch_size": opts.batch_size,
            "uratio": 1,
            "timed_steps": opts.steps,
            "speed_options": {key: getattr(fixmatch.args, key) for key in SPEED_KEYS},
            "fixmatch_step_s": t["fixmatch"],
            "remop_fixmatch_step_s": t["remop"],
            "plain_fixmatch_step_s": t["plain"],
            "remop_over_fixmatch": t["remop"] / t["fixmatch"],
            "plugin_over_plain": t["fixmatch"] / t["plain"],
            "loader_workers": loader.num_workers,
            "loader_images_per_s": _throughput(loader, opts.loader_batches),
        }
        if default is not None:
            result.update(fixmatch_default_step_s=t["default"], options_speedup=t["default"] / t["fixmatch"],
                          loader_default_images_per_s=_throughput(default.loader_dict["train_ulb"],
                                                                  opts.loader_batches))
    result["peak_memory_mb"] = _peak_memory_mb(device)
    return result


def _throughput(loader, n_batches):
    images_per_s = loader_throughput(loader, n_batches)
    return {"total": images_per_s, "per_worker": images_per_s / max(1, loader.num_workers)}


def _add_speed_flags(p):
    g = p.add_argument_group("speed options (the config keys of the same names)")
    g.add_argument("--amp", choices=("fp16", "bf16"), default=None, help="mixed precision in this dtype (CUDA)")
    for key in SWITCHES:
        g.add_argument(f"--{key}", action="store_true")
    g.add_argument("--compile_mode", default="default",
                   choices=("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"))
    g.add_argument("--prefetch_factor", type=int, default=None)


@contextlib.contextmanager
def stdout_to_stderr():
    """Send everything written to stdout meanwhile to stderr: Python's prints, USB's and the data checks' messages,
    and what C code or child processes write to file descriptor 1."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved, 1)
        os.close(saved)


def main(argv=None):
    p = OneLineArgumentParser(prog="remop-usb bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--check", action="store_true", help="exit 1 (after printing) when a target is missed: "
                   + ", ".join(f"{k} <= {v}" for k, v in TARGETS.items()))
    p.add_argument("--img_size", type=int, default=None, help="default: 48 on CPU, 224 on CUDA")
    p.add_argument("--batch_size", type=int, default=None, help="labeled batch (= unlabeled, uratio 1); "
                   "default: 8 on CPU, 16 on CUDA")
    p.add_argument("--steps", type=int, default=None, help="timed steps per method (default: 60 CPU, 50 CUDA)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batches", type=int, default=4, help="distinct batches replayed")
    p.add_argument("--loader_batches", type=int, default=20)
    p.add_argument("--num_workers", type=int, default=1, help="labeled loader workers (unlabeled: twice this)")
    p.add_argument("--num_images", type=int, default=420, help="size of the generated training set")
    _add_speed_flags(p)
    opts = p.parse_args(argv)
    cuda = opts.device == "cuda"
    opts.img_size = opts.img_size or (224 if cuda else 48)
    opts.batch_size = opts.batch_size or (16 if cuda else 8)
    opts.steps = opts.steps or (50 if cuda else 60)  # CPU ratios move by +-5% with 30 steps
    with stdout_to_stderr() if opts.json else contextlib.nullcontext():  # --json: stdout holds the JSON only
        result = run_bench(opts)
    result["targets"] = targets(result)
    print(json.dumps(result) if opts.json else text_report(result))
    missed = [f"{name} {t['value']:.4g} > {t['limit']}" for name, t in result["targets"].items() if not t["met"]]
    if opts.check and missed:
        print(f"bench: target missed: {', '.join(missed)}", file=sys.stderr)
        return 1
    return 0


def _value(value):
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def text_report(result) -> str:
    """One ``key value`` line per figure, then one line per target: ``figure value <= limit met|MISSED``."""
    lines = [f"{key:28s} {_value(value)}" for key, value in result.items() if key != "targets"]
    lines.append("targets")
    lines += [f"  {name:26s} {_value(t['value'])} <= {t['limit']} {'met' if t['met'] else 'MISSED'}"
              for name, t in result["targets"].items()]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
