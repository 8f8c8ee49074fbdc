"""Generate the bad-input corpus (tests/badinput/corpus.jsonl) from a fixed seed.

    .venv/bin/python tests/badinput/generate.py        # rewrites corpus.jsonl (deterministic)

Each line is one case: {"name", "kind", ...}:
- kind "config": "data" (base64 bytes) is written to a file and given as `--config FILE`
  to `coalora space --json` (and to the app's configuration upload, later);
- kind "argv": "argv" is run as is (budgets and other arguments);
- kind "path": "setup" makes a path of a kind (fifo, folder, missing, under a file, ...)
  that replaces "{P}" in "argv";
- kind "pool": "data" is written to a file given as `--pool FILE` to `coalora allocate --method gp`.

Every case must be refused with exit status 2 and one line. The generator keeps only
configuration cases that the strict reader plus ConfigSpace.from_dict refuse (a random
mutation can by chance produce a valid file), so the corpus says what it means.
"""

from __future__ import annotations

import base64
import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 16
FORMAT = "coalora.configuration/v1"
FIELDS = {
    "bits": (2, 3, 4, 8),
    "scale_bits": (2, 3, 4, 8),
    "scale_format": ("bf16", "fp16", "fp32"),
    "block_size": (16, 32, 64),
    "scale_block_size": (16, 64, 256),
}
GOOD_SETTING = {"bits": 4, "scale_bits": 8, "scale_format": "fp32", "block_size": 64, "scale_block_size": 256}
# Names of SmolLM2-135M's projections (30 blocks, 7 per block): the corpus targets the default model.
TYPES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def matrix_name(block: int, t: str) -> str:
    part = "self_attn" if t in TYPES[:4] else "mlp"
    return f"model.layers.{block}.{part}.{t}"


def dumps(obj) -> bytes:
    return json.dumps(obj).encode()


def good(**over) -> dict:
    d = {"format": FORMAT, "model": "smollm2-135m", "default": dict(GOOD_SETTING), "matrices": {}}
    d.update(over)
    return d


def bad_values(rng: random.Random, field: str) -> list:
    allowed = FIELDS[field]
    vals: list = [None, True, False, [], {}, [allowed[0]], {"value": allowed[0]}, "", " ", "null", -1, 0, 1]
    if isinstance(allowed[0], int):
        vals += [float(a) for a in allowed]  # 4.0: a float, refused
        vals += [str(a) for a in allowed]  # "4": a string, refused
        vals += [a + 1 for a in allowed if a + 1 not in allowed] + [-a for a in allowed]
        vals += [5, 6, 7, 9, 12, 128, 1000, 2**31, 2**63, 2**64 + 1, 10**99, 1.5, 4.000001, -0.0, 1e308, 1e-308]
        vals += ["four", "nf4", "0x4", "4 "]
    else:
        vals += [a.upper() for a in allowed] + [f" {a}" for a in allowed] + [f"{a} " for a in allowed]
        vals += ["fp64", "fp8", "int8", "float32", "bfloat16", "fp 32", "fp32\u0000", "ｆｐ３２", 16, 32, 16.0, 32.0]
    vals += [rng.choice(["x" * rng.randint(1, 50), "\u00e9\u00e8", "\U0001F600"])]
    return vals


