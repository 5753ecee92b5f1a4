"""One run of a sweep and the files it shares with other workers: what the sweep, its launchers and ``--status``
have in common.

- :class:`Run`: a (setting, method, seed) of a grid, its folder ``DIR/<setting>/<method>/seed<k>`` and train.py
  command;
- its state: :func:`inspect` (done, resume, new or stale), :func:`claim` (lock it, :mod:`.sweep_lock`, and inspect
  it again), :func:`open_log` / :func:`finish` (an attempt's first and last line in ``seed<k>.log``, the last one
  ending with :data:`END_MARK`);
- what is printed: :func:`progress` (one line per event of a run), :func:`result_text`;
- the plan file ``DIR/sweep.json``: :func:`write_plan`, :func:`record_jobs`;
- :func:`prepare_demo_data`: the synthetic data, written once before runs that start together need it.

Imports go one way: :mod:`.sweep` -> :mod:`.launchers`, :mod:`.sweep_status` -> this module -> :mod:`.sweep_lock`.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from typing import Optional

from .. import runconfig
from ..fileio import read_json, write_json_atomic
from . import sweep_lock


#: the checkout's train.py, which every run executes
TRAIN_PY = os.path.join(os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")), "train.py")

#: the sweep's plan, ``DIR/sweep.json`` (:func:`write_plan`)
PLAN_FILE = "sweep.json"

#: the last line of a run's log after each attempt: ``# <time> exit status <n>``
END_MARK = "exit status"


@dataclass
class Run:
    index: int
    setting: str
    method: str
    seed: int
    config: str
    overrides: dict
    out: str
    state: str = "new"
    detail: str = ""
    data_args: object = field(default=None, repr=False)
    expected: Optional[dict] = field(default=None, repr=False)  # its resolved configuration (runconfig.snapshot)
    lock: object = field(default=None, repr=False)  # its sweep_lock.RunLock while this process holds it

    @property
    def name(self):
        return f"{self.setting}/{self.method}/seed{self.seed}"

    @property
    def save_dir(self):
        return os.path.join(self.out, self.setting, self.method)

    @property
    def run_dir(self):
        return os.path.join(self.save_dir, f"seed{self.seed}")

    @property
    def log_path(self):
        return self.run_dir + ".log"

    def argv(self):
        """train.py's arguments for this run (without the resume/overwrite flag its state adds)."""
        values = dict(self.overrides)
        values.update(save_dir=self.save_dir, save_name=f"seed{self.seed}", seed=self.seed,
                      wandb_group=self.setting, wandb_tags=self.method)
        argv = ["--c", self.config]
        for key, value in values.items():
            argv += [f"--{key}"] + _tokens(value)
        return argv

    def state_argv(self):
        return self.argv() + (["--resume", "True"] if self.state == "resume" else ["--overwrite", "True"])

    def command(self):
        """train.py's command line for this run in its state."""
        return [sys.executable, TRAIN_PY] + self.state_argv()


def _tokens(value):
    """Command-line tokens of a YAML value: True/False/None as train.py reads them, a list as several tokens."""
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def duration(seconds):
    """``1h02m03s`` or ``2m03s``."""
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def progress(run, total, status, seconds=None, result=""):
    """The progress line of a run: ``[index/total] name status time result``."""
    took = duration(seconds) if seconds is not None else "-"
    print(f"[{run.index}/{total}] {run.name:<40} {status:<9} {took:>9}  {result}".rstrip(), flush=True)


def host_name():
    import socket

    return socket.gethostname()


def result_text(run_dir):
    """``best@400 52.00/31.81 last@400 51.33/30.02 (mixture)`` from results.json, overall/mean class acc (on the
    run's test set when it has one, as the leaderboard reports it)."""
    path = os.path.join(run_dir, "results.json")
    if not os.path.exists(path):
        return "no results.json"
    from ..results import reported_heads

    res = read_json(path, "sweep")
    head = res["primary_head"]
    parts = []
    for which in ("best", "last"):
        entry = res.get(which)
        if entry:
            r = reported_heads(entry)[head]
            parts.append(f"{which}@{entry['it']} {r['overall_acc']:.2f}/{r['mean_class_acc']:.2f}")
    return " ".join(parts) + f" ({head}, overall/mean class %)"


#: what results.json records of a run made before config.json existed
_RESULT_FIELDS = ("algorithm", "imb_algorithm", "dataset", "seed", "num_labels", "lb_imb_ratio", "num_train_iter")


