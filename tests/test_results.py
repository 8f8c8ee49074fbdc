"""Result records: JSON lines that survive torn writes and concurrent appenders."""

import json
import multiprocessing as mp

import pytest

from coalora.results import RECORD_FORMAT, ResultRecord, append_record, read_records


def rec(i: int = 0, **kw) -> ResultRecord:
    base = dict(task="sst2", metric="accuracy", value=0.5 + i / 100, stderr=0.04, n=128, model="tiny",
                config_hash="abc", avg_bits=4.127, packed_bytes=1000, split={"task": "sst2"}, split_hash="h")
    return ResultRecord(**{**base, **kw})


def test_round_trip_keeps_every_field(tmp_path):
    p = tmp_path / "r.jsonl"
    r = rec(1, extra={"perplexity": 3.0})
    append_record(p, r)
    (back,) = read_records(p)
    assert back == r
    d = json.loads(p.read_text())
    assert d["format"] == RECORD_FORMAT and d["code_version"] and d["time"].endswith("+00:00")


def test_appends_keep_earlier_lines(tmp_path):
    p = tmp_path / "sub" / "r.jsonl"
    for i in range(3):
        append_record(p, rec(i))
    assert [r.value for r in read_records(p)] == [0.5, 0.51, 0.52]
    assert len(p.read_text().splitlines()) == 3


def test_torn_last_line_is_skipped_and_the_next_append_is_intact(tmp_path):
    p = tmp_path / "r.jsonl"
    append_record(p, rec(0))
    with open(p, "a") as f:
        f.write(rec(1).to_json()[:25])  # a crash in the middle of a write
    with pytest.warns(UserWarning, match="skipped an unreadable result line"):
        assert [r.value for r in read_records(p)] == [0.5]
    append_record(p, rec(2))
    with pytest.warns(UserWarning):
        assert [r.value for r in read_records(p)] == [0.5, 0.52]


def test_nan_is_written_as_null_and_unknown_keys_are_kept(tmp_path):
    p = tmp_path / "r.jsonl"
    append_record(p, rec(0, stderr=float("nan")))
    assert json.loads(p.read_text())["stderr"] is None
    r = ResultRecord.from_dict({**rec(0).to_dict(), "future_field": 7})
    assert r.extra["future_field"] == 7


def test_missing_file_reads_as_empty(tmp_path):
    assert read_records(tmp_path / "none.jsonl") == []


def _writer(args):
    path, k = args
    for i in range(20):
        append_record(path, rec(i, n=k))


def test_concurrent_appenders_never_interleave(tmp_path):
    p = tmp_path / "r.jsonl"
    with mp.get_context("fork").Pool(3) as pool:
        pool.map(_writer, [(str(p), k) for k in range(3)])
    lines = p.read_text().splitlines()
    assert len(lines) == 60 and all(json.loads(line)["task"] == "sst2" for line in lines)