def config_cases(rng: random.Random) -> list[tuple[str, bytes]]:
    cases: list[tuple[str, bytes]] = []
    add = lambda name, data: cases.append((name, data if isinstance(data, bytes) else dumps(data)))  # noqa: E731

    # 1. every field, every kind of bad value, in "default" and in a matrix override
    for field in FIELDS:
        for i, v in enumerate(bad_values(rng, field)):
            add(f"default-{field}-{i}", good(default={**GOOD_SETTING, field: v}))
            name = matrix_name(rng.randrange(30), rng.choice(TYPES))
            add(f"matrix-{field}-{i}", good(matrices={name: {field: v}}))
    # huge integers as raw JSON text (5,000 digits: beyond Python's int->str limit)
    for field in ("bits", "scale_bits", "block_size", "scale_block_size"):
        for digits in (101, 4301, 5000):
            add(f"huge-int-{field}-{digits}", f'{{"format":"{FORMAT}","default":{{"{field}":{"9" * digits}}}}}'.encode())
        add(f"huge-neg-int-{field}", f'{{"format":"{FORMAT}","default":{{"{field}":-{"1" * 5000}}}}}'.encode())
        for const in ("NaN", "Infinity", "-Infinity", "1e999", "-1e999"):
            add(f"const-{field}-{const}", f'{{"format":"{FORMAT}","default":{{"{field}":{const}}}}}'.encode())
    # 2. field names that are not fields (some collide with Python parameter names)
    for fname in ("where", "self", "base", "cls", "d", "kwargs", "changes", "__class__", "__init__", "Bits",
                  "bits ", " bits", "BITS", "bit", "scaleBits", "scale-bits", "format", "blocksize", "", " ",
                  "\u0000", "\U0001F600", "x" * 300, "1", "null", "true"):
        add(f"field-name-{fname[:20]!r}-default", good(default={fname: 4}))
        add(f"field-name-{fname[:20]!r}-matrix", good(matrices={matrix_name(0, "q_proj"): {fname: 4}}))
    add("tester-where", b'{"format":"coalora.configuration/v1","default":{"where":4}}')
    add("tester-self", b'{"format":"coalora.configuration/v1","default":{"self":4}}')
    add("tester-float-bits", b'{"format":"coalora.configuration/v1","default":{"bits":4.0}}')
    # 3. top-level structure: wrong types, missing / extra keys, wrong tags
    for i, doc in enumerate([None, True, False, 0, 4, 4.5, "nf4", "", [], [good()], [1, 2]]):
        add(f"top-type-{i}", doc)
    for i, fmt in enumerate([None, "", "coalora.configuration/v2", "coalora.configuration/v0", "coalora.configuration",
                             "coalora.configuration/v1 ", " coalora.configuration/v1", "COALORA.CONFIGURATION/V1",
                             "coalora.checkpoint/v1", "coalora.pool/v1", 1, 1.0, True, [], {}, [FORMAT], {FORMAT: 1}]):
        add(f"format-{i}", good(format=fmt))
    add("format-missing", {k: v for k, v in good().items() if k != "format"})
    add("empty-object", {})
    for i, key in enumerate(["formats", "Format", "defaults", "matrix", "settings", "bits", "version", "", "comment",
                             "fingerprint ", "x" * 200, "\u00e9"]):
        add(f"extra-key-{i}", good(**{key: 1}))
    for i, fam in enumerate(["int", "NF", "nf4", "fp", "", None, 1, [], {}, True, "nf ", "mxfp4"]):
        add(f"family-{i}", good(family=fam))
    for i, dflt in enumerate([None, 4, "nf4", [], [4], True, 4.0, "", [GOOD_SETTING]]):
        add(f"default-type-{i}", good(default=dflt))
    for i, mats in enumerate([None, 4, "x", [], [matrix_name(0, "q_proj")], True, [[matrix_name(0, "q_proj"), {}]]]):
        add(f"matrices-type-{i}", good(matrices=mats))
    for i, over in enumerate([None, 4, "nf4", [], [4], True, ""]):
        add(f"matrix-override-type-{i}", good(matrices={matrix_name(rng.randrange(30), "k_proj"): over}))
    # foreign fingerprints
    for i in range(25):
        fp = "".join(rng.choice("0123456789abcdef") for _ in range(16))
        add(f"fingerprint-foreign-{i}", good(fingerprint=fp, model=rng.choice(["llama-7b", "qwen2-0.5b", None, "x"])))
    for i, fp in enumerate(["", "0" * 16, "9b1e45d5e1ef4a6", "9B1E45D5E1EF4A64", 0, 1.5, True, [], {}, ["9b1e45d5e1ef4a64"]]):
        add(f"fingerprint-bad-{i}", good(fingerprint=fp))
    # 4. unknown matrix names
    names = ["model.layers.30.self_attn.q_proj", "model.layers.-1.self_attn.q_proj", "model.layers.0.self_attn.gate_proj",
             "model.layers.0.mlp.q_proj", "model.layers.0.self_attn.qproj", "layers.0.self_attn.q_proj",
             "model.layers.0.self_attn.q_proj.weight", "model.layers.00.self_attn.q_proj", "q_proj", "", " ",
             "model.embed_tokens", "lm_head", "model.norm", "model.layers.0.input_layernorm", "*", ".*q_proj",
             "model.layers.0.self_attn.Q_PROJ", "model.layers.1e1.mlp.up_proj", "\u0000", "\U0001F600", "x" * 200]
    names += [matrix_name(rng.randrange(30, 10**6), rng.choice(TYPES)) for _ in range(20)]
    for i, n in enumerate(names):
        add(f"matrix-unknown-{i}", good(matrices={n: {"bits": 2}}))
    # 5. duplicate keys at every level
    dup_docs = [
        '{"format":"%s","format":"%s"}' % (FORMAT, FORMAT),
        '{"format":"%s","default":{"bits":4,"bits":4}}' % FORMAT,
        '{"format":"%s","default":{"bits":4,"bits":2}}' % FORMAT,
        '{"format":"%s","default":{},"default":{}}' % FORMAT,
        '{"format":"%s","matrices":{},"matrices":{}}' % FORMAT,
        '{"format":"%s","matrices":{"%s":{"bits":2},"%s":{"bits":3}}}' % (FORMAT, matrix_name(0, "q_proj"), matrix_name(0, "q_proj")),
        '{"format":"%s","matrices":{"%s":{"bits":2,"bits":2}}}' % (FORMAT, matrix_name(3, "down_proj")),
        '{"format":"%s","family":"nf","family":"nf"}' % FORMAT,
        '{"format":"%s","fingerprint":"9b1e45d5e1ef4a64","fingerprint":"9b1e45d5e1ef4a64"}' % FORMAT,
    ]
    for f in FIELDS:
        v = json.dumps(FIELDS[f][0])
        dup_docs.append('{"format":"%s","default":{"%s":%s,"%s":%s}}' % (FORMAT, f, v, f, v))
    for i, d in enumerate(dup_docs):
        add(f"duplicate-key-{i}", d.encode())
    # 6. nesting
    for depth in (65, 100, 999, 1000, 1001, 5000, 20000):
        add(f"deep-array-{depth}", b"[" * depth + b"]" * depth)
        add(f"deep-object-{depth}", b"{\"a\":" * min(depth, 5000) + b"1" + b"}" * min(depth, 5000))
        add(f"deep-in-default-{depth}", f'{{"format":"{FORMAT}","default":'.encode() + b"[" * depth + b"]" * depth + b"}")
        add(f"deep-unclosed-{depth}", b"[" * depth)
    # 7. encodings and bytes
    valid = dumps(good())
    add("utf16-le-bom", b"\xff\xfe" + json.dumps(good()).encode("utf-16-le"))
    add("utf16-be-bom", b"\xfe\xff" + json.dumps(good()).encode("utf-16-be"))
    add("utf16-le-nobom", json.dumps(good()).encode("utf-16-le"))
    add("utf32-bom", json.dumps(good()).encode("utf-32"))
    add("tester-ff-fe", b"\xff\xfe{}")
    add("bom-only", b"\xef\xbb\xbf")
    add("bom-twice", b"\xef\xbb\xbf\xef\xbb\xbf" + valid)
    add("bom-empty-object", b"\xef\xbb\xbf{}")
    add("bom-garbage", b"\xef\xbb\xbfnot json")
    add("bom-in-middle", valid[:1] + b"\xef\xbb\xbf" + valid[1:])
    for i, junk in enumerate([b"\x80", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\xff", b"\xfe",
                              b"\xc3", b"\xe2\x82", "é".encode("latin-1"), "ü".encode("cp1252")]):
        pos = rng.randrange(1, len(valid) - 1)
        add(f"non-utf8-{i}", valid[:pos] + junk + valid[pos:])
        add(f"non-utf8-name-{i}", b'{"format":"' + FORMAT.encode() + b'","matrices":{"' + junk + b'":{}}}')
    for i, data in enumerate([b"", b" ", b"\n", b"\t\r\n ", b"\x00", b"\x00" * 64, b"null", b"true", b"0", b'""',
                              b"[]", b"{}", b"{", b"}", b"[", b'{"', b'{"format"', b'{"format":', b"\x1a",
                              b"# comment\n{}", b"// x\n" + valid, valid + b"\n// trailing", valid + b"x", valid + valid,
                              valid.replace(b'"', b"'"), valid[:-1] + b",}", b"{format: 1}", b"\x00" + valid,
                              valid + b"\x00", valid.replace(b":", b"="), b"<?xml version='1.0'?><a/>",
                              b"format: coalora.configuration/v1\ndefault: {bits: 4}\n"]):
        add(f"syntax-{i}", data)
    # 8. random damage to a valid file: truncations, byte flips, insertions, deletions
    rich = dumps(good(matrices={matrix_name(b, t): {"bits": rng.choice((2, 3, 8))}
                                for b in range(0, 30, 7) for t in TYPES[:3]}))
    for i in range(120):
        add(f"truncate-{i}", rich[: rng.randrange(0, len(rich) - 1)])
    printable = b'{}[]":,0123456789.eE+-truefalsnl \\/'
    for i in range(200):
        data = bytearray(rich)
        for _ in range(rng.randint(1, 3)):
            op = rng.random()
            pos = rng.randrange(len(data))
            if op < 0.4:
                data[pos] = rng.choice(printable)
            elif op < 0.7:
                data.insert(pos, rng.choice(printable))
            else:
                del data[pos]
        add(f"mutate-{i}", bytes(data))
    for i in range(60):  # random field/value soup
        setting = {rng.choice(list(FIELDS) + ["where", "self", "bit"]): rng.choice(
            [rng.randint(-10, 300), rng.random() * 10, rng.choice(["fp32", "bf16", "x", ""]), None, True])
            for _ in range(rng.randint(1, 6))}
        add(f"soup-{i}", good(default=setting) if rng.random() < 0.5 else
            good(matrices={matrix_name(rng.randrange(30), rng.choice(TYPES)): setting}))
    return cases


