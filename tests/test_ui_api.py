"""The app's API through gradio_client (tiny engine): /evaluate, /allocate, bad input, and
two clients evaluating different configurations at once."""

from __future__ import annotations

import json
import threading

import pytest

from ui_fixtures import make_tiny_engine

pytestmark = pytest.mark.integration  # serves the app over HTTP and talks to it with gradio_client


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from ui.layout import build_app

    engine = make_tiny_engine(tmp_path_factory.mktemp("ui-api"))
    demo = build_app(engine)
    demo.queue().launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=None, quiet=True,
                        show_error=True, max_file_size="2mb")
    yield engine, demo.local_url
    demo.close()


def _client(url):
    from gradio_client import Client

    return Client(url, verbose=False)


def test_api_lists_evaluate_and_allocate(served):
    _, url = served
    info = _client(url).view_api(print_info=False, return_format="dict")
    assert {"/evaluate", "/allocate"} <= set(info["named_endpoints"])


def test_evaluate_and_allocate_through_the_client(served):
    engine, url = served
    c = _client(url)
    cfg = json.loads(c.predict(3.0, "fast", api_name="/allocate"))
    config = engine.space.from_dict(cfg)
    assert config.avg_bits <= 3.0
    rec = json.loads(c.predict(json.dumps(cfg), api_name="/evaluate"))
    assert rec["extra"]["done"] and rec["config_hash"] == config.hash
    assert rec["value"] == engine.evaluate_final(config).value
    by_name = json.loads(c.predict("nf3", api_name="/evaluate"))  # a preset name, as on the command line
    assert by_name["config_hash"] == engine.preset("nf3").hash and by_name["extra"]["done"]
    job = c.submit(engine.preset("nf3").to_json(), api_name="/evaluate")
    streamed = [json.loads(x) for x in job]  # every streamed estimate, the last final
    assert len(streamed) >= 2 and streamed[-1]["extra"]["done"] and streamed[0]["n"] < streamed[-1]["n"]


def test_bad_input_is_a_clear_error_and_the_app_keeps_serving(served):
    from gradio_client.exceptions import AppError

    engine, url = served
    c = _client(url)
    with pytest.raises(AppError, match="not valid JSON"):
        c.predict("{oops", api_name="/evaluate")
    with pytest.raises(AppError, match="field 'format'"):
        c.predict(json.dumps({"format": "x"}), api_name="/evaluate")
    with pytest.raises(AppError, match="minimum budget"):
        c.predict(0.5, "ilp", api_name="/allocate")
    with pytest.raises(AppError, match="at most"):
        c.predict(" " * (1 << 21), api_name="/evaluate")
    with pytest.raises(AppError, match=r"configuration 'nf5' is not a preset \(nf4, nf3, nf2, nf8, min, max\)"):
        c.predict("nf5", api_name="/evaluate")
    with pytest.raises(AppError, match="Q9_9"):
        c.predict("gguf:Q9_9", api_name="/evaluate")
    with pytest.raises(AppError, match="checkpoint 'nope' is not loaded in this app; loaded: default"):
        c.predict("nf4", "nope", api_name="/evaluate")
    assert engine.space.loads(c.predict(4.2, "fast", api_name="/allocate")).avg_bits <= 4.2


def test_two_clients_at_once_each_get_what_they_get_alone(served):
    engine, url = served
    configs = [engine.preset("nf2"), engine.preset("nf8")]
    alone = [engine.evaluate_final(c).value for c in configs]
    alone_streams = [[r.value for r in engine.evaluate(c)] for c in configs]
    results: dict[int, list] = {}

    def run(i):
        job = _client(url).submit(configs[i].to_json(), api_name="/evaluate")
        results[i] = [json.loads(x) for x in job]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    for i, c in enumerate(configs):
        assert results[i][-1]["config_hash"] == c.hash
        assert results[i][-1]["value"] == alone[i]
        assert [r["value"] for r in results[i]] == alone_streams[i]
