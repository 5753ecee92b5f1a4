"""``remop-usb sweep --grid GRID.yaml --out DIR [--launcher local|gpus|slurm] [--shard i/n] [--dry_run]``;
``remop-usb sweep --status DIR``.

Runs every (method, setting, seed) of a grid, each as its own ``python train.py ...`` process -- exactly the
one-command run, with flags on top of the method's config file -- into ``DIR/<setting>/<method>/seed<k>`` (its
console output in ``seed<k>.log`` beside that folder). Sequential by default; with ``--gpus 0,1`` one run per listed
GPU at a time (``CUDA_VISIBLE_DEVICES`` set for each).

Before anything starts, every run's configuration is resolved (so a bad key stops the sweep at once) and its folder
inspected (:func:`.runs.inspect`): a run whose ``results.json`` exists and whose ``config.json`` agrees with the
grid on every key that changes the result is skipped; one with ``latest_model.pth`` but no results is resumed
(``resume: True``); one made with another configuration is refused -- named with the keys that differ -- unless
``--rerun_stale`` starts it afresh. A progress line per run gives index/total, name, status, time and result.
``DIR/sweep.json`` records the grid's methods (with labels), settings and seeds, in order, for the leaderboard.

Stopping: Ctrl-C, SIGTERM or SIGHUP stops the running train.py processes (SIGTERM for Ctrl-C, the signal itself
otherwise), waits for them and exits with 128 + the signal and one line; the same command resumes.

Many workers, one folder: each run has its own lock, ``DIR/<setting>/<method>/seed<k>.lock`` (host, pid, job;
:mod:`.sweep_lock`), held while it trains. Any number of sweep processes -- on one machine or several sharing the
folder, with ``--shard i/n`` to split the runs statically, or SLURM array tasks (``--launcher slurm``,
:mod:`.launchers`) -- work on one ``DIR``: a run locked by a live worker is passed over ("busy"), and a run is
inspected again once locked, so none is trained twice. ``--status DIR`` prints each run's state.

A grid (YAML; relative paths are relative to the grid file's folder)::

    name: table3
    config: ../table3/{method}_{setting}.yaml    # per-method file; {method}, {setting}, the setting's keys
    overrides: {num_workers: 4}                  # every run (flags on top of the config file)
    methods:                                     # rows, in order: name -> {label, config, overrides} or null
      supervised: {label: Vanilla}
      remop_fixmatch: {label: w/ ReMoP (Ours), overrides: {remop_beta: 0.5}}
    settings:                                    # columns, in order: name -> overrides
      rafdb-N2000-g50: {num_labels: 2000, lb_imb_ratio: 50}
      ferplus_1000_150: {config: ../table4/{method}_{setting}.yaml}   # a setting's own template (not a run key)
    seeds: [0, 1, 2]

Precedence, lowest first: the config file < ``overrides`` < the method's < the setting's < ``--set KEY=VALUE`` <
what the sweep sets (``save_dir``, ``save_name``, ``seed``, ``wandb_group`` = the setting, ``wandb_tags`` = the method).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shlex
import signal
import subprocess
import sys
import time
from typing import IO, NamedTuple, Optional

from .. import runconfig
from ..errors import UserError, where
from .runs import (TRAIN_PY, Run, claim, duration, finish, inspect, open_log, prepare_demo_data, progress,
                   result_text, write_plan)

GRID_KEYS = ("name", "description", "config", "overrides", "methods", "settings", "seeds")
METHOD_KEYS = ("label", "config", "overrides")
SWEEP_OWNED = ("save_dir", "save_name", "seed", "resume", "load_path", "overwrite", "wandb_group", "wandb_tags")
#: signals that stop a sweep like Ctrl-C: forwarded to the running train.py processes, which are waited for
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
#: seconds a stopped train.py is given to exit before it is killed
STOP_TIMEOUT = 60.0


# -- the grid ---------------------------------------------------------------------------------------------------

def _mapping(value, what, origin):
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError(f"{origin}: {what} must be a mapping, got {type(value).__name__}")
    return value


def _check_overrides(values, what, origin):
    for key, value in _mapping(values, what, origin).items():
        if key in SWEEP_OWNED:
            raise UserError(f"{origin}: {what} sets '{key}', which the sweep sets for each run")
        if isinstance(value, dict) or (isinstance(value, list) and any(isinstance(v, (list, dict)) for v in value)):
            raise UserError(f"{origin}: {what}: '{key}' must be a value or a list of values")
    return dict(values or {})


def load_grid(path):
    """The validated grid: {name, config, overrides, methods: {name: {...}}, settings: {...}, seeds: [...]}."""
    from ..config import read_yaml

    data, lines = read_yaml(path)
    at = lambda key: where(path, lines.get(key))  # noqa: E731
    for key in data:
        if key not in GRID_KEYS:
            raise UserError(f"{at(key)}: unknown grid key '{key}' (expected: {', '.join(GRID_KEYS)})")
    for key in ("methods", "settings", "seeds"):
        if not data.get(key):
            raise UserError(f"{where(path)}: the grid needs a non-empty '{key}'")
    seeds = data["seeds"]
    if not isinstance(seeds, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds) \
            or len(set(seeds)) != len(seeds):
        raise UserError(f"{at('seeds')}: seeds must be a list of distinct integers, got {seeds!r}")
    methods = {}
    for name, spec in _mapping(data["methods"], "methods", at("methods")).items():
        spec = _mapping(spec, f"method '{name}'", at("methods"))
        for key in spec:
            if key not in METHOD_KEYS:
                raise UserError(f"{at('methods')}: method '{name}': unknown key '{key}' "
                                f"(expected: {', '.join(METHOD_KEYS)})")
        config = spec.get("config", data.get("config"))
        methods[str(name)] = {"label": str(spec.get("label", name)), "config": None if config is None else str(config),
                              "own_config": "config" in spec,
                              "overrides": _check_overrides(spec.get("overrides"), f"method '{name}'", at("methods"))}
    settings, setting_configs = {}, {}
    for name, values in _mapping(data["settings"], "settings", at("settings")).items():
        values = dict(_mapping(values, f"setting '{name}'", at("settings")))
        if "config" in values:  # the setting's own template (e.g. its table's folder), not a key of the runs
            setting_configs[str(name)] = str(values.pop("config"))
        settings[str(name)] = _check_overrides(values, f"setting '{name}'", at("settings"))
    for name, spec in methods.items():
        if "config" not in (data["methods"][name] or {}) and not data.get("config"):
            missing = [s for s in settings if s not in setting_configs]
            if missing:
                raise UserError(f"{at('methods')}: method '{name}' has no config, and neither has the grid nor "
                                f"setting '{missing[0]}'")
    for name in list(methods) + list(settings):
        if not name or "/" in name or name.startswith(".") or name.startswith("seed"):
            raise UserError(f"{where(path)}: '{name}' cannot name a folder (no '/', no leading '.' or 'seed')")
    return {"name": str(data.get("name", os.path.splitext(os.path.basename(path))[0])),
            "folder": os.path.dirname(os.path.abspath(path)), "setting_configs": setting_configs,
            "overrides": _check_overrides(data.get("overrides"), "overrides", at("overrides")),
            "methods": methods, "settings": settings, "seeds": list(seeds)}


def _config_path(grid, method, setting, grid_path):
    """The method's own template, else the setting's, else the grid's, filled for this cell."""
    spec = grid["methods"][method]
    template = spec["config"] if spec["own_config"] else grid["setting_configs"].get(setting, spec["config"])
    try:
        name = template.format(method=method, setting=setting, **grid["settings"][setting])
    except (KeyError, IndexError, ValueError) as err:
        raise UserError(f"{grid_path}: config template '{template}' of method '{method}' cannot be filled for "
                        f"setting '{setting}' ({err!r})") from None
    return os.path.normpath(os.path.join(grid["folder"], name))