BUDGETS = ["-1", "0", "1", "2", "2.03", "2.0321", "8.626", "8.7", "9", "16", "100", "1e3", "1e999", "-1e999", "nan",
           "NaN", "-nan", "inf", "Infinity", "-inf", "", " ", "abc", "3,5", "3.5.1", "0x10", "1_000", "\u0663\u0663",
           "3.5bits", "four", "None", "null", "[3.5]", "9" * 400, "9" * 5000, "1" + "0" * 310, "--3", "+-3", "3.5\u0000",
           "\U0001F600", "2e0", "1e-9", "-0", "8.62501", "1e308"]


def argv_cases() -> list[list[str]]:
    out = [["allocate", f"--budget={b}"] for b in BUDGETS]
    out += [["allocate", f"--budget={b}", "--method", "fast"] for b in ("100", "nan", "-1", "abc", "inf")]
    out += [["allocate", f"--budget={b}", "--method", "gp"] for b in ("100", "nan", "-1", "abc", "inf")]
    out += [["allocate", "--budget", "3.5", "--method", "gp", "--pool", p] for p in ("missing.jsonl", "")]
    out += [["eval", "--no-record", "--task", t] for t in ("bogus", "", "SST2", "sst-2", "../sst2", "\u0000")]
    out += [["eval", "--no-record", "--limit", n] for n in ("0", "-1", "-1000", "100000000")]
    out += [["eval", "--no-record", "--limit", "5", "--full"]]
    out += [["export", "--checkpoint", c, "--config", "nf4", "--out", "newdir"] for c in
            ("missing-checkpoint", "", "no/such/dir")]
    out += [["export", "--config", c, "--out", "newdir"] for c in ("nf5", "bogus", "missing.json", "", " ")]
    out += [["space", "--json", "--config", c] for c in ("nf5", "NF4", "none", "default", "max ", "", " ", "missing.json",
                                                         "no/such/dir/c.json", "x" * 300)]
    return out


