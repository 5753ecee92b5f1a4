"""remop-usb sweep: grid validation, the run plan, skipping finished runs, resuming, refusing stale runs."""

import json
import os

import pytest

from remop_usb.cli import main
from remop_usb.errors import UserError
from remop_usb.experiments.runs import inspect
from remop_usb.experiments.sweep import load_grid, plan

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, "config", "demo")


def write_grid(tmp_path, text):
    path = tmp_path / "grid.yaml"
    path.write_text(text)
    return str(path)


GRID = f"""
name: t
config: {DEMO}/{{method}}.yaml
overrides: {{num_workers: 0}}
methods:
  fixmatch: {{label: FixMatch}}
  remop_fixmatch: {{overrides: {{remop_beta: 0.3}}}}
settings:
  rafdb-N20-g10: {{num_labels: 20, lb_imb_ratio: 10}}
  rafdb-N30-g5: {{num_labels: 30, lb_imb_ratio: 5}}
seeds: [0, 1]
"""


def test_plan_every_method_setting_and_seed(tmp_path):
    grid = load_grid(write_grid(tmp_path, GRID))
    runs = plan(grid, "grid.yaml", str(tmp_path / "out"))
    assert [r.name for r in runs][:3] == ["rafdb-N20-g10/fixmatch/seed0", "rafdb-N20-g10/fixmatch/seed1",
                                          "rafdb-N20-g10/remop_fixmatch/seed0"]
    assert len(runs) == 8 and [r.index for r in runs] == list(range(1, 9))
    remop = runs[6]
    assert remop.name == "rafdb-N30-g5/remop_fixmatch/seed0"
    assert remop.config == os.path.join(DEMO, "remop_fixmatch.yaml")
    assert remop.run_dir == str(tmp_path / "out" / "rafdb-N30-g5" / "remop_fixmatch" / "seed0")
    argv = remop.argv()
    flags = dict(zip(argv[::2], argv[1::2]))
    assert flags["--c"] == remop.config
    assert (flags["--remop_beta"], flags["--num_labels"], flags["--lb_imb_ratio"], flags["--num_workers"]) == \
        ("0.3", "30", "5", "0")
    assert (flags["--save_dir"], flags["--save_name"], flags["--seed"]) == \
        (os.path.join(str(tmp_path / "out"), "rafdb-N30-g5", "remop_fixmatch"), "seed0", "0")
    assert (flags["--wandb_group"], flags["--wandb_tags"]) == ("rafdb-N30-g5", "remop_fixmatch")


def test_set_overrides_every_run_over_the_grid(tmp_path, capsys):
    from remop_usb.experiments.sweep import parse_set

    extra = parse_set(["use_wandb=True", "remop_beta=0.7", "num_workers=2", "plugins=[a.b, c]"])
    assert extra == {"use_wandb": True, "remop_beta": 0.7, "num_workers": 2, "plugins": ["a.b", "c"]}
    runs = plan(load_grid(write_grid(tmp_path, GRID)), "grid.yaml", str(tmp_path / "out"), {"remop_beta": 0.7,
                                                                                           "num_workers": 2})
    flags = dict(zip(runs[6].argv()[::2], runs[6].argv()[1::2]))  # the method's 0.3 and the grid's 0 are overridden
    assert (flags["--remop_beta"], flags["--num_workers"], flags["--num_labels"]) == ("0.7", "2", "30")
    for bad, message in (("use_wandb", "--set expects KEY=VALUE"), ("seed=3", "--set sets 'seed', which the sweep"),
                         ("lr=[1, [2]]", "'lr' must be a value or a list of values")):
        with pytest.raises(UserError, match=message):
            parse_set([bad])
    assert main(["sweep", "--grid", write_grid(tmp_path, GRID), "--out", str(tmp_path / "o"), "--dry_run",
                 "--set", "use_wandb=True"]) == 0
    assert capsys.readouterr().out.count("--use_wandb True") == 8


@pytest.mark.parametrize("text,message", [
    ("methods: {a: {}}\nsettings: {s: {}}\nseeds: [0]\nconfig: x.yaml\nseedz: 1\n",
     "grid.yaml:5: unknown grid key 'seedz'"),
    ("methods: {a: {}}\nsettings: {s: {seed: 3}}\nseeds: [0]\nconfig: x.yaml\n",
     "setting 's' sets 'seed', which the sweep sets"),
    ("methods: {a: {}}\nsettings: {s: {}}\nseeds: [0, 0]\nconfig: x.yaml\n", "seeds must be a list of distinct"),
    ("methods: {a: {}}\nsettings: {s: {}}\nseeds: [0]\n", "method 'a' has no config"),
    ("methods: {a: {}}\nsettings: {}\nseeds: [0]\nconfig: x.yaml\n", "needs a non-empty 'settings'"),
    ("methods: {a: {lable: x}}\nsettings: {s: {}}\nseeds: [0]\nconfig: x.yaml\n", "unknown key 'lable'"),
])
def test_grid_errors_name_the_problem(tmp_path, text, message):
    with pytest.raises(UserError, match=message):
        load_grid(write_grid(tmp_path, text))


