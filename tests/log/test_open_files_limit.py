"""Opening a log raises the process's soft limit on open files to the hard one (issue 17)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path


def test_opening_a_store_raises_the_soft_limit(tmp_path: Path) -> None:
    # In a child process: the limit is the process's own, and this one's must stay as it is.
    script = textwrap.dedent(f"""
        import resource
        from millpond.log import LogStore
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        low = 256 if hard == resource.RLIM_INFINITY else min(256, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
        store = LogStore({str(tmp_path / "log")!r})
        topic = store.create_topic("t", 400)  # a descriptor per segment: more than the lowered limit
        print(resource.getrlimit(resource.RLIMIT_NOFILE)[0], hard, low)
        store.close()
        LogStore({str(tmp_path / "log")!r}).close()
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    soft, hard, low = (int(x) for x in done.stdout.split())
    if hard > low:
        assert soft > low and soft >= min(hard, 1 << 20)