# (setup, argv): setup makes {P}; "rel-*" setups make relative paths in the test's working folder.
PATH_SETUPS = ("fifo", "dir", "missing-parent", "under-file", "proc", "dev-null", "symlink-loop", "broken-symlink",
               "empty", "dot")


def path_cases() -> list[tuple[str, list[str]]]:
    out = []
    for s in PATH_SETUPS:
        out.append((s, ["space", "--json", "--config", "{P}"]))
        if s not in ("missing-parent",):
            out.append((s, ["allocate", "--budget", "3.5", "--out", "{P}"]))
            out.append((s, ["eval", "--task", "sst2", "--records", "{P}"]))
        if s not in ("missing-parent", "fifo"):
            out.append((s, ["export", "--config", "nf4", "--out", "{P}"]))
    out.append(("fifo", ["export", "--config", "nf4", "--out", "{P}", "--force"]))
    out.append(("file", ["export", "--config", "nf4", "--out", "{P}", "--force"]))
    out.append(("big", ["space", "--json", "--config", "{P}"]))
    out.append(("fifo", ["allocate", "--budget", "3.5", "--method", "gp", "--pool", "{P}"]))
    out.append(("dir", ["allocate", "--budget", "3.5", "--method", "gp", "--pool", "{P}"]))
    return out


