"""``remop-usb sweep --status DIR``: one line per run of the sweep in ``DIR`` (its ``sweep.json``).

======================  ==================================================================================
state                   when
======================  ==================================================================================
done                    ``results.json`` exists (the result line follows)
running                 its lock is held by a live worker (host, pid, job and since when)
failed                  its last attempt ended with a non-zero exit status (not a checkpoint-and-stop); the
                        last line of its log follows
resumable               ``latest_model.pth`` exists and nothing runs it (stopped, preempted, killed)
not started             none of these (a run killed before its first checkpoint starts afresh)
======================  ==================================================================================

A lock left by a worker that is gone is reported with the run's state and "stale lock" (the next worker takes it
over, see :mod:`.sweep_lock`).
"""

from __future__ import annotations

import os

from ..errors import UserError
from ..fileio import read_json
from .runs import END_MARK, PLAN_FILE, result_text


def _log_tail(log_path):
    """(exit status of the last attempt or None while unknown, last line of the log that is not a ``#`` line)."""
    try:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            lines = [line.rstrip("\n") for line in f if line.strip()]
    except FileNotFoundError:
        return None, ""
    status = None
    for line in reversed(lines):
        if line.startswith("# ") and f" {END_MARK} " in line:
            text = line.rsplit(END_MARK, 1)[1].strip()
            status = int(text) if text.lstrip("-").isdigit() else text
            break
        if line.startswith("# "):  # an attempt that started and never wrote its end
            break
    last = next((line for line in reversed(lines) if not line.startswith("# ")), "")
    return status, last.strip()


def run_state(out, entry):
    """(state, detail) of one run of ``sweep.json``'s ``runs``."""
    from . import sweep_lock
    from ..stopping import CHECKPOINTED_STATUS

    run_dir = os.path.join(out, entry["dir"])
    if os.path.exists(os.path.join(run_dir, "results.json")):
        return "done", result_text(run_dir)
    holder = sweep_lock.read_holder(sweep_lock.lock_path(run_dir))
    stale = ""
    if holder is not None:
        reason = sweep_lock.stale_reason(holder)
        if reason is None:
            return "running", sweep_lock.describe(holder)
        stale = f"; stale lock ({reason})"
    status, last = _log_tail(run_dir + ".log")
    if status not in (None, 0, CHECKPOINTED_STATUS):
        return "failed", f"exit status {status}: {last}{stale}"
    if os.path.exists(os.path.join(run_dir, "latest_model.pth")):
        why = "checkpointed on SIGUSR2" if status == CHECKPOINTED_STATUS else "interrupted"
        return "resumable", f"{why}{stale}"
    return "not started", stale.lstrip("; ")


def status_rows(out):
    path = os.path.join(out, PLAN_FILE)
    if not os.path.isfile(path):
        raise UserError(f"sweep --status: {out} holds no sweep.json (expected the --out folder of a sweep)")
    plan_file = read_json(path, "sweep")
    jobs = {}
    for job in plan_file.get("jobs", []):
        jobs[job["run"]] = job["job_id"]  # the last submission of each run
    rows = []
    for entry in plan_file.get("runs", []):
        state, detail = run_state(out, entry)
        name = f"{entry['setting']}/{entry['method']}/seed{entry['seed']}"
        rows.append((name, state, jobs.get(entry["dir"], "-"), detail))
    return plan_file.get("name", os.path.basename(out)), rows


def print_status(out):
    name, rows = status_rows(out)
    width = max([len("run")] + [len(r[0]) for r in rows])
    job_width = max([len("job")] + [len(str(r[2])) for r in rows])
    print(f"{'run':<{width}}  {'state':<11}  {'job':<{job_width}}  detail")
    for run, state, job, detail in rows:
        print(f"{run:<{width}}  {state:<11}  {str(job):<{job_width}}  {detail}".rstrip())
    counts = {}
    for row in rows:
        counts[row[1]] = counts.get(row[1], 0) + 1
    print(f"[remop-usb sweep] {name}: {len(rows)} runs: "
          + ", ".join(f"{counts[s]} {s}" for s in ("done", "running", "resumable", "failed", "not started")
                      if s in counts))
    return 0
