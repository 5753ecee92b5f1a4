"""One lock per run of a sweep, so that any number of sweep processes or SLURM array tasks share one output folder.

A run's lock is the file ``DIR/<setting>/<method>/seed<k>.lock`` beside its folder (the folder itself is replaced
when a run is trained afresh). It is created atomically -- written under a temporary name, then hard-linked to the
lock's name, which fails when the lock exists: atomic on local disks and on NFS alike, where ``flock`` may be only
host-local -- and holds one JSON line: host, pid, the process's start time, the time it was taken and the job
(SLURM job id or ``local``). While the run trains, its holder touches the file every :data:`HEARTBEAT_S` seconds.

A lock whose holder is gone is taken over:

* held on this host: its process is gone (no such pid, or the pid now belongs to a process started at another
  time) -- decided at once, so a sweep killed with SIGKILL never blocks the next one;
* held on another host: its heartbeat is older than ``stale_after`` seconds (``--lock_timeout`` minutes; default
  :data:`STALE_AFTER_S`): the pid of another machine cannot be checked, so only a lock not touched for that long
  counts as abandoned (a host that crashed, or a job that SLURM killed with SIGKILL).

Taking over renames the stale file away, checks that the renamed file is still the one judged stale (another
process may have taken it over in between: then it is put back) and creates a new lock.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid

#: seconds between two touches of a held lock
HEARTBEAT_S = 60.0
#: a lock of another host untouched this long is abandoned
STALE_AFTER_S = 600.0
SUFFIX = ".lock"


def lock_path(run_dir) -> str:
    return os.fspath(run_dir).rstrip(os.sep) + SUFFIX


def _process_start(pid):
    """The start time of process ``pid`` in clock ticks since boot (Linux /proc), None where unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _alive(pid, start) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # a live process of another user
    now_start = _process_start(pid)
    return start is None or now_start is None or now_start == start


def read_holder(path):
    """The holder recorded in the lock ``path`` (a dict with ``mtime`` added); None when there is no lock, a dict
    without ``host`` when the file cannot be read as a lock."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        mtime = os.stat(path).st_mtime
    except FileNotFoundError:
        return None
    try:
        holder = json.loads(text)
        if not isinstance(holder, dict):
            raise ValueError
    except ValueError:
        holder = {"raw": text}
    holder["mtime"] = mtime
    return holder


def stale_reason(holder, stale_after=STALE_AFTER_S, now=None):
    """Why the lock of ``holder`` is abandoned (a phrase), or None while its holder may be running."""
    if "host" not in holder or "pid" not in holder:
        return "unreadable lock file"
    age = (time.time() if now is None else now) - holder["mtime"]
    if holder["host"] == socket.gethostname():
        if not _alive(int(holder["pid"]), holder.get("start")):
            return f"process {holder['pid']} on this host is gone"
        return None
    if age > stale_after:
        return f"no heartbeat from {holder['host']} for {age / 60:.0f} min (over {stale_after / 60:g})"
    return None


def describe(holder) -> str:
    """``host gpu-12 pid 4242, job 1234_5, since 18:02:11``."""
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", holder["mtime"])))
    job = f", job {holder['job']}" if holder.get("job") else ""
    return f"host {holder['host']} pid {holder['pid']}{job}, since {since}"


class _Heartbeat:
    """One daemon thread per process touching every lock it holds."""

    def __init__(self):
        self.paths, self.guard, self.thread = set(), threading.Lock(), None

    def add(self, path):
        with self.guard:
            self.paths.add(path)
            if self.thread is None:
                self.thread = threading.Thread(target=self._beat, name="remop-usb-lock-heartbeat", daemon=True)
                self.thread.start()

    def discard(self, path):
        with self.guard:
            self.paths.discard(path)

    def _beat(self):
        while True:
            time.sleep(HEARTBEAT_S)
            with self.guard:
                paths = list(self.paths)
            for path in paths:
                try:
                    os.utime(path)
                except OSError:
                    pass


_HEARTBEAT = _Heartbeat()


class RunLock:
    """A held run lock; :meth:`release` removes it (only if it is still this one)."""

    def __init__(self, path, record):
        self.path, self.record = path, record

    def release(self):
        _HEARTBEAT.discard(self.path)
        holder = read_holder(self.path)
        if holder is not None and holder.get("token") == self.record["token"]:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


def _create(path, record) -> bool:
    """Create the lock with ``record`` atomically; False when it exists."""
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)


def _take_over(path, judged) -> bool:
    """Move the stale lock ``judged`` away; False when the file there is no longer that one."""
    aside = f"{path}.{uuid.uuid4().hex}.stale"
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return True  # its holder released it meanwhile
    moved = read_holder(aside) or {}
    if {k: v for k, v in moved.items() if k != "mtime"} != {k: v for k, v in judged.items() if k != "mtime"}:
        try:  # another process took it over in between: put its lock back
            os.link(aside, path)
        except FileExistsError:
            pass
        os.unlink(aside)
        return False
    os.unlink(aside)
    return True


def try_lock(run_dir, job=None, stale_after=STALE_AFTER_S):
    """``(RunLock, None)`` when this process now holds the run's lock, else ``(None, holder)`` of the live holder.
    A stale lock is taken over (``holder['taken_over']`` of the returned lock's record says from whom)."""
    path = lock_path(run_dir)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    record = {"host": socket.gethostname(), "pid": os.getpid(), "start": _process_start(os.getpid()),
              "since": time.time(), "job": job, "token": uuid.uuid4().hex}
    for _ in range(5):
        if _create(path, record):
            _HEARTBEAT.add(path)
            return RunLock(path, record), None
        holder = read_holder(path)
        if holder is None:
            continue  # released between our attempt and the read
        reason = stale_reason(holder, stale_after)
        if reason is None:
            return None, holder
        if not _take_over(path, holder):
            return None, read_holder(path) or holder
        record["taken_over"] = reason
    return None, read_holder(path) or {"host": "?", "pid": "?", "mtime": time.time()}