def test_missing_config_files_are_listed(tmp_path, capsys):
    path = write_grid(tmp_path, "config: cfg/{method}_{setting}.yaml\nmethods: {a: null, b: null}\n"
                                "settings: {s: {}}\nseeds: [0]\n")
    assert main(["sweep", "--grid", path, "--out", str(tmp_path / "o"), "--dry_run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "config files not found" in err[0]
    assert str(tmp_path / "cfg" / "a_s.yaml") in err[0] and str(tmp_path / "cfg" / "b_s.yaml") in err[0]


def test_an_unknown_training_key_stops_the_sweep_before_any_run(tmp_path, capsys):
    path = write_grid(tmp_path, GRID.replace("{num_workers: 0}", "{num_wrokers: 0}"))
    assert main(["sweep", "--grid", path, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "run rafdb-N20-g10/fixmatch/seed0" in err[0] and "num_wrokers" in err[0]
    assert not (tmp_path / "o").exists()


def test_inspect_done_resume_new_stale(tmp_path):
    grid = load_grid(write_grid(tmp_path, GRID))
    run = plan(grid, "grid.yaml", str(tmp_path / "out"))[0]
    expected = {"algorithm": "fixmatch", "lr": 0.001, "save_dir": "a", "num_workers": 0}
    assert inspect(run, expected) == ("new", "")
    os.makedirs(run.run_dir)
    with open(os.path.join(run.run_dir, "config.json"), "w") as f:
        json.dump(dict(expected, save_dir="elsewhere", num_workers=4), f)  # keys that do not change the result
    assert inspect(run, expected) == ("new", "")  # started, no checkpoint yet: train afresh
    open(os.path.join(run.run_dir, "latest_model.pth"), "w").close()
    assert inspect(run, expected) == ("resume", "")
    open(os.path.join(run.run_dir, "results.json"), "w").close()
    assert inspect(run, expected) == ("done", "")
    assert inspect(run, dict(expected, lr=0.01)) == ("stale", "lr: 0.001 -> 0.01")


def _lines(out):
    return [line for line in out.splitlines() if line[:1] == "[" and line[1:2].isdigit()]


def test_sweep_trains_skips_resumes_and_refuses_stale_runs(tiny_rafdb, tmp_path, capsys):
    grid = f"""
config: {DEMO}/{{method}}.yaml
overrides: {{data_dir: {tiny_rafdb}, img_size: 32, num_train_iter: 2, epoch: 1, num_eval_iter: 1, batch_size: 4,
             eval_batch_size: 64, num_workers: 0, device: cpu, diagnostics: False, plots: False,
             use_pretrain: False, demo_pretrain: False}}
methods:
  fixmatch: {{label: FixMatch}}
settings:
  rafdb-N20-g10: {{num_labels: 20, lb_imb_ratio: 10}}
seeds: [0, 1]
"""
    path, out = write_grid(tmp_path, grid), tmp_path / "out"
    argv = ["sweep", "--grid", path, "--out", str(out)]
    # two runs side by side, one per "GPU" slot (CPU here: CUDA_VISIBLE_DEVICES is set, device stays cpu)
    assert main(argv + ["--gpus", "0,1"]) == 0
    lines = _lines(capsys.readouterr().out)
    done = [line for line in lines if " done " in line]
    assert len(done) == 2 and all("best@" in line and "last@2" in line for line in done)
    runs = [out / "rafdb-N20-g10" / "fixmatch" / f"seed{s}" for s in (0, 1)]
    for seed, run in enumerate(runs):
        res = json.loads((run / "results.json").read_text())
        assert res["seed"] == seed and res["num_labels"] == 20 and res["last"]["it"] == 2
    visible = sorted(open(str(r) + ".log").readline().split("CUDA_VISIBLE_DEVICES=")[1][0] for r in runs)
    assert visible == ["0", "1"]
    plan_file = json.loads((out / "sweep.json").read_text())
    assert plan_file["methods"] == [{"name": "fixmatch", "label": "FixMatch"}] and plan_file["seeds"] == [0, 1]

    # finished runs are skipped
    assert main(argv) == 0
    lines = _lines(capsys.readouterr().out)
    assert len(lines) == 2 and all(" skipped " in line and "finished earlier" in line for line in lines)

    # an interrupted run (checkpoint, no results) is resumed
    os.remove(runs[1] / "results.json")
    assert main(argv) == 0
    lines = _lines(capsys.readouterr().out)
    assert " skipped " in lines[0] and any("resuming" in line for line in lines) and " done " in lines[-1]
    assert "--resume True" in open(str(runs[1]) + ".log").read()
    assert (runs[1] / "results.json").exists()

    # a changed grid meets runs of the old configuration: refused, named, nothing started
    changed = write_grid(tmp_path, grid.replace("num_workers: 0", "num_workers: 0, lr: 0.002"))
    assert main(["sweep", "--grid", changed, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "2 run folder(s)" in err[0] and "lr: 0.0001 -> 0.002" in err[0]
    assert main(["sweep", "--grid", changed, "--out", str(out), "--dry_run", "--rerun_stale"]) == 0
    out_text = capsys.readouterr().out
    assert out_text.count(": new (rerun: was made with lr: 0.0001 -> 0.002)") == 2, out_text


def test_bad_gpu_list(tmp_path, capsys):
    assert main(["sweep", "--grid", write_grid(tmp_path, GRID), "--out", str(tmp_path), "--gpus", "0,x"]) == 2
    assert "--gpus expects distinct GPU indices" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(n[:-5] for n in os.listdir(os.path.join(REPO, "config", "grids"))))
def test_every_grid_names_existing_config_files(name):
    """The table grids name rows and columns of config/paper (remop_usb/paper_configs.py); a renamed method or
    setting there fails here."""
    path = os.path.join(REPO, "config", "grids", f"{name}.yaml")
    grid = load_grid(path)
    runs = plan(grid, path, "/nonexistent")
    assert len(runs) == len(grid["methods"]) * len(grid["settings"]) * len(grid["seeds"])
    assert all(os.path.isfile(r.config) for r in runs)


def test_a_setting_may_name_its_own_config_template(tmp_path):
    """Precedence of the config template: the method's own, else the setting's (not a key of its runs), else the
    grid's; a method left with none for some setting is named in one line."""
    (tmp_path / "grid.yaml").write_text(
        "config: g/{method}_{setting}.yaml\n"
        "methods: {a: {}, b: {config: 'm/{method}.yaml'}}\n"
        "settings: {s3: {config: 't3/{method}_{setting}.yaml', num_labels: 5}, s0: {}}\nseeds: [0]\n")
    path = str(tmp_path / "grid.yaml")
    for rel in ("t3/a_s3.yaml", "g/a_s0.yaml", "m/b.yaml"):
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        (tmp_path / rel).write_text("algorithm: fixmatch\n")
    grid = load_grid(path)
    assert grid["settings"]["s3"] == {"num_labels": 5}
    configs = {(r.method, r.setting): os.path.relpath(r.config, tmp_path) for r in plan(grid, path, "/nonexistent")}
    assert configs == {("a", "s3"): "t3/a_s3.yaml", ("a", "s0"): "g/a_s0.yaml",
                       ("b", "s3"): "m/b.yaml", ("b", "s0"): "m/b.yaml"}
    (tmp_path / "grid.yaml").write_text("methods: {a: {}}\nsettings: {s3: {config: t3/x.yaml}, s0: {}}\nseeds: [0]\n")
    with pytest.raises(UserError, match="method 'a' has no config, and neither has the grid nor setting 's0'"):
        load_grid(path)


# -- stopping and locking -----------------------------------------------------------------------------------------

FAKE_TRAIN = """
import os, signal, sys, time
save_dir = sys.argv[sys.argv.index("--save_dir") + 1]
name = sys.argv[sys.argv.index("--save_name") + 1]
def stopped(signum, frame):
    with open(os.path.join(save_dir, name + ".signal"), "w") as f:
        f.write(signal.Signals(signum).name)
    sys.exit(128 + signum)
for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
    signal.signal(s, stopped)
with open(os.path.join(save_dir, name + ".pid"), "w") as f:
    f.write(str(os.getpid()))
time.sleep(60)
"""

SWEEP = """
import sys
import remop_usb.experiments.runs as runs
import remop_usb.experiments.sweep as s
runs.TRAIN_PY = sys.argv[1]
out = sys.argv[2]
runs = [s.Run(i + 1, "set", "m", i, "unused.yaml", {}, out) for i in range(2)]
sys.exit(s.run_all(runs, ["0", "1"]))
"""


def _wait_for(paths, proc, seconds=60):
    import time

    deadline = time.time() + seconds
    while not all(os.path.exists(p) for p in paths):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.1)


@pytest.mark.parametrize("signum", ["SIGTERM", "SIGHUP"])
def test_a_stop_signal_stops_the_running_children_and_another_worker_passes_their_runs_over(tmp_path, capsys,
                                                                                            signum):
    import signal
    import socket
    import subprocess
    import sys

    from remop_usb.experiments.runs import Run, claim

    signum = getattr(signal, signum)
    (tmp_path / "train.py").write_text(FAKE_TRAIN)
    out = tmp_path / "out"
    run_dir = out / "set" / "m"
    sweep = subprocess.Popen([sys.executable, "-c", SWEEP, str(tmp_path / "train.py"), str(out)], cwd=REPO,
                             env={**os.environ, "PYTHONPATH": REPO}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        _wait_for([run_dir / "seed0.pid", run_dir / "seed1.pid"], sweep)
        children = [int((run_dir / f"seed{k}.pid").read_text()) for k in (0, 1)]
        for k in (0, 1):  # each run's lock names the sweep that holds it
            holder = json.loads((run_dir / f"seed{k}.lock").read_text())
            assert (holder["host"], holder["pid"], holder["job"]) == (socket.gethostname(), sweep.pid, "local")

        # another worker on the same folder passes the held run over, naming its holder
        assert not claim(Run(1, "set", "m", 0, "unused.yaml", {}, str(out)), 2)
        line = capsys.readouterr().out.strip()
        assert " busy " in line and f"running elsewhere: host {socket.gethostname()} pid {sweep.pid}, job local" \
            in line, line

        sweep.send_signal(signum)
        stdout, stderr = sweep.communicate(timeout=60)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert sweep.returncode == 128 + signum
    name = signal.Signals(signum).name
    assert stderr.splitlines() == [f"[remop-usb sweep] stopped by {name} (its train.py processes too); the same "
                                   f"command resumes the unfinished runs"]
    for k, pid in enumerate(children):
        assert (run_dir / f"seed{k}.signal").read_text() == name  # the signal was forwarded to each child
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # ... which was waited for
        assert not (run_dir / f"seed{k}.lock").exists()  # ... and its lock let go
        assert (run_dir / f"seed{k}.log").read_text().splitlines()[-1].endswith(f"exit status {128 + signum}")


def _dead_pid():
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _holder(host, pid, start=None):
    return json.dumps({"host": host, "pid": pid, "start": start, "since": 0, "job": None, "token": "t"}) + "\n"


def test_run_locks_stale_and_live(tmp_path):
    """A lock of a gone process of this host, or an unreadable one, is taken over at once; a lock of another host
    only once its heartbeat is older than stale_after; a live holder of this host keeps it."""
    import socket

    from remop_usb.experiments.sweep_lock import try_lock

    run_dir, lock = tmp_path / "seed0", tmp_path / "seed0.lock"
    here = socket.gethostname()
    for content in (_holder(here, _dead_pid()), "", "not a lock", _holder(here, os.getpid(), start=1)):
        lock.write_text(content)  # the last: this pid, but a process started at another time (a reused pid)
        held, holder = try_lock(run_dir, job="j")
        assert holder is None and held.record["taken_over"], content
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        held.release()
        assert not lock.exists()

    lock.write_text(_holder("elsewhere", 1))  # another host, heartbeat just now
    held, holder = try_lock(run_dir, stale_after=600)
    assert held is None and holder["host"] == "elsewhere"
    os.utime(lock, (0, 1000))  # ... silent since 1970
    held, holder = try_lock(run_dir, stale_after=600)
    assert holder is None and "no heartbeat from elsewhere" in held.record["taken_over"]
    held.release()
    assert sorted(os.listdir(tmp_path)) == []  # no temporaries left


def test_a_lock_held_by_a_live_process_is_refused_and_taken_over_when_it_is_killed(tmp_path):
    import signal
    import subprocess
    import sys

    from remop_usb.experiments.sweep_lock import try_lock

    holder_code = ("import sys, time\nfrom remop_usb.experiments.sweep_lock import try_lock\n"
                   "print(try_lock(sys.argv[1])[0] is not None, flush=True)\ntime.sleep(60)\n")
    other = subprocess.Popen([sys.executable, "-c", holder_code, str(tmp_path / "seed0")], cwd=REPO,
                             stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": REPO})
    try:
        assert other.stdout.readline().strip() == "True"
        held, holder = try_lock(tmp_path / "seed0")
        assert held is None and holder["pid"] == other.pid
    finally:
        other.send_signal(signal.SIGKILL)  # dies without letting go: its lock file stays
        other.wait()
    assert (tmp_path / "seed0.lock").exists()
    held, holder = try_lock(tmp_path / "seed0")
    assert f"process {other.pid} on this host is gone" == held.record["taken_over"]
    held.release()
