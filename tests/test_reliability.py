"""Issue 16: nothing a user types ends in a traceback; nothing a crash leaves behind accumulates.

One test per measured failure (bad input through the CLI in-process, exit 2 and one line),
plus real SIGKILLs of subprocesses in the middle of atomic writes (marked integration).

    .venv/bin/python -m pytest tests/test_reliability.py -q
"""

from __future__ import annotations

import errno
import functools
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from coalora import jsonfile
from coalora.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
FMT = "coalora.configuration/v1"


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    """run(argv) -> (exit status, stderr) of coalora.cli.main in tmp_path; loading weights fails."""
    import coalora.lora
    import coalora.models
    from coalora.cli import main

    monkeypatch.setattr(coalora.models, "build_space_for", _cached_space)

    def no_work(*a, **k):
        raise AssertionError("the work started before the input was checked")

    monkeypatch.setattr(coalora.models, "load_model", no_work)
    monkeypatch.setattr(coalora.lora, "load_for_eval", no_work, raising=False)
    monkeypatch.setattr(coalora.lora, "load_checkpoint", no_work, raising=False)
    monkeypatch.chdir(tmp_path)

    def run(argv):
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as e:
            rc = e.code
        out, err = capsys.readouterr()
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert "Traceback" not in err
        return rc, (lines[0] if len(lines) == 1 else err)

    return run


from coalora.models import build_space_for as _real_build_space_for  # noqa: E402 - before any patch

_cached_space = functools.lru_cache(maxsize=None)(_real_build_space_for)


def _config(tmp_path, data: bytes | str, name="c.json") -> str:
    p = tmp_path / name
    p.write_bytes(data.encode() if isinstance(data, str) else data)
    return name


# ---- 1. inputs that ended in a traceback ---------------------------------------------------------
@pytest.mark.parametrize("field", ["where", "self", "base", "cls", "d"])
def test_setting_field_named_like_a_parameter(cli, tmp_path, field):
    rc, line = cli(["space", "--json", "--config", _config(tmp_path, f'{{"format":"{FMT}","default":{{"{field}":4}}}}')])
    assert rc == 2 and f"unknown field '{field}'" in line and "known fields are bits" in line


def test_setting_from_dict_where_self_directly():
    from coalora.quant.setting import QuantSetting

    for field in ("where", "self", "base"):
        with pytest.raises(ConfigError, match=f"unknown field '{field}'"):
            QuantSetting.from_dict({field: 4})
    assert QuantSetting.from_dict({"bits": 2}).bits == 2


def test_deep_nesting(cli, tmp_path):
    rc, line = cli(["space", "--json", "--config", _config(tmp_path, "[" * 1000 + "]" * 1000)])
    assert rc == 2 and "nests arrays or objects too deeply" in line and "'c.json'" in line


def test_integer_of_5000_digits(cli, tmp_path):
    rc, line = cli(["space", "--json", "--config", _config(tmp_path, f'{{"format":"{FMT}","default":{{"bits":{"9" * 5000}}}}}')])
    assert rc == 2 and "integer of 5,000 digits" in line


def test_huge_int_value_from_python_is_shown_short():
    from coalora.quant.setting import QuantSetting

    with pytest.raises(ConfigError, match="an integer of about 5,000 digits"):
        QuantSetting.from_dict({"bits": 10**4999})


def test_bytes_not_utf8(cli, tmp_path):
    rc, line = cli(["space", "--json", "--config", _config(tmp_path, b"\xff\xfe{}")])
    assert rc == 2 and "not UTF-8" in line


def test_utf8_bom_is_accepted(tmp_path):
    assert jsonfile.loads(b"\xef\xbb\xbf{\"a\": 1}") == {"a": 1}


@pytest.fixture
def a_file(tmp_path):
    (tmp_path / "FILE").write_text("x")
    (tmp_path / "DIR").mkdir()
    return "FILE"


def test_allocate_out_under_a_file(cli, a_file):
    rc, line = cli(["allocate", "--budget", "3", "--out", "FILE/c.json"])
    assert rc == 2 and line == "coalora allocate: error: --out 'FILE/c.json' cannot be written: 'FILE' is a file, not a folder"


def test_allocate_out_existing_folder(cli, a_file):
    rc, line = cli(["allocate", "--budget", "3", "--out", "DIR"])
    assert rc == 2 and "--out 'DIR' is a folder; give a file name" in line


@pytest.mark.parametrize("out", ["FILE/adapter", "/proc/coalora-test/adapter", "DIR", ""])
def test_export_out_unwritable(cli, a_file, out):
    rc, line = cli(["export", "--config", "nf4", "--out", out])
    assert rc == 2 and line.startswith("coalora export: error:")