def parse_set(items):
    """``--set KEY=VALUE`` options as overrides; each VALUE read as YAML (``True``, ``0.5``, ``[a, b]``)."""
    import yaml

    values = {}
    for item in items or ():
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"sweep: --set expects KEY=VALUE (e.g. --set use_wandb=True), got '{item}'")
        try:
            values[key.strip()] = yaml.safe_load(text)
        except yaml.YAMLError:
            raise UserError(f"sweep: --set {item}: the value is not a YAML value") from None
    return _check_overrides(values, "--set", "command line")


def plan(grid, grid_path, out, extra=None):
    """Every run of the grid; ``extra`` (``--set``) overrides on top of the grid's, for every run."""
    runs = []
    for setting in grid["settings"]:
        for method, spec in grid["methods"].items():
            for seed in grid["seeds"]:
                overrides = dict(grid["overrides"])
                overrides.update(spec["overrides"])
                overrides.update(grid["settings"][setting])
                overrides.update(extra or {})
                runs.append(Run(len(runs) + 1, setting, method, seed,
                                _config_path(grid, method, setting, grid_path), overrides, out))
    missing = sorted({r.config for r in runs if not os.path.isfile(r.config)})
    if missing:
        raise UserError(f"{grid_path}: config files not found: {', '.join(missing)}")
    return runs


