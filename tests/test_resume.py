"""A run SIGKILLed mid-training and resumed finishes exactly like a run never interrupted (CPU, fixed seed).

Each test launches real ``python train.py`` processes: one uninterrupted run, one killed right after its first
mid-epoch checkpoint, then the same command plus ``--resume True``. The final weights must be bit-identical and
results.json equal. A second group kills a process inside ``atomic_save`` at chosen moments with a real SIGKILL.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import train_argv

pytestmark = pytest.mark.slow  # kills and resumes whole training processes (50-60 s each on 2 cores)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ITERS, EPOCHS, EVAL_EVERY = 8, 2, 3  # 4 steps per epoch; checkpoints after 3 (epoch 0) and 6 (epoch 1): mid-epoch


def resume_env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _argv(data_dir, save_dir, num_workers, **extra):
    return [sys.executable, os.path.join(REPO, "train.py")] + train_argv(
        data_dir, save_dir, **{"save_name": "run", "num_train_iter": ITERS, "epoch": EPOCHS,
                               "num_eval_iter": EVAL_EVERY, "num_workers": num_workers, **extra})


def run_to_end(argv, log_path):
    with open(log_path, "w") as log:
        proc = subprocess.run(argv, cwd=REPO, env=resume_env(), stdout=log, stderr=subprocess.STDOUT, timeout=300)
    assert proc.returncode == 0, open(log_path).read()[-3000:]


def _saves_logged(run_dir):
    try:
        with open(os.path.join(run_dir, "log.txt")) as f:
            return f.read().count("latest_model.pth")
    except FileNotFoundError:
        return 0


def _kill_after_first_checkpoint(argv, run_dir, log_path):
    """Start the run, SIGKILL it as soon as its first checkpoint is logged; return the iterations it had saved."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, cwd=REPO, env=resume_env(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while _saves_logged(run_dir) < 1:
            assert proc.poll() is None, f"the run ended before its first checkpoint:\n{open(log_path).read()[-3000:]}"
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return torch.load(os.path.join(run_dir, "latest_model.pth"), map_location="cpu", weights_only=False)["it"]


def final_state(run_dir):
    ckpt = torch.load(os.path.join(run_dir, "latest_model.pth"), map_location="cpu", weights_only=False)
    with open(os.path.join(run_dir, "results.json")) as f:
        return ckpt, json.load(f)


def assert_same_tensors(a, b, what):
    assert a.keys() == b.keys(), what
    for key in a:
        assert torch.equal(a[key], b[key]), f"{what}: {key} differs"


@pytest.mark.parametrize("num_workers,ema_m", [(0, 0.9), (1, 0.0)])  # an EMA model that differs from the weights
def test_killed_and_resumed_run_equals_uninterrupted(tiny_rafdb, tmp_path, num_workers, ema_m):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    run_to_end(_argv(tiny_rafdb, whole, num_workers, ema_m=ema_m), tmp_path / "whole.out")
    resumed_from = _kill_after_first_checkpoint(_argv(tiny_rafdb, killed, num_workers, ema_m=ema_m),
                                                killed / "run", tmp_path / "killed.out")
    per_epoch = ITERS // EPOCHS
    assert 0 < resumed_from < ITERS and resumed_from % per_epoch != 0  # a mid-epoch resume point
    run_to_end(_argv(tiny_rafdb, killed, num_workers, ema_m=ema_m, resume=True), tmp_path / "resumed.out")
    resumed_log = open(killed / "run" / "log.txt").read()
    assert "Model loaded" in resumed_log

    (ref_ckpt, ref_results), (ckpt, results) = final_state(whole / "run"), final_state(killed / "run")
    assert ref_ckpt["it"] == ckpt["it"] == ITERS
    for part in ("model", "ema_model"):
        assert_same_tensors(ref_ckpt[part], ckpt[part], part)
    if ema_m:  # the EMA is not simply the weights: the resumed run carried it on from the checkpoint
        assert any(not torch.equal(ckpt["model"][k], ckpt["ema_model"][k]) for k in ckpt["model"])
    ref_opt, opt = ref_ckpt["optimizer"]["state"], ckpt["optimizer"]["state"]
    assert ref_opt.keys() == opt.keys()
    for key in ref_opt:
        assert_same_tensors(ref_opt[key], opt[key], f"optimizer state {key}")
    assert (ckpt["best_it"], ckpt["best_eval_acc"]) == (ref_ckpt["best_it"], ref_ckpt["best_eval_acc"])
    assert results == ref_results  # every metric of every head, best and last, to the last digit
    assert not [n for n in os.listdir(killed / "run") if n.endswith(".tmp")]