def inspect(run, expected):
    """('done' | 'resume' | 'new' | 'stale', detail) for a run whose resolved configuration is ``expected``."""
    found = runconfig.read_config(run.run_dir, "sweep")
    results_path = os.path.join(run.run_dir, "results.json")
    finished = os.path.exists(results_path)
    checkpointed = os.path.exists(os.path.join(run.run_dir, "latest_model.pth"))
    if found is not None:
        diffs = runconfig.differences(expected, found)
    elif finished:
        recorded = read_json(results_path, "sweep")
        diffs = [f"{k}: {recorded.get(k)!r} -> {expected.get(k)!r}" for k in _RESULT_FIELDS
                 if recorded.get(k) != expected.get(k)]
    else:
        diffs = []
    if diffs and (finished or checkpointed):
        return "stale", ", ".join(diffs)
    if finished:
        return "done", ""
    if checkpointed:
        return "resume", ""
    return "new", ""


def claim(run, total, job=None, stale_after=None):
    """Lock the run and inspect it again (another worker may have finished it since the plan was made). True when
    this process is now to train it (``run.state`` is then ``new`` or ``resume``); else a line says why not."""
    lock, holder = sweep_lock.try_lock(run.run_dir, job=job, **({} if stale_after is None
                                                                 else {"stale_after": stale_after}))
    if lock is None:
        progress(run, total, "busy", None, f"running elsewhere: {sweep_lock.describe(holder)}")
        return False
    run.lock = lock
    if run.expected is not None:
        state, detail = inspect(run, run.expected)
        if state == "done" or (state == "stale" and run.state != "new"):
            lock.release()
            run.lock = None
            progress(run, total, "skipped", None, "finished by another worker: " + result_text(run.run_dir)
                  if state == "done" else f"made meanwhile with another configuration ({detail})")
            return False
        if state != "stale":  # stale and state "new": --rerun_stale, train afresh
            run.state = state
    if lock.record.get("taken_over"):
        print(f"[remop-usb sweep] {run.name}: took over a stale lock ({lock.record['taken_over']})", flush=True)
    return True


def open_log(run, job=None, gpu=None):
    """The run's log (appended), with a first line naming the attempt: time, state, host, pid, job, GPU, command."""
    os.makedirs(run.save_dir, exist_ok=True)
    log = open(run.log_path, "a", encoding="utf-8")
    on = f" CUDA_VISIBLE_DEVICES={gpu}" if gpu is not None else ""
    log.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {run.state} on {host_name()} pid {os.getpid()}"
              f"{f' job {job}' if job else ''}{on}: {shlex.join(run.command())}\n")
    log.flush()
    return log


def finish(run, returncode, log=None):
    """Close an attempt: ``# <time> exit status N`` ends the log (read by ``--status``); the run's lock is let go."""
    close = log is None
    log = log or open(run.log_path, "a", encoding="utf-8")
    log.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {END_MARK} {returncode}\n")
    if close:
        log.close()
    if run.lock is not None:
        run.lock.release()
        run.lock = None


def prepare_demo_data(runs):
    """Write the synthetic demo data once, before runs that may start together need it."""
    from datasets_fer.usb import prepare_demo_data as prepare_one

    seen = set()
    for run in runs:
        args = run.data_args
        if run.state != "done" and getattr(args, "demo_data", False) and args.data_dir not in seen:
            seen.add(args.data_dir)
            prepare_one(args)


def write_plan(grid, grid_path, out, runs):
    """``DIR/sweep.json``: the grid's methods, settings, seeds and every run's folder (for the leaderboard and
    ``--status``); the job ids recorded by :func:`record_jobs` are kept."""
    def update(plan_file):
        plan_file.update({
            "grid": os.path.abspath(grid_path), "name": grid["name"],
            "methods": [{"name": m, "label": spec["label"]} for m, spec in grid["methods"].items()],
            "settings": list(grid["settings"]), "seeds": grid["seeds"],
            "runs": [{"setting": r.setting, "method": r.method, "seed": r.seed,
                      "dir": os.path.relpath(r.run_dir, out)} for r in runs]})

    _update_plan(out, update)


def record_jobs(out, entries):
    """Add ``{"run", "job_id", "launcher", "log", "submitted"}`` entries to ``sweep.json``'s ``jobs``."""
    _update_plan(out, lambda plan_file: plan_file.setdefault("jobs", []).extend(entries))


def _update_plan(out, change):
    """Read, change and atomically rewrite ``DIR/sweep.json`` under an flock (several sweeps of one host)."""
    import fcntl

    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, PLAN_FILE)
    with open(path + ".lock", "a") as guard:
        fcntl.flock(guard.fileno(), fcntl.LOCK_EX)
        plan_file = read_json(path, "sweep") if os.path.exists(path) else {}
        change(plan_file)
        write_json_atomic(path, plan_file, indent=2)
