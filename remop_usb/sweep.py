"""``remop-usb sweep --grid GRID.yaml --out DIR [--gpus 0,1] [--dry_run] [--rerun_stale]``.

Runs every (method, setting, seed) of a grid, each as its own ``python train.py ...`` process -- exactly the
one-command run, with flags on top of the method's config file -- into ``DIR/<setting>/<method>/seed<k>`` (its
console output in ``seed<k>.log`` beside that folder). Sequential by default; with ``--gpus 0,1`` one run per listed
GPU at a time (``CUDA_VISIBLE_DEVICES`` set for each).

Before anything starts, every run's configuration is resolved (so a bad key stops the sweep at once) and its folder
inspected (:mod:`remop_usb.runconfig`): a run whose ``results.json`` exists and whose ``config.json`` agrees with the
grid on every key that changes the result is skipped; one with ``latest_model.pth`` but no results is resumed
(``resume: True``); one made with another configuration is refused -- named with the keys that differ -- unless
``--rerun_stale`` starts it afresh. A progress line per run gives index/total, name, status, time and result.
``DIR/sweep.json`` records the grid's methods (with labels), settings and seeds, in order, for the leaderboard.

Stopping: Ctrl-C, SIGTERM or SIGHUP stops the running train.py processes (SIGTERM for Ctrl-C, the signal itself
otherwise), waits for them and exits with 128 + the signal and one line; the same command resumes. One sweep at a
time per ``DIR``: ``DIR/sweep.lock`` holds the running sweep's pid, and another sweep there refuses to start while
that process lives (an ``flock``, which the system releases when the process ends: a lock file left by a killed
sweep is taken over).

A grid (YAML; relative paths are relative to the grid file's folder)::

    name: table3
    config: ../table3/{method}_{setting}.yaml    # per-method file; {method}, {setting}, the setting's keys
    overrides: {num_workers: 4}                  # every run (flags on top of the config file)
    methods:                                     # rows, in order: name -> {label, config, overrides} or null
      supervised: {label: Vanilla}
      remop_fixmatch: {label: w/ ReMoP (Ours), overrides: {remop_beta: 0.5}}
    settings:                                    # columns, in order: name -> overrides
      rafdb-N2000-g50: {num_labels: 2000, lb_imb_ratio: 50}
    seeds: [0, 1, 2]

Precedence, lowest first: the config file < ``overrides`` < the method's < the setting's < ``--set KEY=VALUE`` <
what the sweep sets (``save_dir``, ``save_name``, ``seed``, ``wandb_group`` = the setting, ``wandb_tags`` = the method).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import io
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import IO, NamedTuple, Optional

from . import runconfig
from .errors import UserError, where
from .fileio import read_json, write_json_atomic

GRID_KEYS = ("name", "description", "config", "overrides", "methods", "settings", "seeds")
METHOD_KEYS = ("label", "config", "overrides")
SWEEP_OWNED = ("save_dir", "save_name", "seed", "resume", "load_path", "overwrite", "wandb_group", "wandb_tags")
PLAN_FILE = "sweep.json"
LOCK_FILE = "sweep.lock"
#: signals that stop a sweep like Ctrl-C: forwarded to the running train.py processes, which are waited for
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
#: seconds a stopped train.py is given to exit before it is killed
STOP_TIMEOUT = 60.0
TRAIN_PY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "train.py")


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
    from .config import read_yaml

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
        if not config:
            raise UserError(f"{at('methods')}: method '{name}' has no config and the grid no 'config' template")
        methods[str(name)] = {"label": str(spec.get("label", name)), "config": str(config),
                              "overrides": _check_overrides(spec.get("overrides"), f"method '{name}'", at("methods"))}
    settings = {str(name): _check_overrides(values, f"setting '{name}'", at("settings"))
                for name, values in _mapping(data["settings"], "settings", at("settings")).items()}
    for name in list(methods) + list(settings):
        if not name or "/" in name or name.startswith(".") or name.startswith("seed"):
            raise UserError(f"{where(path)}: '{name}' cannot name a folder (no '/', no leading '.' or 'seed')")
    return {"name": str(data.get("name", os.path.splitext(os.path.basename(path))[0])),
            "folder": os.path.dirname(os.path.abspath(path)),
            "overrides": _check_overrides(data.get("overrides"), "overrides", at("overrides")),
            "methods": methods, "settings": settings, "seeds": list(seeds)}


def _config_path(grid, method, setting, grid_path):
    template = grid["methods"][method]["config"]
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
    from .config import parse_args

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return parse_args(run.argv())
    except UserError as e:
        raise UserError(f"run {run.name}: {e}") from None
    except SystemExit:
        message = [line for line in err.getvalue().splitlines() if line.strip()]
        raise UserError(f"run {run.name}: {message[-1] if message else 'invalid arguments'}") from None


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


def inspect_all(runs, rerun_stale):
    for run in runs:
        args = resolve(run)
        run.data_args = args
        run.state, run.detail = inspect(run, runconfig.snapshot(args))
        if run.state == "stale" and rerun_stale:
            run.state, run.detail = "new", f"rerun: was made with {run.detail}"
    stale = [r for r in runs if r.state == "stale"]
    if stale:
        listed = "; ".join(f"{r.run_dir} ({r.detail})" for r in stale)
        raise UserError(f"sweep: {len(stale)} run folder(s) hold a run of another configuration: {listed}; "
                        f"delete them or pass --rerun_stale to train them afresh")


# -- running ----------------------------------------------------------------------------------------------------

def _duration(seconds):
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def result_text(run_dir):
    """``best@400 52.00/31.81 last@400 51.33/30.02 (mixture)`` from results.json, overall/mean class acc (on the
    run's test set when it has one, as the leaderboard reports it)."""
    path = os.path.join(run_dir, "results.json")
    if not os.path.exists(path):
        return "no results.json"
    from .results import reported_heads

    res = read_json(path, "sweep")
    head = res["primary_head"]
    parts = []
    for which in ("best", "last"):
        entry = res.get(which)
        if entry:
            r = reported_heads(entry)[head]
            parts.append(f"{which}@{entry['it']} {r['overall_acc']:.2f}/{r['mean_class_acc']:.2f}")
    return " ".join(parts) + f" ({head}, overall/mean class %)"


def _line(run, total, status, seconds=None, result=""):
    took = _duration(seconds) if seconds is not None else "-"
    print(f"[{run.index}/{total}] {run.name:<40} {status:<9} {took:>9}  {result}".rstrip(), flush=True)


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
    os.makedirs(run.save_dir, exist_ok=True)
    log = open(run.log_path, "a", encoding="utf-8")
    on = f" CUDA_VISIBLE_DEVICES={gpu}" if gpu is not None else ""
    command = run.command()
    log.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {run.state}{on}: {shlex.join(command)}\n")
    log.flush()
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
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
    for (those still running :data:`STOP_TIMEOUT` s after the signal are killed); further stop signals are ignored
    meanwhile."""
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
            a.log.close()


def execute(runs, gpus, poll_seconds=1.0):
    """Run the runs that are not done, at most one per GPU slot; returns the failed ones. A stop signal
    (:data:`STOP_SIGNALS`) starts nothing more and raises :class:`Stopped` within ``poll_seconds``; it, Ctrl-C or
    any error leaves no train.py running (:func:`_stop`)."""
    total, slots = len(runs), list(gpus) if gpus else [None]
    pending = [r for r in runs if r.state != "done"]
    for run in runs:
        if run.state == "done":
            _line(run, total, "skipped", None, "finished earlier: " + result_text(run.run_dir))
    active, failed, stop = {}, [], []
    try:
        with _handling(STOP_SIGNALS, lambda signum, frame: stop.append(signum)):
            while (pending or active) and not stop:
                while pending and len(active) < len(slots) and not stop:
                    gpu = next(s for s in slots if s not in {a.gpu for a in active.values()})
                    run = pending.pop(0)
                    active[run.index] = _start(run, gpu)
                    on = f" on GPU {gpu}" if gpu is not None else ""
                    _line(run, total, "started", None, f"{'resuming' if run.state == 'resume' else 'new'}{on}, "
                                                       f"log {run.log_path}")
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
    for index in [i for i, a in active.items() if a.proc.poll() is not None]:
        a = active.pop(index)
        a.log.close()
        took = time.time() - a.started
        if a.proc.returncode == 0:
            _line(a.run, total, "done", took, result_text(a.run.run_dir))
        else:
            failed.append(a.run)
            _line(a.run, total, "failed", took, f"exit status {a.proc.returncode}, see {a.run.log_path}")


# -- one sweep per output folder --------------------------------------------------------------------------------

def lock_owner(path):
    """The pid recorded in the lock file ``path``; None when there is none or it holds no pid."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def acquire_lock(out):
    """Hold an exclusive ``flock`` on ``out/sweep.lock`` -- released by the system when this process ends, however
    it ends, so a lock file left by a killed sweep is simply taken over -- and record this process's pid in it (for
    the message another sweep prints). Returns the lock, for :func:`release_lock`; a lock held by another process
    is a UserError naming its pid."""
    path = os.path.join(out, LOCK_FILE)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            owner = lock_owner(path)
            raise UserError(f"sweep: another sweep (pid {owner if owner else 'unknown'}) is running in {out} "
                            f"(lock {path}); wait for it to finish or stop it") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:  # not a file its previous holder removed while we waited to open it
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd, path


def release_lock(lock):
    """Remove the lock file, then let go of the lock."""
    fd, path = lock
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    os.close(fd)


@contextlib.contextmanager
def locked(out):
    """Hold ``out``'s sweep lock for the block; a folder made only for the lock is removed again."""
    made = not os.path.isdir(out)
    os.makedirs(out, exist_ok=True)
    lock = acquire_lock(out)
    try:
        yield lock[1]
    finally:
        release_lock(lock)
        if made:
            with contextlib.suppress(OSError):
                os.rmdir(out)  # only if empty


def _prepare_demo_data(runs):
    """Write the synthetic demo data once, before runs that may start together need it."""
    from datasets_fer.usb import prepare_demo_data as prepare

    seen = set()
    for run in runs:
        args = run.data_args
        if run.state != "done" and getattr(args, "demo_data", False) and args.data_dir not in seen:
            seen.add(args.data_dir)
            prepare(args)


def write_plan(grid, grid_path, out, runs):
    write_json_atomic(os.path.join(out, PLAN_FILE), {
        "grid": os.path.abspath(grid_path), "name": grid["name"],
        "methods": [{"name": m, "label": spec["label"]} for m, spec in grid["methods"].items()],
        "settings": list(grid["settings"]), "seeds": grid["seeds"],
        "runs": [{"setting": r.setting, "method": r.method, "seed": r.seed, "dir": os.path.relpath(r.run_dir, out)}
                 for r in runs]}, indent=2)


def parse_gpus(text):
    if text is None:
        return []
    gpus = [g.strip() for g in text.split(",")]
    if not gpus or not all(g.isdigit() for g in gpus) or len(set(gpus)) != len(gpus):
        raise UserError(f"--gpus expects distinct GPU indices separated by commas, e.g. 0,1; got '{text}'")
    return gpus


def build_parser():
    p = argparse.ArgumentParser(prog="remop-usb sweep", description="Run every (method, setting, seed) of a grid "
                                "as its own train.py process, skipping finished runs and resuming interrupted ones.")
    p.add_argument("--grid", required=True, help="grid YAML (see config/grids/)")
    p.add_argument("--out", required=True, help="folder of the runs: OUT/<setting>/<method>/seed<k>")
    p.add_argument("--gpus", default=None, help="run one run per listed GPU at a time, e.g. 0,1 (default: one "
                   "run at a time, CUDA_VISIBLE_DEVICES untouched)")
    p.add_argument("--dry_run", action="store_true", help="print each run's state and command; train nothing")
    p.add_argument("--rerun_stale", action="store_true", help="train afresh the run folders made with another "
                   "configuration (default: refuse)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                   help="a config key for every run, over the grid's (repeatable), e.g. --set use_wandb=True")
    return p


def main(argv=None):
    a = build_parser().parse_args(argv)
    gpus = parse_gpus(a.gpus)
    if not os.path.isfile(TRAIN_PY):
        raise UserError(f"sweep: {TRAIN_PY} not found (the sweep runs train.py from a checkout of remop-usb)")
    grid = load_grid(a.grid)
    runs = plan(grid, a.grid, a.out, parse_set(a.set))
    with contextlib.nullcontext() if a.dry_run else locked(a.out):  # a dry run writes nothing
        inspect_all(runs, a.rerun_stale)
        counts = {s: sum(r.state == s for r in runs) for s in ("done", "resume", "new")}
        print(f"[remop-usb sweep] {grid['name']}: {len(runs)} runs ({len(grid['methods'])} methods x "
              f"{len(grid['settings'])} settings x {len(grid['seeds'])} seeds): {counts['done']} finished, "
              f"{counts['resume']} to resume, {counts['new']} to train; "
              f"{'GPUs ' + ','.join(gpus) if gpus else 'one at a time'}", flush=True)
        if a.dry_run:
            for run in runs:
                note = f" ({run.detail})" if run.detail else ""
                print(f"[{run.index}/{len(runs)}] {run.name}: {run.state}{note}\n    {shlex.join(run.command())}")
            return 0
        write_plan(grid, a.grid, a.out, runs)
        _prepare_demo_data(runs)
        return run_all(runs, gpus)


def run_all(runs, gpus):
    """Execute the runs with SIGTERM / SIGHUP stopping them as Ctrl-C does; the exit status of the sweep (128 +
    the signal when stopped, with one line on stderr)."""
    started = time.time()
    try:
        failed = execute(runs, gpus)
    except (KeyboardInterrupt, Stopped) as err:
        signum = err.signum if isinstance(err, Stopped) else signal.SIGINT
        print(f"[remop-usb sweep] stopped by {signal.Signals(signum).name} (its train.py processes too); the same "
              f"command resumes the unfinished runs", file=sys.stderr)
        return 128 + signum
    print(f"[remop-usb sweep] {len(runs) - len(failed)}/{len(runs)} runs finished in "
          f"{_duration(time.time() - started)}" + (f"; failed: {', '.join(r.name for r in failed)}" if failed else ""))
    return 1 if failed else 0