# -- the state of each run --------------------------------------------------------------------------------------

def resolve(run):
    """The run's configuration as train.py will parse it (a bad key is a UserError naming the run)."""
    from ..config import parse_args

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return parse_args(run.argv())
    except UserError as e:
        raise UserError(f"run {run.name}: {e}") from None
    except SystemExit:
        message = [line for line in err.getvalue().splitlines() if line.strip()]
        raise UserError(f"run {run.name}: {message[-1] if message else 'invalid arguments'}") from None


def inspect_all(runs, rerun_stale):
    for run in runs:
        args = resolve(run)
        run.data_args, run.expected = args, runconfig.snapshot(args)
        run.state, run.detail = inspect(run, run.expected)
        if run.state == "stale" and rerun_stale:
            run.state, run.detail = "new", f"rerun: was made with {run.detail}"
    stale = [r for r in runs if r.state == "stale"]
    if stale:
        listed = "; ".join(f"{r.run_dir} ({r.detail})" for r in stale)
        raise UserError(f"sweep: {len(stale)} run folder(s) hold a run of another configuration: {listed}; "
                        f"delete them or pass --rerun_stale to train them afresh")


# -- running ----------------------------------------------------------------------------------------------------

class Active(NamedTuple):
    """A started run: its GPU slot, train.py process, open log and start time."""
    gpu: Optional[str]
    run: Run
    proc: subprocess.Popen
    log: IO[str]
    started: float


def _start(run, gpu):
    env = dict(os.environ)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    log = open_log(run, gpu=gpu)
    proc = subprocess.Popen(run.command(), stdout=log, stderr=subprocess.STDOUT, env=env)
    return Active(gpu, run, proc, log, time.time())


class Stopped(Exception):
    """The sweep received one of :data:`STOP_SIGNALS`."""

    def __init__(self, signum):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def _handling(signums, handler):
    """Run the block with ``handler`` for ``signums``, then restore the previous handlers."""
    previous = {s: signal.signal(s, handler) for s in signums}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _stop(active, err):
    """Stop the running train.py processes: the stop signal forwarded (SIGTERM for Ctrl-C or an error), all waited
    for (those still running :data:`STOP_TIMEOUT` s after the signal are killed), their locks let go; further stop
    signals are ignored meanwhile."""
    signum = err.signum if isinstance(err, Stopped) else signal.SIGTERM
    with _handling(STOP_SIGNALS + (signal.SIGINT,), signal.SIG_IGN):
        for a in active.values():
            if a.proc.poll() is None:
                a.proc.send_signal(signum)
        deadline = time.monotonic() + STOP_TIMEOUT  # for all of them together
        for a in active.values():
            try:
                a.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                a.proc.kill()
                a.proc.wait()
            finish(a.run, a.proc.returncode, a.log)
            a.log.close()


