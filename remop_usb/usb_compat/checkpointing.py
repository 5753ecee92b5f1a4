"""Checkpoints that are written atomically, checked when read, and resume a run exactly where it stopped.

A run killed at any moment (SIGKILL, power loss) restarts with the same command plus ``resume: True`` from its last
checkpoint; on CPU with a fixed seed it then finishes with the same weights and metrics as a run never interrupted.
USB 0.3.2 alone loses most of what that needs:

=====================================================  ===========================================================
quirk in 0.3.2                                         what we do
=====================================================  ===========================================================
save_model: ``torch.save`` straight onto the target    :func:`atomic_save`: a hidden temporary sibling, fsync,
  (a kill mid-write leaves a truncated checkpoint)       rename; the replaced ``latest_model.pth`` stays as
                                                         ``latest_model.prev.pth`` (a hard link, no extra copy)
temporary files of a killed save stay forever          the next save removes them (:func:`remove_stale_temporaries`)
load_model: a truncated / foreign file gives a         :func:`read_checkpoint`: one line naming the file and what
  traceback (or loads half a state)                      was expected; a damaged file falls back to its ``.prev``
torch.load weights_only=True (torch>=2.6) refuses      our own checkpoints are read with weights_only=False
  the numpy objects USB stores
checkpoints store it+1, epoch+1                        completed iterations and their epoch, so a resumed run
                                                         finishes every step
a checkpoint of an epoch's last step is written        it records that; the resumed run first runs those hooks
  before that epoch's after_train_epoch hooks: a         (:func:`finish_interrupted_epoch`)
  resumed run skips them (Adsh's refit, Ada-CM's
  margins)
CheckpointHook saves amid a step's hooks; hooks        it only marks the step; the files are written after the
  after it (diagnostics, logging, W&B) still draw        step's last ``after_train_step`` hook
  random numbers and change state                        (:func:`_saving_at_end_of_step`)
latest_model.pth written before model_best.pth: a      model_best.pth first, then latest_model.pth: a kill
  kill between leaves a latest naming a best that        between them resumes from the previous latest, which
  was never written                                      redoes that step and writes the same best again
no RNG state in checkpoints                            python, numpy, torch (and CUDA) RNG states, restored at
                                                         the point of the step loop where they were saved
sampler position lost: a resumed run restarts the      per train loader: epoch, batches consumed, base seed of the
  epoch's data order from its first batch                iterator and each worker's RNG; the resumed loader skips
                                                         the consumed indices without loading their images
DataLoader workers reseed from a fresh base seed       workers of the resumed epoch continue the saved streams
hooks' state (Adsh's thresholds, Dash's rho, ...)      every hook's state is saved and restored: what it names in
  is not saved                                           ``checkpoint_attrs``, else its tensors, arrays and numbers
                                                         (USB's own extra keys keep working)
=====================================================  ===========================================================

When checkpoints are written: on USB's schedule -- after every ``num_eval_iter``-th iteration and after the last
one ``model_best.pth`` (when that step is the best so far) and ``latest_model.pth`` are written, once all of the
step's hooks have run (when the step is the best, ``latest_model.pth`` is a hard link to the ``model_best.pth`` just
written from the same state, not a second serialisation); ``EvaluationHook.after_run`` saves ``latest_model.pth``
once more at the end. A killed run therefore loses at most ``num_eval_iter - 1`` iterations. Only the process of
rank 0 writes. Keeping
``latest_model.prev.pth`` costs the disk space of one more checkpoint (the hard link holds the replaced file).

Exactness holds for one process (CPU or one GPU, where the GPU kernels are deterministic) and USB's samplers
(``RandomSampler`` / ``WeightedRandomSampler``, i.e. ``semilearn.datasets.DistributedSampler`` and its subclasses).
With DDP every rank resumes at the right batch, but all ranks continue rank 0's RNG streams. Changing ``num_workers``
between the interrupted and the resumed run keeps the data order but not the augmentation draws of that epoch; so
does ``persistent_workers: True`` (its workers keep their RNG streams across epochs, a resumed run starts new ones).
A hook that declares ``checkpoint_attrs`` (ours do) keeps only those: a setting changed between the two runs takes
effect in the resumed one. A hook that declares nothing (USB's) is restored with every number it keeps, settings
included: a changed setting of such a hook is overridden by the checkpoint's value.
"""

