"""Files that are either complete or absent: write to a temporary sibling, fsync, rename."""

import json
import os
import tempfile


def write_json_atomic(path, obj, **dump_kwargs) -> str:
    """Write ``obj`` as JSON to ``path`` atomically; a crash leaves the old file (or none), never half of one."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, **dump_kwargs)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
