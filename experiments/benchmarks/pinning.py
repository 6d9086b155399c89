"""Pin a whole benchmark process to one CPU core."""

from __future__ import annotations

import os


def pin_process(core: int) -> None:
    """Pin every thread of this process to `core`, like `taskset -c core` would.

    `os.sched_setaffinity(0, ...)` moves only the calling thread (and the threads it
    creates later); threads started at import time (XLA's and the BLAS thread pools) keep
    every core, so a "one core" measurement could use two. Threads created after this
    call inherit the affinity of their (pinned) creator."""
    if not hasattr(os, "sched_setaffinity"):
        raise ValueError("core: pinning needs os.sched_setaffinity (Linux); pass -1 to run unpinned.")
    if core not in os.sched_getaffinity(0):
        raise ValueError(f"core must be one of this process's cores {sorted(os.sched_getaffinity(0))}, got {core}.")
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), {core})
        except ProcessLookupError:  # a thread that ended meanwhile
            pass