from __future__ import annotations

import itertools
import os
import random
import re
import shutil
import sys
from contextlib import contextmanager

import numpy as np
import torch
from torch.utils.data import DataLoader, get_worker_info

from ..errors import UserError
from ..fileio import atomic_output
from .distributed import is_main_process

#: key of this module's additions in a checkpoint dict
STATE_KEY = "remop_resume"
FORMAT = 1
#: what USB's AlgorithmBase.load_model reads; a checkpoint without one of these is not a USB checkpoint
REQUIRED_KEYS = ("model", "ema_model", "optimizer", "loss_scaler", "it", "epoch", "best_it", "best_eval_acc")
#: checkpoints whose replaced version is kept as ``<name>.prev.pth``
KEEP_PREVIOUS = ("latest_model.pth",)
_TEMPORARY = re.compile(r"^\..+\.pth\.[^.]+\.tmp$")


# -- files ----------------------------------------------------------------------------------------------------------

def previous_path(path) -> str:
    """``.../latest_model.pth`` -> ``.../latest_model.prev.pth``: the checkpoint it replaced."""
    root, ext = os.path.splitext(os.fspath(path))
    return f"{root}.prev{ext or '.pth'}"


def _temporary_prefix(path) -> str:
    """Temporaries of ``<name>.pth`` are hidden ``.<name>.pth.<random>.tmp`` siblings (:data:`_TEMPORARY`)."""
    return f".{os.path.basename(os.fspath(path))}."


