"""The CUDA tier (``python -m pytest -m cuda tests``, docs/cuda_tier.md): FixMatch w/ ReMoP on the GPU with each speed
option that only means something there, an exact resume, and DDP over two GPUs.

Every test is marked ``cuda``; tests/conftest.py skips them where torch sees no CUDA GPU (and the DDP test, marked
``cuda(gpus=2)``, where it sees fewer than two). All run on the tiny synthetic RAF-DB (32 px, ResNet-18 from random
weights), a few steps each.
"""

import copy
import math
import os
import signal
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

from conftest import build_for, one_batch, start_training, step_on, train_argv
from remop_usb.usb_compat import unwrap
from test_ddp import ddp_worker, free_port
from test_resume import REPO, assert_same_tensors, resume_env, final_state, run_to_end

pytestmark = pytest.mark.cuda

#: initial scale of a ``torch.amp.GradScaler`` (its ``init_scale``); it halves on every step whose gradients hold an
#: inf or NaN (that step is skipped) and doubles only after 2000 clean steps in a row
INITIAL_SCALE = 2.0 ** 16


# -- helpers --------------------------------------------------------------------------------------------------------

def started(data_dir, save_dir, **overrides):
    """FixMatch w/ ReMoP built for the GPU (few-iteration settings, seeded as train.py) after USB's ``before_run``
    (which applies ``channels_last`` and ``compile`` and sets the centers), and a copy of its parameters then."""
    algorithm = build_for(data_dir, save_dir, seed=True, device="cuda", **overrides)
    start_training(algorithm)
    return algorithm, parameters(algorithm)


def parameters(algorithm):
    return {n: p.detach().clone() for n, p in unwrap(algorithm.model).named_parameters()}


def unchanged(algorithm, before):
    """The parameters still equal to ``before``."""
    return [n for n, p in parameters(algorithm).items() if torch.equal(p, before[n])]


def train_steps(algorithm, steps):
    """``steps`` USB iterations, each on the next labeled and unlabeled batches; the last (out_dict, log_dict)."""
    labeled, unlabeled = iter(algorithm.loader_dict["train_lb"]), iter(algorithm.loader_dict["train_ulb"])
    for _ in range(steps):
        result = step_on(algorithm, algorithm.process_batch(**next(labeled), **next(unlabeled)))
        algorithm.it += 1
    return result


def convs(model):
    return [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]


def spatial_conv_weights(model):
    """Convolution kernels larger than 1x1: for them the NCHW and NHWC layouts differ."""
    return [p for p in model.parameters() if p.dim() == 4 and p.shape[-1] > 1]


def first_conv_outputs(algorithm, what):
    """A list that receives ``what(output)`` of the training network's first convolution at every forward."""
    seen = []
    convs(algorithm.model)[0].register_forward_hook(lambda module, inputs, output: seen.append(what(output)))
    return seen


def rms(t):
    return t.double().pow(2).mean().sqrt().item()


# -- mixed precision ------------------------------------------------------------------------------------------------

def test_fp16_amp_trains_through_the_grad_scaler(tiny_rafdb, tmp_path):
    steps = 4
    algorithm, before = started(tiny_rafdb, tmp_path, amp=True, amp_dtype="fp16")
    scaler = algorithm.loss_scaler
    assert algorithm.use_amp and isinstance(scaler, torch.amp.GradScaler) and scaler.is_enabled()
    assert scaler.get_scale() == INITIAL_SCALE
    dtypes = first_conv_outputs(algorithm, lambda out: out.dtype)
    out, _ = train_steps(algorithm, steps)
    assert dtypes == [torch.float16] * steps  # the convolutions ran in half precision ...
    record = algorithm.recorder.records[-1]
    assert record["logits"].dtype == torch.float16
    assert record["mixture"].dtype == torch.float32  # ... ReMoP's cosines and mixture in float32 (FeatureClassifierNet)
    assert torch.isfinite(out["loss"])
    scale = scaler.get_scale()
    assert math.isfinite(scale) and scale > 0
    skipped = math.log2(INITIAL_SCALE / scale)  # steps whose gradients overflowed: 2^16 halved once for each
    assert skipped == int(skipped) and 0 <= skipped < steps  # at least one step updated the weights ...
    assert unchanged(algorithm, before) == []  # ... every parameter, the centers included


