"""ui/model_thread.py: one thread runs the app's model work with the process's torch threads;
every other thread computes single-threaded. In a subprocess: start() changes torch's
thread settings for the whole process."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import threading, torch
from concurrent.futures import ThreadPoolExecutor
from ui import model_thread

me = threading.get_ident()
assert model_thread.run(threading.get_ident) == me and not model_thread.started()  # inline before start
n = torch.get_num_threads()
assert model_thread.start() == n == 2 and model_thread.start() == n  # idempotent
ids = {model_thread.run(threading.get_ident) for _ in range(3)}
with ThreadPoolExecutor(4) as pool:  # as gradio's worker threads call it
    ids |= set(pool.map(lambda _: model_thread.run(threading.get_ident), range(8)))
    others = set(pool.map(lambda _: torch.get_num_threads(), range(8)))
assert len(ids) == 1 and me not in ids, ids
assert model_thread.run(torch.get_num_threads) == n
assert others == {1} and torch.get_num_threads() == 1, others
x = torch.randn(64, 64)
assert torch.equal(model_thread.run(torch.mm, x, x), torch.mm(x, x))
assert model_thread.run(lambda: model_thread.run(lambda: 7)) == 7  # from the model thread: inline, no deadlock
try:
    model_thread.run(lambda: 1 / 0)
except ZeroDivisionError:
    pass
else:
    raise AssertionError("the model thread's exception did not reach the caller")
print("ok")
"""


def test_model_thread_runs_the_work_on_one_thread_and_other_threads_single_threaded():
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