def _unlink_quietly(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _fsync_dir(folder):
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _keep_as_previous(path):
    """Make ``previous_path(path)`` the current content of ``path`` (hard link; a copy where links fail)."""
    atomic_link(path, previous_path(path))


def atomic_save(obj, path, keep_previous=False) -> str:
    """``torch.save`` to a temporary sibling, fsync, then rename onto ``path``: it is complete or the old one."""
    path = os.fspath(path)
    with atomic_output(path, suffix=".tmp", prefix=_temporary_prefix(path)) as tmp:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
        if keep_previous and os.path.exists(path):
            _keep_as_previous(path)
    _fsync_dir(os.path.dirname(os.path.abspath(path)))
    return path


def atomic_link(source, path, keep_previous=False) -> str:
    """``path`` made the same file as ``source`` (a hard link; a copy where links fail), atomically as
    :func:`atomic_save`: a checkpoint whose content another name already holds is not serialised and written again.
    Files are only ever replaced by a rename, never changed in place, so the two names stay independent."""
    path = os.fspath(path)
    with atomic_output(path, suffix=".tmp", prefix=_temporary_prefix(path)) as tmp:
        os.unlink(tmp)
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        if keep_previous and os.path.exists(path):
            _keep_as_previous(path)
    _fsync_dir(os.path.dirname(os.path.abspath(path)))
    return path


def remove_stale_temporaries(folder) -> list:
    """Delete what a killed save left in ``folder`` (hidden ``.<name>.pth.<random>.tmp`` files); returns them."""
    if not os.path.isdir(folder):
        return []
    stale = [os.path.join(folder, n) for n in os.listdir(folder) if _TEMPORARY.match(n)]
    for path in stale:
        _unlink_quietly(path)
    return stale


def save_model(self, save_name, save_path):
    """AlgorithmBase.save_model, atomically (see the table above)."""
    os.makedirs(save_path, exist_ok=True)
    remove_stale_temporaries(save_path)
    path, keep_previous = os.path.join(save_path, save_name), save_name in KEEP_PREVIOUS
    same = getattr(self, "_remop_same_state_in", None)  # written this step from the same state (model_best.pth)
    if same is not None and os.path.isfile(same):
        target = atomic_link(same, path, keep_previous=keep_previous)
    else:
        target = atomic_save(self.get_save_dict(), path, keep_previous=keep_previous)
    self.print_fn(f"model saved: {target}")


# -- RNG ------------------------------------------------------------------------------------------------------------

def rng_state(cuda=True) -> dict:
    """The python, numpy and torch (and, when in use, CUDA) RNG states of this process."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if cuda and torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _seed_like_torch_worker(base_seed, worker_id):
    """What torch's ``_worker_loop`` does to a fresh worker's RNGs (torch.utils.data._utils.worker)."""
    from torch.utils.data._utils.worker import _generate_state

    random.seed(base_seed + worker_id)
    torch.manual_seed(base_seed + worker_id)
    np.random.seed(_generate_state(base_seed, worker_id))


# -- data loaders ---------------------------------------------------------------------------------------------------

class _WorkerBatch:
    """A batch as it leaves a worker, with that worker's RNG state right after producing it."""

    def __init__(self, batch, worker, state):
        self.batch, self.worker, self.state = batch, worker, state

    def pin_memory(self):
        """``pin_memory: True``: the loader's pinning thread pins what it is handed by calling this method (an object
        without one would pass through unpinned); the batch is pinned, the worker's RNG state stays as it is."""
        from torch.utils.data._utils.pin_memory import pin_memory

        self.batch = pin_memory(self.batch)
        return self


class _CollateRecordingWorkerRng:
    """Collate function wrapper: in a worker, attach the worker's RNG state (the loader's iterator strips it)."""

    def __init__(self, collate_fn):
        self.collate_fn = collate_fn

    def __call__(self, samples):
        batch = self.collate_fn(samples)
        info = get_worker_info()
        if info is None:
            return batch
        state = rng_state(cuda=False)
        state["torch"] = state["torch"].numpy().copy()  # plain bytes through the queue, no shared memory
        return _WorkerBatch(batch, info.id, state)


class _ContinueWorkerRng:
    """worker_init_fn of a resumed epoch: worker ``w`` produces what the interrupted run's worker ``slot`` would have
    produced next (``slot = (offset + w) % n``), so it continues that worker's RNG stream."""

    def __init__(self, user_fn, offset, num_workers, base_seed, states):
        self.user_fn, self.offset, self.num_workers = user_fn, offset, num_workers
        self.base_seed, self.states = base_seed, states

    def __call__(self, worker_id):
        slot = (self.offset + worker_id) % self.num_workers
        if slot not in self.states:  # that worker had delivered nothing yet: start it as torch would have
            _seed_like_torch_worker(self.base_seed, slot)
        if self.user_fn is not None:
            self.user_fn(worker_id)
        if slot in self.states:
            set_rng_state(self.states[slot])


class _TrackedIterator:
    """A train loader's iterator that counts the batches it delivers and keeps each worker's latest RNG state."""

    def __init__(self, inner, state, offset, on_first_batch=None):
        self._inner, self._state, self._offset = inner, state, offset
        self._on_first_batch = on_first_batch

    def __iter__(self):
        return self

    def __len__(self):
        return len(self._inner)

    def __next__(self):
        if self._on_first_batch is not None:
            action, self._on_first_batch = self._on_first_batch, None
            action()
        item = next(self._inner)
        if isinstance(item, _WorkerBatch):
            self._state["worker_rng"][(self._offset + item.worker) % self._state["num_workers"]] = item.state
            item = item.batch
        self._state["position"] += 1
        return item


def _resume_offset(plan, epoch, batches_per_epoch, num_workers) -> int:
    """Batches of this epoch the interrupted run consumed (0: none, or the plan is for another epoch)."""
    if not plan or plan["epoch"] != epoch or not 0 < plan["position"] < batches_per_epoch:
        return 0
    if num_workers > 0 and plan["num_workers"] != num_workers:
        plan["worker_rng"] = {}  # other workers: same batches, fresh augmentation streams
        plan["num_workers"] = num_workers
    return plan["position"]


def _iterate_resumably(loader, make_iterator):
    """A resumable loader's ``__iter__``: start a resumed epoch where it stopped, remember where this one is."""
    plan, loader._remop_plan = loader._remop_plan, None
    pending = loader._remop_resume
    epoch = getattr(loader.sampler, "epoch", 0)
    offset = _resume_offset(plan, epoch, len(loader), loader.num_workers)
    if offset == 0 and pending is not None:
        pending.restore_rng()  # the checkpoint was taken before this epoch's iterators existed
    user_init = loader.worker_init_fn
    if offset:
        loader.sampler._remop_skip = offset * loader.batch_size
        if loader.num_workers > 0:
            loader.worker_init_fn = _ContinueWorkerRng(user_init, offset, loader.num_workers, plan["base_seed"],
                                                       plan["worker_rng"])
    try:
        inner = make_iterator()
    finally:
        loader.worker_init_fn = user_init
    loader._remop_state = {"epoch": epoch, "position": offset, "num_workers": loader.num_workers,
                           "base_seed": plan["base_seed"] if offset else inner._base_seed,
                           "worker_rng": dict(plan["worker_rng"]) if offset else {}}
    restore = pending.restore_rng if offset and pending is not None else None
    return _TrackedIterator(inner, loader._remop_state, offset, on_first_batch=restore)


def _resumable_loader_class(cls):
    class ResumableLoader(cls):
        """The loader, remembering where its current epoch is and starting a resumed epoch where it stopped."""

        _remop_resumable = True
        _remop_plan = None  # this loader's saved state, until the resumed epoch starts
        _remop_resume = None  # the algorithm's PendingResume (restores the main RNG once)
        _remop_state = None  # {"epoch", "position", "base_seed", "num_workers", "worker_rng"} of this epoch

        def __iter__(self):
            return _iterate_resumably(self, super().__iter__)

    return ResumableLoader


def _skipping_sampler_class(cls):
    class SkippingSampler(cls):
        """The sampler; its next ``__iter__`` leaves out the first ``_remop_skip`` indices (set for one epoch)."""

        _remop_resumable = True

        def __iter__(self):
            skip = self.__dict__.pop("_remop_skip", 0)
            return itertools.islice(super().__iter__(), skip, None)

    return SkippingSampler


_CLASSES: dict = {}


def _convert(obj, factory):
    """Give ``obj`` the class ``factory(type(obj))`` (made once per class), keeping everything else it has."""
    cls = type(obj)
    if not getattr(cls, "_remop_resumable", False):
        if (factory, cls) not in _CLASSES:
            made = factory(cls)
            made.__name__ = made.__qualname__ = f"Resumable{cls.__name__}"
            _CLASSES[(factory, cls)] = made
        obj.__class__ = _CLASSES[(factory, cls)]
    return obj


def resumable_loaders(algorithm) -> dict:
    """The train loaders whose position can be saved: USB's samplers (``semilearn.datasets.DistributedSampler``)."""
    from semilearn.datasets import DistributedSampler

    return {name: loader for name, loader in (getattr(algorithm, "loader_dict", None) or {}).items()
            if isinstance(loader, DataLoader) and isinstance(loader.sampler, DistributedSampler)}


def make_loaders_resumable(hook, algorithm):
    """DistSamplerSeedHook.before_run: turn the train loaders resumable and hand them a pending resume's plans."""
    pending = getattr(algorithm, "_remop_resume", None)
    for name, loader in resumable_loaders(algorithm).items():
        _convert(loader, _resumable_loader_class)
        _convert(loader.sampler, _skipping_sampler_class)
        if not isinstance(loader.collate_fn, _CollateRecordingWorkerRng):
            loader.collate_fn = _CollateRecordingWorkerRng(loader.collate_fn)
        loader._remop_plan = pending.loader_plan(name) if pending is not None else None
        loader._remop_resume = pending


def restore_rng_before_first_step(hook, algorithm):
    """DistSamplerSeedHook.before_train_step: for loops that use no resumable loader, restore the RNG here."""
    pending = getattr(algorithm, "_remop_resume", None)
    if pending is not None:
        pending.restore_rng()


class PendingResume:
    """What a loaded checkpoint still has to restore once training starts: the RNG states, loader positions and
    the after_train_epoch hooks of an epoch it ended (:func:`finish_interrupted_epoch`)."""

    def __init__(self, rng, loaders, epoch_end=False):
        self.rng, self.loaders = rng, loaders
        self.epoch_end = epoch_end  # the checkpoint ended an epoch before its after_train_epoch hooks ran

    def loader_plan(self, name):
        plan = self.loaders.get(name)
        return None if plan is None else {**plan, "worker_rng": dict(plan["worker_rng"])}

    def restore_rng(self):
        if self.rng is not None:
            set_rng_state(self.rng)
            self.rng = None


# -- what a checkpoint holds ----------------------------------------------------------------------------------------

def run_name(args) -> str:
    imb = getattr(args, "imb_algorithm", None)
    return args.algorithm + (f"+{imb}" if imb and str(imb) != "None" else "")


def state_attributes(hook) -> tuple:
    """The names of ``hook``'s state: what the hook declares in a class attribute ``checkpoint_attrs`` (a tuple of
    names; the DiagnosticsHook declares none: its settings come from the config, its records from its log file),
    else every attribute holding tensors, arrays or numbers (:func:`_is_state`: USB's hooks -- FlexMatch's
    selected_label, Adsh's adsh_s, Dash's rho -- declare nothing)."""
    declared = getattr(hook, "checkpoint_attrs", None)
    if declared is not None:
        return tuple(declared)
    return tuple(k for k, v in vars(hook).items() if _is_state(v))


def _is_state(value) -> bool:
    """Tensors, arrays, numbers and None, also inside lists/tuples/dicts: what a hook's state may hold."""
    if isinstance(value, (torch.Tensor, np.ndarray, int, float, type(None))):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_state(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, (str, int)) and _is_state(v) for k, v in value.items())
    return False