def test_eval_records_checked_before_the_evaluation(cli, a_file, monkeypatch):
    import coalora.cli.eval as cli_eval

    monkeypatch.setattr(cli_eval, "_select_split", lambda args: pytest.fail("evaluation started"))
    rc, line = cli(["eval", "--records", "FILE/r.jsonl"])
    assert rc == 2 and "--records 'FILE/r.jsonl' cannot be written" in line
    rc, line = cli(["eval", "--records", "DIR"])
    assert rc == 2 and "--records 'DIR' is a folder" in line


def test_eval_records_writable_passes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from coalora.cli.common import check_writable_file

    assert check_writable_file("new/sub/r.jsonl", "--records", append=True) == Path("new/sub/r.jsonl")
    assert not Path("new").exists()  # checking creates nothing


# ---- 2. inputs that were accepted silently ----------------------------------------------------------
def test_float_bits_refused(cli, tmp_path):
    rc, line = cli(["space", "--json", "--config", _config(tmp_path, f'{{"format":"{FMT}","default":{{"bits":4.0}}}}')])
    assert rc == 2 and "field 'bits' has value 4.0 (a float); allowed values are 2, 3, 4, 8" in line


def test_duplicate_keys_refused(cli, tmp_path):
    rc, line = cli(["space", "--json", "--config", _config(tmp_path, f'{{"format":"{FMT}","default":{{"bits":4,"bits":2}}}}')])
    assert rc == 2 and "the key 'bits' appears twice" in line


@pytest.mark.parametrize("budget", ["100", "8.7", "nan", "inf", "-1", "abc", ""])
def test_allocate_budget_range(cli, budget):
    rc, line = cli(["allocate", f"--budget={budget}"])
    assert rc == 2 and line.startswith("coalora allocate: error: budget")


def test_check_budget_is_shared_and_has_an_upper_bound():
    from coalora.search.allocate import check_budget
    from coalora.search.pareto import BITS_MAX, BITS_MIN

    assert check_budget(BITS_MAX, BITS_MIN) == BITS_MAX
    assert check_budget("3.5", BITS_MIN) == 3.5
    with pytest.raises(ConfigError, match=r"above the most precise setting \(8\.6250\)"):
        check_budget(100, BITS_MIN)


def test_config_fifo_refused_without_blocking(cli, tmp_path):
    os.mkfifo(tmp_path / "p.fifo")
    t0 = time.perf_counter()
    rc, line = cli(["space", "--json", "--config", "p.fifo"])
    assert rc == 2 and "FIFO" in line and time.perf_counter() - t0 < 30


@pytest.mark.parametrize("spec", ["", " "])
def test_config_empty(cli, spec):
    rc, line = cli(["space", "--json", "--config", spec])
    assert rc == 2 and "the configuration is empty; give a preset (nf4" in line


def test_config_folder(cli, tmp_path):
    (tmp_path / "d.json").mkdir()
    rc, line = cli(["space", "--json", "--config", "d.json"])
    assert rc == 2 and "is a folder" in line


def test_size_cap(tmp_path):
    p = tmp_path / "big.json"
    p.write_bytes(b"{" + b" " * 2000 + b"}")
    with pytest.raises(ConfigError, match="at most 1,000 are accepted"):
        jsonfile.load(p, max_bytes=1000)


# ---- disk: a write that fails is one line, and leaves no temporary file -------------------------------
def test_disk_full_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    from coalora import io

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io.os, "fsync", full)
    with pytest.raises(io.WriteError, match="No space left on device"):
        io.atomic_write_bytes(tmp_path / "c.json", b"{}")
    assert list(tmp_path.iterdir()) == []


def test_atomic_folder_disk_full(tmp_path):
    from coalora import io

    with pytest.raises(io.WriteError, match="No space left on device"):
        with io.atomic_folder(tmp_path / "out") as tmp:
            (tmp / "a").write_text("x")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []


# ---- 3. temporary files: per-process folder and pid-tagged siblings -----------------------------------
def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_process_tmp_is_per_pid_and_sweeps_dead_ones(tmp_path, monkeypatch):
    import tempfile

    from coalora import tmp

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(tmp, "_state", {})
    dead = tmp_path / f"coalora-{_dead_pid()}"
    (dead / "sub").mkdir(parents=True)
    alive = tmp_path / f"coalora-{os.getppid()}"
    alive.mkdir()
    other = tmp_path / "coalora-app-xyz"
    other.mkdir()
    mine = tmp.process_tmp()
    assert mine == tmp_path / f"coalora-{os.getpid()}" and mine.is_dir()
    assert not dead.exists() and alive.exists() and other.exists()
    assert tmp.process_tmp() == mine
    tmp._cleanup(os.getpid())
    assert not mine.exists()