def execute(runs, gpus, poll_seconds=1.0, stale_after=None):
    """Run the runs that are not done, at most one per GPU slot, each under its lock (a run another worker holds is
    passed over); returns the failed ones. A stop signal (:data:`STOP_SIGNALS`) starts nothing more and raises
    :class:`Stopped` within ``poll_seconds``; it, Ctrl-C or any error leaves no train.py running (:func:`_stop`)."""
    total, slots = len(runs), list(gpus) if gpus else [None]
    pending = [r for r in runs if r.state != "done"]
    for run in runs:
        if run.state == "done":
            progress(run, total, "skipped", None, "finished earlier: " + result_text(run.run_dir))
    active, failed, stop = {}, [], []
    try:
        with _handling(STOP_SIGNALS, lambda signum, frame: stop.append(signum)):
            while (pending or active) and not stop:
                while pending and len(active) < len(slots) and not stop:
                    run = pending.pop(0)
                    if not claim(run, total, job="local", stale_after=stale_after):
                        continue
                    gpu = next(s for s in slots if s not in {a.gpu for a in active.values()})
                    active[run.index] = _start(run, gpu)
                    on = f" on GPU {gpu}" if gpu is not None else ""
                    progress(run, total, "started", None, f"{'resuming' if run.state == 'resume' else 'new'}{on}, "
                                                       f"log {run.log_path}")
                if active:
                    time.sleep(poll_seconds)
                _collect(active, failed, total)
            if stop:
                raise Stopped(stop[0])
    except BaseException as err:  # a stop signal, Ctrl-C, a closed stdout: no train.py is left running
        _stop(active, err)
        raise
    return failed


def _collect(active, failed, total):
    """Report the runs of ``active`` that have ended, removing them (the failed ones are added to ``failed``)."""
    from ..stopping import CHECKPOINTED_STATUS

    for index in [i for i, a in active.items() if a.proc.poll() is not None]:
        a = active.pop(index)
        finish(a.run, a.proc.returncode, a.log)
        a.log.close()
        took = time.time() - a.started
        if a.proc.returncode == 0:
            progress(a.run, total, "done", took, result_text(a.run.run_dir))
        else:
            failed.append(a.run)
            what = "checkpointed and stopped (SIGUSR2)" if a.proc.returncode == CHECKPOINTED_STATUS else \
                f"exit status {a.proc.returncode}"
            progress(a.run, total, "failed", took, f"{what}, see {a.run.log_path}")


# -- options, main -------------------------------------------------------------------------------------------

def parse_gpus(text):
    if text is None:
        return []
    gpus = [g.strip() for g in text.split(",")]
    if not gpus or not all(g.isdigit() for g in gpus) or len(set(gpus)) != len(gpus):
        raise UserError(f"--gpus expects distinct GPU indices separated by commas, e.g. 0,1; got '{text}'")
    return gpus


def parse_shard(text):
    """``--shard i/n`` -> (i, n), 0 <= i < n: this worker takes the runs whose index is i modulo n."""
    if text is None:
        return 0, 1
    i, sep, n = text.partition("/")
    if not sep or not i.strip().isdigit() or not n.strip().isdigit() or not 0 <= int(i) < int(n):
        raise UserError(f"--shard expects i/n with 0 <= i < n (e.g. 0/2 and 1/2 for two workers), got '{text}'")
    return int(i), int(n)


def shard(runs, i, n):
    """The runs of shard ``i`` of ``n``: every n-th of the plan's order, from the i-th (0-based)."""
    return [r for r in runs if (r.index - 1) % n == i]


LAUNCHERS = ("local", "gpus", "slurm", "submitit_local")