def _to_cpu(value):
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    return value


def hook_state(algorithm) -> dict:
    """Every hook's state (:func:`state_attributes`: FlexMatch's selected_label, Adsh's thresholds, Dash's rho, ...)."""
    state = {}
    for name, hook in getattr(algorithm, "hooks_dict", {}).items():
        attrs = vars(hook)
        state[name] = {k: _to_cpu(attrs[k]) for k in state_attributes(hook) if k in attrs}
    return state


def restore_hook_state(algorithm, saved):
    """Put the saved state back into the hooks (of a hook declaring ``checkpoint_attrs``, only those: a checkpoint
    may hold more)."""
    for name, attrs in saved.items():
        hook = algorithm.hooks_dict.get(name)
        if hook is None:
            continue
        declared = getattr(hook, "checkpoint_attrs", None)
        for attr, value in attrs.items():
            if declared is not None and attr not in declared:
                continue
            current = getattr(hook, attr, None)
            if isinstance(value, torch.Tensor) and isinstance(current, torch.Tensor):
                value = value.to(current.device)
            setattr(hook, attr, value)


def resume_state(algorithm) -> dict:
    """This module's part of a checkpoint (under ``STATE_KEY``)."""
    args = algorithm.args
    loaders = {name: loader._remop_state for name, loader in resumable_loaders(algorithm).items()
               if getattr(loader, "_remop_state", None) is not None}
    return {"format": FORMAT,
            "run": {"algorithm": run_name(args), "net": args.net, "num_classes": algorithm.num_classes},
            "rng": rng_state(),
            "loaders": {name: {**s, "worker_rng": dict(s["worker_rng"])} for name, s in loaders.items()},
            "hooks": hook_state(algorithm)}


