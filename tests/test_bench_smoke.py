"""Smoke test of the benchmark program: it runs at tiny sizes and produces numbers.

A benchmark is never a timed test: nothing here asserts how fast anything is, only that
``python3 -m bench`` drives the real server end to end and reports figures and ceilings.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_bench(tmp_path: Path, only: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    out = tmp_path / "results.json"
    process = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", only, "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    return process, json.loads(out.read_text())


def positive(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_quick_relay_and_login_produce_numbers(tmp_path: Path) -> None:
    process, result = run_bench(tmp_path, "relay,login")
    rows = {r["name"]: r for r in result["rows"]}
    assert {"relay", "login"} <= set(rows)
    assert result["quick"] is True
    assert result["machine"]["nproc"] >= 1 and result["machine"]["python"]

    relay = rows["relay"]
    assert positive(relay["figure"]) and positive(relay["ceiling"]) and positive(relay["ratio"])
    server = relay["details"]["server"]
    assert server["acks"] > 0
    assert server["log_lines"] >= server["acks"]  # every acknowledged message was logged
    if shutil.which("openssl"):  # the same relay over TLS, measured beside it
        assert positive(rows["relay_tls"]["figure"]) and rows["relay_tls"]["ceiling"] == relay["figure"]

    for name in ("login", "login (scrypt)"):
        login = rows[name]
        assert positive(login["figure"])
        assert login["details"]["cycles"] == 100  # every login/logout completed
        assert login["details"]["userlog_empty"]

    for name in rows:  # the table is printed too
        assert f"| {name} " in process.stdout


def test_quick_p2pvideo_row_has_its_ceiling(tmp_path: Path) -> None:
    _, result = run_bench(tmp_path, "p2pvideo")
    rows = result["rows"]
    assert rows and all(r["name"].startswith("p2pvideo") for r in rows)
    for r in rows:
        assert positive(r["ceiling"])  # the raw UDP blast is always measured
        assert positive(r["figure"]) or r["note"]  # a transfer figure, or why there is none