def build_parser():
    from . import launchers

    p = argparse.ArgumentParser(prog="remop-usb sweep", description="Run every (method, setting, seed) of a grid "
                                "as its own train.py process, skipping finished runs and resuming interrupted ones.")
    p.add_argument("--grid", help="grid YAML (see config/grids/)")
    p.add_argument("--out", help="folder of the runs: OUT/<setting>/<method>/seed<k>")
    p.add_argument("--status", metavar="DIR", help="print the state of every run of the sweep in DIR and exit")
    p.add_argument("--launcher", choices=LAUNCHERS, default=None,
                   help="local: one run at a time on this machine (default); gpus: one run per --gpus GPU; slurm: "
                        "one SLURM job-array task per pending run, through submitit; submitit_local: the slurm "
                        "launcher's tasks as processes of this machine (submitit's local executor)")
    p.add_argument("--gpus", default=None, help="run one run per listed GPU at a time, e.g. 0,1 (implies "
                   "--launcher gpus; default: one run at a time, CUDA_VISIBLE_DEVICES untouched)")
    p.add_argument("--shard", default=None, metavar="i/n", help="train only runs i, i+n, i+2n, ... of the plan "
                   "(0-based; e.g. 0/2 on one machine and 1/2 on another)")
    p.add_argument("--lock_timeout", type=float, default=None, metavar="MIN",
                   help="take over a run lock of another host whose heartbeat is older than this (default "
                        f"{launchers.STALE_AFTER_MIN:g} min; a dead process of this host is noticed at once)")
    p.add_argument("--dry_run", action="store_true", help="print each run's state and command (with --launcher "
                   "slurm: the sbatch script submitit would submit); train nothing")
    p.add_argument("--rerun_stale", action="store_true", help="train afresh the run folders made with another "
                   "configuration (default: refuse)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                   help="a config key for every run, over the grid's (repeatable), e.g. --set use_wandb=True")
    launchers.add_slurm_flags(p)
    return p


def _launcher(a, gpus):
    launcher = a.launcher or ("gpus" if gpus else "local")
    if launcher == "gpus" and not gpus:
        raise UserError("sweep: --launcher gpus needs --gpus, e.g. --gpus 0,1")
    if gpus and launcher != "gpus":
        raise UserError(f"sweep: --gpus applies to --launcher gpus, not {launcher}")
    return launcher


def main(argv=None):
    a = build_parser().parse_args(argv)
    if a.status:
        if a.grid or a.out:
            raise UserError("sweep: --status DIR takes no --grid / --out")
        from .sweep_status import print_status

        return print_status(a.status)
    if not a.grid or not a.out:
        raise UserError("sweep: --grid and --out are required (or --status DIR)")
    gpus = parse_gpus(a.gpus)
    launcher = _launcher(a, gpus)
    index, count = parse_shard(a.shard)
    stale_after = None if a.lock_timeout is None else 60.0 * a.lock_timeout
    if not os.path.isfile(TRAIN_PY):
        raise UserError(f"sweep: {TRAIN_PY} not found (the sweep runs train.py from a checkout of remop-usb)")
    grid = load_grid(a.grid)
    runs = plan(grid, a.grid, a.out, parse_set(a.set))
    mine = shard(runs, index, count)
    inspect_all(mine, a.rerun_stale)
    counts = {s: sum(r.state == s for r in mine) for s in ("done", "resume", "new")}
    how = {"local": "one at a time", "gpus": f"GPUs {','.join(gpus)}", "slurm": "SLURM job array",
           "submitit_local": "submitit local executor"}[launcher]
    part = f"; shard {index}/{count}: {len(mine)} runs" if count > 1 else ""
    print(f"[remop-usb sweep] {grid['name']}: {len(runs)} runs ({len(grid['methods'])} methods x "
          f"{len(grid['settings'])} settings x {len(grid['seeds'])} seeds){part}: {counts['done']} finished, "
          f"{counts['resume']} to resume, {counts['new']} to train; {how}", flush=True)
    if launcher in ("slurm", "submitit_local"):
        from . import launchers

        return launchers.launch(a, grid, runs, mine, launcher, stale_after)
    if a.dry_run:  # writes nothing
        for run in mine:
            note = f" ({run.detail})" if run.detail else ""
            print(f"[{run.index}/{len(runs)}] {run.name}: {run.state}{note}\n    {shlex.join(run.command())}")
        return 0
    write_plan(grid, a.grid, a.out, runs)
    prepare_demo_data(mine)
    return run_all(mine, gpus, stale_after)


def run_all(runs, gpus, stale_after=None):
    """Execute the runs with SIGTERM / SIGHUP stopping them as Ctrl-C does; the exit status of the sweep (128 +
    the signal when stopped, with one line on stderr)."""
    started = time.time()
    try:
        failed = execute(runs, gpus, stale_after=stale_after)
    except (KeyboardInterrupt, Stopped) as err:
        signum = err.signum if isinstance(err, Stopped) else signal.SIGINT
        print(f"[remop-usb sweep] stopped by {signal.Signals(signum).name} (its train.py processes too); the same "
              f"command resumes the unfinished runs", file=sys.stderr)
        return 128 + signum
    finished = [os.path.exists(os.path.join(r.run_dir, "results.json")) for r in runs]
    elsewhere = sum(not done and r not in failed for r, done in zip(runs, finished))
    finished = sum(finished)
    print(f"[remop-usb sweep] {finished}/{len(runs)} runs finished in {duration(time.time() - started)}"
          + (f"; failed: {', '.join(r.name for r in failed)}" if failed else "")
          + (f"; {elsewhere} running in another worker (remop-usb sweep --status {runs[0].out})" if elsewhere
             else ""))
    return 1 if failed else 0