def _with_progress_and_resume_state(original):
    """USB stores ``it + 1`` and ``epoch + 1``. Mid-epoch that makes a resumed run skip to the next epoch and finish
    short of num_train_iter; after the last step (``it`` already incremented) it is one too many. Store the number of
    completed iterations and the epoch they fall in instead, plus :func:`resume_state`."""

    def get_save_dict(self):
        save_dict = original(self)
        completed = min(self.it + 1, self.num_train_iter)
        save_dict["it"] = completed
        save_dict["epoch"] = completed // max(1, self.num_iter_per_epoch)
        save_dict[STATE_KEY] = resume_state(self)
        # written inside the step that ends an epoch: the resumed run owes that epoch's after_train_epoch hooks
        save_dict[STATE_KEY]["epoch_end_pending"] = (getattr(self, "_remop_saving_in_step", False)
                                                     and completed % max(1, self.num_iter_per_epoch) == 0)
        return save_dict

    return get_save_dict


# -- reading and checking -------------------------------------------------------------------------------------------

def _first_line(err) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


def _shape(t) -> str:
    return "x".join(str(d) for d in t.shape) or "scalar"


def _state_dict_mismatch(saved, expected, what, net) -> str | None:
    """The first tensor (in the net's order) that is missing or has another shape; then any extra one."""
    if not isinstance(saved, dict):
        return f"holds no {what} state dict (a {type(saved).__name__})"
    for key, tensor in expected.items():
        if key not in saved:
            return f"lacks {what} tensor '{key}' of net {net}"
        if tuple(saved[key].shape) != tuple(tensor.shape):
            return (f"has {what} tensor '{key}' of shape {_shape(saved[key])} where net {net} expects "
                    f"{_shape(tensor)}")
    extra = next((k for k in saved if k not in expected), None)
    return None if extra is None else f"has {what} tensor '{extra}' that net {net} does not have"


