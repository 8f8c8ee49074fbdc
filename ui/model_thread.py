"""One thread for the app's model work, with every other thread's torch single-threaded (issue 13).

Why: torch's CPU kernels run on OpenMP (libgomp), which keeps one team of worker threads per
thread that ever ran a parallel region, for as long as that thread lives. Gradio runs each
streamed chunk on whichever of its worker threads is free, so the app soon held several teams,
more OpenMP threads than cores, and libgomp then stops spinning between parallel regions: the
model's thousands of small kernels per forward each paid a sleep and a wake-up. On the 2-core
machine a second live team made every thread, the first one included, ~1.7x slower on
small kernels, using 1.3 of the 2 cores (`bench/omp_teams.py`); through the API a
whole-configuration change went from 5.23 to 3.96 s p50 with this module (docs/benchmarks.md,
"One model thread").

So `start()` (app.py calls it first, before torch runs anything) makes the calling thread and
every thread started later compute single-threaded, and starts one model thread with the
process's torch thread count. `run(fn, ...)` runs `fn` there and waits for it; the Engine runs
each evaluation chunk through it (ui/engine.py), so one team does all the heavy work. Work on
other threads (a GP refit, a prediction) stays correct, only single-threaded. Before `start()`,
or called from the model thread itself, `run` calls `fn` inline: the library, the tests and the
command line never start it.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

T = TypeVar("T")

_executor: ThreadPoolExecutor | None = None
_thread: threading.Thread | None = None
_lock = threading.Lock()


def start() -> int:
    """Start the model thread (idempotent) -> its torch thread count. Call it before torch has
    run a parallel region on the calling thread (an OpenMP team, once made, stays)."""
    global _executor, _thread
    import torch

    with _lock:
        if _executor is not None:
            return _executor.submit(torch.get_num_threads).result()
        n = torch.get_num_threads()
        torch.set_num_threads(1)  # this thread: no team of its own
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="coalora-model")

        def init() -> tuple[threading.Thread, int]:
            torch.get_num_threads()  # torch sets a thread's count up lazily, once: do it now...
            torch.set_num_threads(n)  # ...so that this count stays: the process's threads
            return threading.current_thread(), torch.get_num_threads()

        _thread, got = executor.submit(init).result()
        assert got == n, (got, n)
        torch.set_num_threads(1)  # the default for threads started from now on (torch reads it per thread)
        _executor = executor
        return n


def started() -> bool:
    return _executor is not None


def run(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """fn(*args, **kwargs) on the model thread, waiting for it (inline before `start()` and on
    the model thread itself). Exceptions propagate to the caller."""
    if _executor is None or threading.current_thread() is _thread:
        return fn(*args, **kwargs)
    return _executor.submit(fn, *args, **kwargs).result()