def test_a_run_killed_after_an_epochs_last_step_still_runs_that_epochs_hooks(tiny_rafdb, tmp_path):
    """Ada-CM updates its margins in after_train_epoch. A checkpoint written by an epoch's last step (4 of 8) comes
    before those hooks: the resumed run must run them first, or its margins, masks and weights drift (margin floor 0:
    the learned margins are not clamped to the initial 0.8, so the update shows)."""
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    extra = dict(config="config/demo/adacm.yaml", num_eval_iter=ITERS // EPOCHS, adacm_margin_floor=0.0)
    run_to_end(_argv(tiny_rafdb, whole, 0, **extra), tmp_path / "whole.out")
    resumed_from = _kill_after_first_checkpoint(_argv(tiny_rafdb, killed, 0, **extra), killed / "run",
                                                tmp_path / "killed.out")
    assert resumed_from == ITERS // EPOCHS  # the last step of epoch 0
    run_to_end(_argv(tiny_rafdb, killed, 0, resume=True, **extra), tmp_path / "resumed.out")

    (ref_ckpt, ref_results), (ckpt, results) = final_state(whole / "run"), final_state(killed / "run")
    ref_hooks, hooks = ref_ckpt["remop_resume"]["hooks"], ckpt["remop_resume"]["hooks"]
    margins = [h["margins"] for h in ref_hooks.values() if "margins" in h]
    assert len(margins) == 1 and not torch.allclose(margins[0], torch.full_like(margins[0], 0.8))  # they moved
    assert ref_hooks.keys() == hooks.keys()
    for name in ref_hooks:
        assert ref_hooks[name].keys() == hooks[name].keys(), name
        for attr, value in ref_hooks[name].items():
            same = torch.equal(value, hooks[name][attr]) if torch.is_tensor(value) else value == hooks[name][attr]
            assert same, f"hook {name}: {attr} differs"
    for part in ("model", "ema_model"):
        assert_same_tensors(ref_ckpt[part], ckpt[part], part)
    assert results == ref_results


#: methods with state beyond the weights, killed and resumed as above: demo config -> keys putting their mechanism on
#: both sides of the checkpoint (step 3 of epoch 0). Meta-Expert: its DEA and fusion train from step 0 (weights
#: only); CPG at p_cutoff 0: its filter admits images in steps 0-3, the resumed run commits them at the end of epoch 0
#: (the pending outcomes come from the checkpoint) and epoch 1 draws labeled batches from the grown set. BaCon: its
#: contrastive loss from step 0, every row reliable: its memory bank fills on both sides. ADELLO: CCR from step 0 (its
#: temperature fixed at step 0, saved), the prior estimate moving fast (EMA 0.5)
METHODS = {"metaexpert": {}, "cpg": {"p_cutoff": 0.0},
           "bacon": {"bacon_start": 0.0, "bacon_p_cutoff": 0.0, "bacon_count_p_cutoff": 0.0},
           "adello": {"adello_distill_start": 0.0, "adello_ema_p": 0.5}}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_a_killed_method_resumes_bit_identical(method, tiny_rafdb, tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    extra = dict(config=f"config/demo/{method}.yaml", **METHODS[method])
    run_to_end(_argv(tiny_rafdb, whole, 0, **extra), tmp_path / "whole.out")
    resumed_from = _kill_after_first_checkpoint(_argv(tiny_rafdb, killed, 0, **extra), killed / "run",
                                                tmp_path / "killed.out")
    assert 0 < resumed_from < ITERS // EPOCHS  # mid epoch 0
    run_to_end(_argv(tiny_rafdb, killed, 0, resume=True, **extra), tmp_path / "resumed.out")

    (ref_ckpt, ref_results), (ckpt, results) = final_state(whole / "run"), final_state(killed / "run")
    for part in ("model", "ema_model"):
        assert_same_tensors(ref_ckpt[part], ckpt[part], part)
    ref_hooks, hooks = ref_ckpt["remop_resume"]["hooks"], ckpt["remop_resume"]["hooks"]
    assert ref_hooks.keys() == hooks.keys()
    for name in ref_hooks:
        for attr, value in ref_hooks[name].items():
            same = torch.equal(value, hooks[name][attr]) if torch.is_tensor(value) else value == hooks[name][attr]
            assert same, f"hook {name}: {attr} differs"
    if method == "cpg":  # the labeled set grew, and the radii were measured
        assert (hooks["CPGLabeledSetHook"]["status"] >= 0).any() and hooks["CPGLabeledSetHook"]["radii"] is not None
    if method == "bacon":  # the bank stored features (and the checkpoint, before step 3, some of them)
        assert (hooks["BaConBank"]["stored_labels"] >= 0).any()
    if method == "adello":  # the estimate left uniform, and CCR's temperature was fixed
        prior = hooks["ADELLOPriorHook"]
        assert prior["distill_temperature"] is not None and prior["p_u"].std() > 0
    assert results == ref_results


# -- SIGKILL inside atomic_save -------------------------------------------------------------------------------------

_DYING_SAVER = r"""
import io, os, signal, sys
import torch
from remop_usb.usb_compat import checkpointing

moment, path = sys.argv[1], sys.argv[2]
new = {"it": 2, "w": torch.arange(200_000)}
die = lambda: os.kill(os.getpid(), signal.SIGKILL)
if moment == "during_write":  # half of the bytes reach the disk, then the process dies
    def torch_save(obj, f):
        buffer = io.BytesIO()
        torch.serialization.save(obj, buffer)
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        f.flush()
        os.fsync(f.fileno())
        die()
    checkpointing.torch.save = torch_save
else:  # dies right after the new checkpoint was renamed onto the target
    real_replace = os.replace
    def replace(src, dst):
        real_replace(src, dst)
        if os.fspath(dst) == path:
            die()
    checkpointing.os.replace = replace
checkpointing.atomic_save(new, path, keep_previous=True)
"""


@pytest.mark.parametrize("moment", ["during_write", "after_replace"])
def test_sigkill_inside_a_checkpoint_save(tmp_path, moment):
    from remop_usb.usb_compat import checkpointing

    path = tmp_path / "latest_model.pth"
    checkpointing.atomic_save({"it": 1, "w": torch.arange(200_000)}, path, keep_previous=True)
    proc = subprocess.run([sys.executable, "-c", _DYING_SAVER, moment, str(path)], cwd=REPO, env=resume_env(),
                          capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    latest = torch.load(path, weights_only=False)
    temporaries = [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    if moment == "during_write":
        assert latest["it"] == 1  # the old checkpoint, whole: the half-written one never took its name
        assert len(temporaries) == 1  # the half-written temporary, unreadable ...
        with pytest.raises(RuntimeError, match="failed reading zip archive: failed finding central directory"):
            torch.load(tmp_path / temporaries[0], weights_only=False)
        assert not (tmp_path / "latest_model.prev.pth").exists()
    else:
        assert latest["it"] == 2 and torch.equal(latest["w"], torch.arange(200_000))
        assert torch.load(tmp_path / "latest_model.prev.pth", weights_only=False)["it"] == 1
        assert temporaries == []
    # ... and the next save clears it away
    checkpointing.atomic_save({"it": 3}, path, keep_previous=True)
    checkpointing.remove_stale_temporaries(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["latest_model.prev.pth", "latest_model.pth"]


# -- a resumed loader, in isolation ---------------------------------------------------------------------------------

class _RandomlyAugmented(torch.utils.data.Dataset):
    """12 items; each draws its "augmentation" from torch's RNG, as torchvision transforms do. Counts loads."""

    def __init__(self):
        self.loaded = []

    def __len__(self):
        return 12

    def __getitem__(self, idx):
        self.loaded.append(idx)
        return {"idx_lb": idx, "x_lb": torch.rand(3)}


def _usb_loader(num_workers):
    import remop_usb.registry  # noqa: F401  (imports semilearn with its import-time warnings silenced)
    from semilearn.datasets import DistributedSampler

    dataset = _RandomlyAugmented()
    sampler = DistributedSampler(dataset, num_replicas=1, rank=0, num_samples=12)
    return torch.utils.data.DataLoader(dataset, batch_size=2, sampler=sampler, num_workers=num_workers,
                                       drop_last=True)


def _resumable(loader, pending=None, epoch=3):
    from types import SimpleNamespace

    from remop_usb.usb_compat import checkpointing

    checkpointing.make_loaders_resumable(None, SimpleNamespace(loader_dict={"train_lb": loader},
                                                               _remop_resume=pending))
    loader.sampler.set_epoch(epoch)  # what DistSamplerSeedHook does before each epoch
    return loader


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("consumed", [2, 6])  # mid-epoch; the whole epoch (the run resumes with the next one)
def test_a_resumed_loader_continues_with_the_same_batches_without_loading_the_consumed_ones(num_workers, consumed):
    from remop_usb.usb_compat import checkpointing

    torch.manual_seed(0)
    original = _resumable(_usb_loader(num_workers))
    batches = iter(original)
    for _ in range(consumed):
        next(batches)
    state = original._remop_state  # what get_save_dict stores for this loader
    saved = {"rng": checkpointing.rng_state(), "loader": {**state, "worker_rng": dict(state["worker_rng"])}}
    assert (saved["loader"]["epoch"], saved["loader"]["position"]) == (3, consumed)
    if consumed == 6:
        original.sampler.set_epoch(4)
        batches = iter(original)
    rest = list(batches)
    assert len(rest) == 6 - consumed % 6

    torch.manual_seed(123)  # a new process: its own RNG state until the checkpoint's is restored
    pending = checkpointing.PendingResume(saved["rng"], {"train_lb": saved["loader"]})
    resumed = _resumable(_usb_loader(num_workers), pending, epoch=3 if consumed < 6 else 4)
    again = list(resumed)
    assert len(again) == len(rest)
    for a, b in zip(again, rest):
        assert torch.equal(a["idx_lb"], b["idx_lb"]) and torch.equal(a["x_lb"], b["x_lb"])
    if num_workers == 0:  # only the remaining batches were loaded, in order
        assert resumed.dataset.loaded == torch.cat([b["idx_lb"] for b in rest]).tolist()


# -- resume with nothing to resume from -----------------------------------------------------------------------------

def test_resume_before_the_first_checkpoint_trains_from_scratch(tiny_rafdb, tmp_path, capsys):
    from remop_usb.launch import main

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "log.txt").write_text("STALE: what a run killed before its first checkpoint leaves\n")
    argv = train_argv(tiny_rafdb, tmp_path, save_name="run", num_train_iter=2, num_eval_iter=2, resume=True)
    capsys.readouterr()
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    notes = [line for line in out if "resume:" in line]
    assert notes == [f"[remop-usb] resume: no checkpoint in {run_dir} yet (latest_model.pth, latest_model.prev.pth); "
                     f"training from scratch"]
    assert "STALE" not in (run_dir / "log.txt").read_text()  # a fresh run: the save dir was replaced (overwrite)
    assert torch.load(run_dir / "latest_model.pth", weights_only=False)["it"] == 2
    assert (run_dir / "results.json").exists()


def test_resume_from_a_missing_explicit_load_path_is_an_error_before_anything_is_written(tiny_rafdb, tmp_path,
                                                                                        capsys):
    from remop_usb.launch import main

    missing = tmp_path / "elsewhere" / "latest_model.pth"
    argv = train_argv(tiny_rafdb, tmp_path / "runs", save_name="run", resume=True, load_path=missing)
    capsys.readouterr()
    assert main(argv) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: resume: no checkpoint at {missing}"]
    assert not (tmp_path / "runs").exists()  # no config.json, no save dir
