"""Every case of the committed bad-input corpus (tests/badinput/corpus.jsonl, about 1,300
malformed configuration files, arguments, paths and pools) through the CLI entry point,
in-process: exit status 2, one line on stderr that names the command, no traceback, no
path of this repository or the home folder, nothing on stdout, no model loaded.

    .venv/bin/python -m pytest tests/test_reliability_corpus.py -q
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path

import pytest

from tests.badinput.corpus import cases

pytestmark = pytest.mark.slow  # about 1,300 CLI cases (10-20 s): `make test`, not `make test-fast`

REPO = Path(__file__).resolve().parents[1]
HOME = str(Path.home())
MAX_LINE = 1000  # one line, and a readable one


def _setup(setup: str) -> str:
    """Make a path of the kind `setup` in the current folder; -> the path to type."""
    if setup == "fifo":
        if not os.path.lexists("p.fifo"):
            os.mkfifo("p.fifo")
        return "p.fifo"
    if setup == "dir":
        os.makedirs("d", exist_ok=True)
        return "d"
    if setup == "missing-parent":
        return "no/such/c.json"
    if setup == "under-file":
        Path("f").touch()
        return "f/c.json"
    if setup == "file":
        Path("f2").touch()
        return "f2"
    if setup == "proc":
        return "/proc/coalora-no-such/c.json"
    if setup == "dev-null":
        return "/dev/null"
    if setup == "symlink-loop":
        if not os.path.lexists("loop"):
            os.symlink("loop", "loop")
        return "loop"
    if setup == "broken-symlink":
        if not os.path.lexists("broken"):
            os.symlink("nowhere", "broken")
        return "broken"
    if setup == "empty":
        return ""
    if setup == "dot":
        return "."
    if setup == "big":
        if not os.path.exists("big.json"):
            with open("big.json", "wb") as f:
                f.write(b"{" + b" " * (17 * 2**20) + b"}")
        return "big.json"
    raise AssertionError(f"unknown setup {setup!r}")


def _argv(case: dict) -> list[str]:
    if case["kind"] == "config":
        Path("case.json").write_bytes(case["data"])
        return ["space", "--config", "case.json", "--json"]
    if case["kind"] == "pool":
        Path("pool.jsonl").write_bytes(case["data"])
        return ["allocate", "--budget", "3.5", "--method", "gp", "--pool", "pool.jsonl"]
    if case["kind"] == "path":
        p = _setup(case["setup"])
        return [p if a == "{P}" else a for a in case["argv"]]
    return list(case["argv"])


def _problem(rc, out: str, err: str) -> str | None:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    if rc != 2:
        return f"exit status {rc!r}, not 2: {err[-300:]!r}"
    if "Traceback" in err:
        return f"a traceback: {err[-300:]!r}"
    if len(lines) != 1:
        return f"{len(lines)} lines on stderr: {err[:300]!r}"
    line = lines[0]
    if not line.startswith("coalora ") or "error:" not in line:
        return f"not a 'coalora COMMAND: error: ...' line: {line[:200]!r}"
    if str(REPO) in line or HOME in line:
        return f"a server path in the message: {line[:300]!r}"
    if len(line) > MAX_LINE:
        return f"a line of {len(line)} characters"
    if out:
        return f"stdout not empty: {out[:200]!r}"
    return None


@pytest.fixture
def cli(tmp_path, monkeypatch):
    """coalora.cli.main in a scratch folder; the model's space built once; loading weights fails."""
    import coalora.models
    from coalora.cli import main

    real = coalora.models.build_space_for
    monkeypatch.setattr(coalora.models, "build_space_for", functools.lru_cache(maxsize=None)(real))

    def no_weights(*a, **k):
        raise AssertionError("a bad input got as far as loading model weights")

    monkeypatch.setattr(coalora.models, "load_model", no_weights)
    import coalora.lora

    monkeypatch.setattr(coalora.lora, "load_for_eval", no_weights, raising=False)
    monkeypatch.setattr(coalora.lora, "load_checkpoint", no_weights, raising=False)
    monkeypatch.chdir(tmp_path)
    return main


def test_corpus_is_large_enough():
    kinds: dict[str, int] = {}
    for c in cases():
        kinds[c["kind"]] = kinds.get(c["kind"], 0) + 1
    assert sum(kinds.values()) >= 1000, kinds
    assert set(kinds) == {"config", "argv", "path", "pool"}, kinds


def _run_all(cli, capsys, kinds: tuple[str, ...]) -> tuple[int, list[str], float]:
    t0 = time.perf_counter()
    failures, n = [], 0
    for case in (c for k in kinds for c in cases(k)):
        n += 1
        argv = _argv(case)
        try:
            rc = cli(argv)
        except SystemExit as e:  # argparse
            rc = e.code
        except Exception as e:  # noqa: BLE001 - a traceback is exactly what the test looks for
            rc = f"uncaught {type(e).__name__}: {str(e)[:200]}"
        out, err = capsys.readouterr()
        problem = _problem(rc, out, err)
        if problem:
            line = f"{case['name']} ({' '.join(a[:40] for a in argv)[:120]}): {problem}"
            failures.append(line)
        assert not os.path.exists("newdir"), f"{case['name']} created an output"
    return n, failures, time.perf_counter() - t0


def test_every_bad_input_is_one_line_and_exit_2(cli, capsys):
    n, failures, seconds = _run_all(cli, capsys, ("config", "argv", "path"))
    with capsys.disabled():
        print(f"\n{n} bad inputs (configuration files, arguments, paths) in {seconds:.1f} s")
    assert not failures, f"{len(failures)} of {n} cases failed:\n" + "\n".join(failures[:60])


def test_bad_pools(cli, capsys):
    n, failures, seconds = _run_all(cli, capsys, ("pool",))
    with capsys.disabled():
        print(f"\n{n} bad pools in {seconds:.1f} s")
    assert not failures, f"{len(failures)} of {n} cases failed:\n" + "\n".join(failures[:60])