def checkpoint_problem(algorithm, checkpoint) -> str | None:
    """Why ``checkpoint`` cannot resume ``algorithm`` (None when it can), as the end of a one-line message."""
    if not isinstance(checkpoint, dict):
        return f"is not a USB checkpoint (it holds a {type(checkpoint).__name__}, expected a dict with keys " \
               f"{', '.join(REQUIRED_KEYS)})"
    missing = [k for k in REQUIRED_KEYS if k not in checkpoint]
    if missing:
        return f"is not a USB checkpoint (it lacks '{missing[0]}'; expected keys {', '.join(REQUIRED_KEYS)})"
    args = algorithm.args
    written = (checkpoint.get(STATE_KEY) or {}).get("run", {})
    if written.get("algorithm", run_name(args)) != run_name(args):
        return f"was written by algorithm {written['algorithm']}, expected a checkpoint of {run_name(args)}"
    net = args.net + (f" (the checkpoint's net is {written['net']})" if written.get("net", args.net) != args.net
                      else "")
    return (_state_dict_mismatch(checkpoint["model"], algorithm.model.state_dict(), "model", net)
            or _state_dict_mismatch(checkpoint["ema_model"], algorithm.ema_model.state_dict(), "ema_model", net))


def _read(algorithm, path):
    """(problem or None, checkpoint)."""
    if not os.path.isfile(path):
        return "does not exist (expected a checkpoint written by train.py, e.g. latest_model.pth)", None
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # any unpickling failure: truncated, random bytes, another format
        return f"is unreadable: truncated or not a PyTorch checkpoint ({_first_line(err)})", None
    return checkpoint_problem(algorithm, checkpoint), checkpoint


def read_checkpoint(algorithm, path):
    """``(path actually used, checkpoint)``: ``path`` if it is sound, else its ``.prev`` if that is, else UserError."""
    problem, checkpoint = _read(algorithm, path)
    if problem is None:
        return path, checkpoint
    previous = previous_path(path)
    if os.path.isfile(previous):
        previous_problem, previous_checkpoint = _read(algorithm, previous)
        if previous_problem is None:
            message = f"[remop-usb] warning: checkpoint {path} {problem}; using the previous one, {previous}"
            print(message, file=sys.stderr)
            algorithm.print_fn(message)
            return previous, previous_checkpoint
    raise UserError(f"checkpoint {path} {problem}")


@contextmanager
def _torch_load_returning(checkpoint):
    """Inside, ``torch.load`` returns ``checkpoint`` (already read and checked) instead of reading the file again."""
    real_load = torch.load
    torch.load = lambda *args, **kwargs: checkpoint
    try:
        yield
    finally:
        torch.load = real_load