def test_bf16_amp_trains_without_loss_scaling(tiny_rafdb, tmp_path):
    if not torch.cuda.is_bf16_supported():
        pytest.skip(f"{torch.cuda.get_device_name()} has no bfloat16 (compute capability 8.0+)")
    algorithm, before = started(tiny_rafdb, tmp_path, amp=True, amp_dtype="bf16")
    scaler = algorithm.loss_scaler
    assert algorithm.use_amp and not scaler.is_enabled()  # bf16 has float32's range: nothing to scale
    dtypes = first_conv_outputs(algorithm, lambda out: out.dtype)
    out, _ = train_steps(algorithm, 2)
    assert dtypes == [torch.bfloat16] * 2
    assert algorithm.recorder.records[-1]["mixture"].dtype == torch.float32
    assert torch.isfinite(out["loss"])
    assert scaler.get_scale() == 1.0  # a disabled scaler multiplies by one
    assert unchanged(algorithm, before) == []


# -- memory format, compiler, loaders -------------------------------------------------------------------------------

def test_channels_last_models_train_in_nhwc(tiny_rafdb, tmp_path):
    algorithm, before = started(tiny_rafdb, tmp_path, channels_last=True)
    nhwc = lambda model: [p.is_contiguous(memory_format=torch.channels_last) for p in spatial_conv_weights(model)]
    for model in (algorithm.model, algorithm.ema_model):
        assert nhwc(model) and all(nhwc(model))
    layouts = first_conv_outputs(algorithm, lambda out: out.is_contiguous(memory_format=torch.channels_last))
    out, _ = train_steps(algorithm, 2)
    assert layouts == [True, True]  # 32 px in, 16 x 16 out of the first convolution: the layouts differ there
    assert torch.isfinite(out["loss"])
    assert unchanged(algorithm, before) == []
    assert all(nhwc(algorithm.model))  # the optimizer's in-place updates kept the layout


def test_compile_trains_and_matches_eager(tiny_rafdb, tmp_path, monkeypatch):
    """A step runs through the compiled network, and its forward pass agrees with the uncompiled one.

    The tolerance: eager and compiled are two float32 evaluations of one function (TF32 off for both), which differ
    only by rounding -- inductor fuses the elementwise work and may reorder reductions and choose other convolution
    layouts (so other cuDNN algorithms). Their distance from the float64 evaluation of the same weights and batch
    is each one's rounding error; the compiled one may exceed eager's by at most 10x (PyTorch's own accuracy check of
    compiled models allows 2x to 10x of eager's float64 error, the 10x where kernel choices change the numerics) plus
    1e-5 of the features' scale (its floor, tol/10 at float32's tol 1e-4). A miscompiled graph errs on the scale of
    the features themselves, five orders of magnitude above that.
    """
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    torch._dynamo.reset()
    # random centers: the class-mean initialisation would compile a second (evaluation) graph before the step
    algorithm, before = started(tiny_rafdb, tmp_path, compile=True, remop_center_init="randn")
    net = unwrap(algorithm.model)
    assert net._compiled_call_impl is not None and unwrap(algorithm.ema_model)._compiled_call_impl is None
    eager, exact = copy.deepcopy(net.backbone), copy.deepcopy(net.backbone).double()  # the step's weights
    batch = one_batch(algorithm)
    out, _ = step_on(algorithm, batch)
    assert torch.isfinite(out["loss"])
    assert unchanged(algorithm, before) == []

    x = torch.cat((batch["x_lb"], batch["x_ulb_w"], batch["x_ulb_s"]))  # FixMatch's one forward (use_cat)
    [compiled] = [r["feat"] for r in algorithm.recorder.records if r["feat"].shape[0] == x.shape[0]]
    with torch.no_grad():  # train mode, as in the step: BatchNorm on the batch's statistics; dropout acts after feat
        eager_feat, exact_feat = eager(x)["feat"], exact(x.double())["feat"]
    eager_error, compiled_error = rms(eager_feat - exact_feat), rms(compiled - exact_feat)
    assert compiled_error <= 10 * eager_error + 1e-5 * rms(exact_feat), (compiled_error, eager_error)
    torch._dynamo.reset()


def test_pin_memory_pins_the_training_batches(tiny_rafdb, tmp_path):
    # with workers, as the demo configs train: batches reach the main process through the pinning thread
    algorithm, _ = started(tiny_rafdb, tmp_path, pin_memory=True, num_workers=1)
    assert algorithm.args.pin_memory is True  # kept on: the device is CUDA
    assert {name: loader.pin_memory for name, loader in algorithm.loader_dict.items()} == {
        name: True for name in algorithm.loader_dict}
    for name in ("train_lb", "train_ulb"):
        batch = next(iter(algorithm.loader_dict[name]))
        tensors = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
        assert tensors and {k: v.is_pinned() for k, v in tensors.items()} == {k: True for k in tensors}, name
    assert {v.device.type for v in one_batch(algorithm).values()} == {"cuda"}


# -- exact resume -----------------------------------------------------------------------------------------------------