def pool_cases(rng: random.Random) -> list[tuple[str, bytes]]:
    rec = {"task": "sst2", "metric": "accuracy", "value": 0.8, "model": "smollm2-135m", "config_path": "nf4"}
    lines = [b"[1,2]", b"1", b'"x"', b"null", b"true", b"{", b'{"task":', b"\xff\xfe",
             dumps({**rec, "config": "nf4", "config_path": None}),
             dumps({**rec, "config_path": "missing.json"}), dumps({**rec, "config_path": "nf5"}),
             dumps({**rec, "value": "high"}), dumps({**rec, "value": None}), dumps({k: v for k, v in rec.items() if k != "value"}),
             dumps({**rec, "config": {"format": FORMAT, "default": {"bits": 5}}, "config_path": None}),
             dumps({**rec, "config": {"format": FORMAT, "default": {"where": 4}}, "config_path": None}),
             dumps({**rec, "fingerprint": "0123456789abcdef"}), dumps({**rec, "config_path": ""}),
             dumps({**rec, "config_path": 5}), dumps({**rec, "config_path": []})]
    out = []
    for i, line in enumerate(lines):
        out.append((f"pool-line-{i}", line + b"\n" + dumps(rec) + b"\n"))
        out.append((f"pool-line-{i}-last", dumps(rec) + b"\n" + line + b"\n"))
    for i, data in enumerate([b"", b"\n\n", b"{}", b"[]", b'{"format":"coalora.pool/v1"}',
                              b'{"format":"coalora.pool/v1","fingerprint":"9b1e45d5e1ef4a64","points":5}',
                              b'{"format":"coalora.pool/v1","fingerprint":"9b1e45d5e1ef4a64","points":[{}]}',
                              b'{"format":"coalora.pool/v1","fingerprint":"9b1e45d5e1ef4a64"}',
                              b"[" * 5000, b"\xff\xfe{}", dumps({**rec, "task": "other"}) + b"\n" + dumps(rec) + b"\n"]):
        out.append((f"pool-file-{i}", data))
    return out


def refused(space, data: bytes) -> bool:
    from coalora.errors import CoaloraError

    try:
        space.loads(data, source="c")
    except CoaloraError:
        return True
    return False


def build() -> list[dict]:
    rng = random.Random(SEED)
    rows: list[dict] = []
    configs = config_cases(rng)
    try:
        from coalora.models import build_space_for

        space = build_space_for("smollm2-135m")
    except Exception as e:  # pragma: no cover - generator needs the repo's venv
        sys.exit(f"generate.py needs coalora and the default model's config: {e}")
    seen, dropped = set(), 0
    for name, data in configs:
        if data in seen or not refused(space, data):
            dropped += 1
            continue
        seen.add(data)
        rows.append({"name": name, "kind": "config", "data": base64.b64encode(data).decode()})
    for i, argv in enumerate(argv_cases()):
        rows.append({"name": f"argv-{i}-{argv[0]}", "kind": "argv", "argv": argv})
    for i, (setup, argv) in enumerate(path_cases()):
        rows.append({"name": f"path-{i}-{setup}-{argv[0]}", "kind": "path", "setup": setup, "argv": argv})
    for name, data in pool_cases(rng):
        rows.append({"name": name, "kind": "pool", "data": base64.b64encode(data).decode()})
    print(f"{len(rows)} cases ({len(configs) - dropped} configuration files kept, {dropped} dropped as "
          f"duplicates or accidentally valid)", file=sys.stderr)
    return rows


def main() -> None:
    rows = build()
    names = [r["name"] for r in rows]
    assert len(names) == len(set(names)), "case names must be unique"
    with open(HERE / "corpus.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=True) + "\n")


if __name__ == "__main__":
    main()