def test_sibling_names_carry_the_pid(tmp_path):
    from coalora.io import atomic_folder

    with atomic_folder(tmp_path / "out") as t:
        assert t.name.startswith(f".out.coalora-{os.getpid()}-")
    assert (tmp_path / "out").is_dir()


_KILLED_WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from coalora.io import atomic_folder
    target = Path(sys.argv[1])
    with atomic_folder(target) as tmp:
        (tmp / "payload.bin").write_bytes(b"x" * 100_000)
        print(tmp, flush=True)
        time.sleep(60)
""")


def _start_and_kill(script: str, *args: str) -> Path:
    p = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE, text=True, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        left = Path(p.stdout.readline().strip())  # the temporary file or folder, printed once written
        assert left.exists(), "the writer did not start"
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    return left


@pytest.mark.integration
def test_sigkill_during_atomic_folder_then_next_write_cleans_up(tmp_path):
    from coalora.io import atomic_folder

    target = tmp_path / "adapter"
    left = _start_and_kill(_KILLED_WRITER, str(target))
    assert left.exists() and left.name.startswith(".adapter.coalora-")  # what the SIGKILL left
    assert not target.exists()
    with atomic_folder(target) as tmp:  # the next write of the same output sweeps it
        (tmp / "ok").write_text("1")
    assert not left.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


_KILLED_FILE_WRITER = textwrap.dedent("""
    import os, sys, time, tempfile
    from pathlib import Path
    from coalora.tmp import sibling_prefix
    target = Path(sys.argv[1])
    fd, tmp = tempfile.mkstemp(prefix=sibling_prefix(target), suffix=".tmp", dir=target.parent)
    os.write(fd, b"{}")
    print(tmp, flush=True)
    time.sleep(60)
""")


@pytest.mark.integration
def test_sigkill_during_atomic_file_then_next_write_cleans_up(tmp_path):
    from coalora.io import atomic_write_bytes

    target = tmp_path / "c.json"
    left = _start_and_kill(_KILLED_FILE_WRITER, str(target))
    assert left.exists()
    atomic_write_bytes(target, b"{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json"]


_KILLED_CONVERSION = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import coalora.models as m
    from coalora.io import atomic_folder
    # The conversion's write, as embedded_model_dir does it, without the 30 s GGUF load.
    with atomic_folder(m.cache_dir() / "models" / "smollm2-135m") as tmp:
        (tmp / "model.safetensors").write_bytes(b"x" * 100_000)
        print(tmp, flush=True)
        time.sleep(60)
""")


@pytest.mark.integration
def test_sigkill_during_model_conversion_is_swept_by_the_next_load(tmp_path, monkeypatch):
    import coalora.models as m

    monkeypatch.setenv("COALORA_CACHE", str(tmp_path))
    left = _start_and_kill(_KILLED_CONVERSION)
    assert left.exists() and left.parent == tmp_path / "models"
    # The next process finds the model converted (here: a stand-in folder) and sweeps on the way.
    (tmp_path / "models" / "smollm2-135m").mkdir()
    (tmp_path / "models" / "smollm2-135m" / "config.json").write_text("{}")
    assert m.embedded_model_dir(quiet=True) == tmp_path / "models" / "smollm2-135m"
    assert not left.exists()


_KILLED_PROCESS_TMP = textwrap.dedent("""
    import time
    from coalora.tmp import process_tmp
    d = process_tmp()
    (d / "x").write_bytes(b"x" * 1000)
    print(d, flush=True)
    time.sleep(60)
""")


@pytest.mark.integration
def test_sigkill_leaves_process_tmp_that_the_next_process_sweeps(tmp_path):
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": str(REPO)}
    p = subprocess.Popen([sys.executable, "-c", _KILLED_PROCESS_TMP], stdout=subprocess.PIPE, text=True, env=env)
    left = Path(p.stdout.readline().strip())
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert left.is_dir() and left.parent == tmp_path
    # A normal exit removes its own folder; its first process_tmp() swept the dead one.
    out = subprocess.run([sys.executable, "-c", "from coalora.tmp import process_tmp; print(process_tmp())"],
                         env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert not left.exists() and not Path(out).exists()
    assert list(tmp_path.iterdir()) == []