def _checked_load(original):
    """AlgorithmBase.load_model on a checked checkpoint (or its previous one), then this module's state."""

    def load_model(self, load_path):
        path, checkpoint = read_checkpoint(self, load_path)
        with _torch_load_returning(checkpoint):
            result = original(self, path)
        state = checkpoint.get(STATE_KEY)
        self._remop_resume = None
        if state is not None:
            restore_hook_state(self, state.get("hooks", {}))
            self._remop_resume = PendingResume(state.get("rng"), state.get("loaders", {}),
                                               state.get("epoch_end_pending", False))
        return result

    return load_model


# -- when checkpoints are written ----------------------------------------------------------------------------------

def mark_checkpoint_due(hook, algorithm):
    """CheckpointHook.after_train_step: USB's schedule (every num_eval_iter-th and the last iteration, rank 0), but
    the writing waits for the end of the step's hooks (:func:`_saving_at_end_of_step`)."""
    if hook.every_n_iters(algorithm, algorithm.num_eval_iter) or hook.is_last_iter(algorithm):
        if is_main_process(algorithm):
            algorithm._remop_checkpoint_due = True


def save_due_checkpoint(algorithm):
    """Write the checkpoints of this step: model_best.pth first (when this step is the best), then latest."""
    if not getattr(algorithm, "_remop_checkpoint_due", False):
        return
    algorithm._remop_checkpoint_due = False
    save_path = os.path.join(algorithm.save_dir, algorithm.save_name)
    algorithm._remop_saving_in_step = True
    try:
        if algorithm.it == algorithm.best_it:
            algorithm.save_model("model_best.pth", save_path)
            # the same state: latest_model.pth becomes a second name of that file (one serialisation, one write)
            algorithm._remop_same_state_in = os.path.join(save_path, "model_best.pth")
        algorithm.save_model("latest_model.pth", save_path)
    finally:
        algorithm._remop_saving_in_step = False
        algorithm._remop_same_state_in = None


def finish_interrupted_epoch(algorithm, call_hook):
    """Before a resumed run's first epoch (or its end, when no epoch is left): when its checkpoint was written by the
    step that ended an epoch, run that epoch's ``after_train_epoch`` hooks (Adsh's threshold refit, Ada-CM's margin
    update), as the interrupted run did next, from the checkpoint's RNG state and with that epoch's number."""
    pending = getattr(algorithm, "_remop_resume", None)
    if pending is None or not pending.epoch_end:
        return
    pending.epoch_end = False
    pending.restore_rng()
    epoch, algorithm.epoch = algorithm.epoch, algorithm.start_epoch - 1
    try:
        call_hook(algorithm, "after_train_epoch")
    finally:
        algorithm.epoch = epoch


def _saving_at_end_of_step(original):
    """AlgorithmBase.call_hook: after every hook's ``after_train_step`` (diagnostics, logging and W&B hooks run after
    USB's CheckpointHook and still draw random numbers), write the checkpoint that CheckpointHook marked due; before
    a resumed run's first ``before_train_epoch`` (or ``after_run``), finish the epoch its checkpoint ended."""

    def call_hook(self, fn_name, hook_name=None, *args, **kwargs):
        if fn_name in ("before_train_epoch", "after_run") and hook_name is None:
            finish_interrupted_epoch(self, original)
        result = original(self, fn_name, hook_name, *args, **kwargs)
        if fn_name == "after_train_step" and hook_name is None:
            save_due_checkpoint(self)
        return result

    return call_hook


def install():
    import semilearn.core.algorithmbase as algorithmbase
    from semilearn.core.hooks import CheckpointHook, DistSamplerSeedHook

    base = algorithmbase.AlgorithmBase
    base.get_save_dict = _with_progress_and_resume_state(base.get_save_dict)
    base.load_model = _checked_load(base.load_model)
    base.save_model = save_model
    base.call_hook = _saving_at_end_of_step(base.call_hook)
    CheckpointHook.after_train_step = mark_checkpoint_due
    DistSamplerSeedHook.before_run = make_loaders_resumable
    DistSamplerSeedHook.before_train_step = restore_rng_before_first_step
