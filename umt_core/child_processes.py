"""Worker processes that end with their parent.

A `ProcessPoolExecutor` worker whose parent is killed (``kill -9``) would otherwise
wait for work forever. `die_with_parent` is the pool's initializer: on Linux the
kernel sends the worker SIGKILL when its parent exits (``PR_SET_PDEATHSIG``); where
that is not available a daemon thread polls the parent's pid.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def die_with_parent(parent: int) -> None:
    """Pool initializer (``initializer=die_with_parent, initargs=(os.getpid(),)``)."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
                if os.getppid() != parent:  # the parent died before prctl took effect
                    os._exit(1)
                return
        except OSError:
            pass
    threading.Thread(target=_watch, args=(parent,), daemon=True).start()
