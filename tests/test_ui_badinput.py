"""The bad-input corpus (tests/badinput) through the app's handlers, in-process: every
malformed configuration file, as an upload and as /evaluate's JSON text, is refused with a
gr.Error of one clear line (no traceback, no path of the server), and the app still
answers a good request afterwards."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import pytest

from tests.badinput.corpus import config_cases
from ui import handlers as h
from ui.state import SessionState
from ui_fixtures import make_tiny_engine

pytestmark = pytest.mark.slow  # many evaluations on tiny engines: `make test`, not `make test-fast`

REPO = str(Path(__file__).resolve().parents[1])


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    return make_tiny_engine(tmp_path_factory.mktemp("ui-bad"), n_rows=8, with_costs=False)


def _refused(call) -> str:
    with pytest.raises(gr.Error) as info:
        call()
    msg = str(info.value.message)
    assert "Traceback" not in msg and REPO not in msg and "\n" not in msg.strip(), msg
    return msg


def test_every_malformed_configuration_is_refused_clearly(engine, tmp_path):
    cases = list(config_cases())
    assert len(cases) >= 1000
    for i, (name, data) in enumerate(cases):
        path = tmp_path / f"upload-{i}.json"
        path.write_bytes(data)
        _refused(lambda: h.apply_upload(engine, SessionState(), str(path)))
        path.unlink()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            continue  # /evaluate takes text: bytes that are not UTF-8 cannot reach it
        _refused(lambda: list(h.api_evaluate(engine, text)))
    good = [*h.api_evaluate(engine, engine.preset("nf4").to_json())]  # still answers a good request
    assert good and '"done":true' in good[-1]