#: train.py's entry point with every CUDA kernel deterministic (an op without a deterministic kernel raises, naming
#: itself); ``stop`` SIGKILLs the process right after its first checkpoint is on disk
_DETERMINISTIC_RUN = r"""
import os, signal, sys
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS' deterministic workspace, before CUDA starts
import torch
torch.use_deterministic_algorithms(True)
from remop_usb.launch import main
from remop_usb.usb_compat import checkpointing

if sys.argv[1] == "stop":
    save = checkpointing.save_due_checkpoint

    def save_then_die(algorithm):
        due = getattr(algorithm, "_remop_checkpoint_due", False)
        save(algorithm)
        if due:
            os.kill(os.getpid(), signal.SIGKILL)

    checkpointing.save_due_checkpoint = save_then_die
sys.exit(main(sys.argv[2:]))
"""
#: one epoch of 8 steps; the first checkpoint after step 4, mid-epoch
RESUME_RUN = dict(save_name="run", device="cuda", num_train_iter=8, epoch=1, num_eval_iter=4, num_workers=0,
                  ema_m=0.9)


def _deterministic_argv(mode, data_dir, save_dir, **extra):
    return [sys.executable, "-c", _DETERMINISTIC_RUN, mode] + train_argv(data_dir, save_dir, **{**RESUME_RUN, **extra})


def test_a_run_stopped_halfway_and_resumed_equals_an_uninterrupted_one(tiny_rafdb, tmp_path):
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    run_to_end(_deterministic_argv("run", tiny_rafdb, whole), tmp_path / "whole.out")
    with open(tmp_path / "stopped.out", "w") as log:
        proc = subprocess.run(_deterministic_argv("stop", tiny_rafdb, stopped), cwd=REPO, env=resume_env(), stdout=log,
                              stderr=subprocess.STDOUT, timeout=300)
    assert proc.returncode == -signal.SIGKILL, open(tmp_path / "stopped.out").read()[-3000:]
    halfway = torch.load(stopped / "run" / "latest_model.pth", map_location="cpu", weights_only=False)
    assert halfway["it"] == RESUME_RUN["num_train_iter"] // 2
    assert "cuda" in halfway["remop_resume"]["rng"]  # the GPU's generator (dropout) is part of the state
    run_to_end(_deterministic_argv("run", tiny_rafdb, stopped, resume=True), tmp_path / "resumed.out")
    assert "Model loaded" in open(stopped / "run" / "log.txt").read()

    (ref_ckpt, ref_results), (ckpt, results) = final_state(whole / "run"), final_state(stopped / "run")
    assert ref_ckpt["it"] == ckpt["it"] == RESUME_RUN["num_train_iter"]
    for part in ("model", "ema_model"):
        assert_same_tensors(ref_ckpt[part], ckpt[part], part)
    assert any(not torch.equal(ckpt["model"][k], ckpt["ema_model"][k]) for k in ckpt["model"])  # EMA carried on
    ref_opt, opt = ref_ckpt["optimizer"]["state"], ckpt["optimizer"]["state"]
    assert ref_opt.keys() == opt.keys()
    for key in ref_opt:
        assert_same_tensors(ref_opt[key], opt[key], f"optimizer state {key}")
    assert results == ref_results  # every metric of every head, best and last


# -- two GPUs ---------------------------------------------------------------------------------------------------------

@pytest.mark.cuda(gpus=2)
def test_two_gpus_agree_on_the_final_weights(tiny_rafdb, tmp_path, monkeypatch):
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    # two GPUs exactly: the launcher divides the batch by the GPUs it sees
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", ",".join(visible.split(",")[:2]) if visible else "0,1")
    argv = train_argv(tiny_rafdb, tmp_path / "runs", save_name="ddp", num_train_iter=3, num_eval_iter=3,
                      device="cuda", world_size=2, dist_url=f"tcp://127.0.0.1:{free_port()}")
    mp.spawn(ddp_worker, args=(argv, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert (r0["ddp"], r1["ddp"]) == ("DistributedDataParallel", "DistributedDataParallel")
    assert (r0["backend"], r0["device"], r1["device"]) == ("nccl", "cuda:0", "cuda:1")
    assert (r0["main"], r1["main"]) == (True, False)
    assert r0["params"].keys() == r1["params"].keys() and "centers" in r0["params"]
    for name in r0["params"]:
        assert torch.equal(r0["initial"][name], r1["initial"][name]), name
        assert torch.equal(r0["params"][name], r1["params"][name]), name
    # both started from rank 0's initialisation and 3 Adam steps on all-reduced gradients moved every parameter
    assert [n for n in r0["params"] if torch.equal(r0["initial"][n], r0["params"][n])] == []
    checkpoint = torch.load(tmp_path / "runs" / "ddp" / "latest_model.pth", map_location="cpu", weights_only=False)
    assert checkpoint["it"] == 3  # the main process saved the finished run (completed iterations)
