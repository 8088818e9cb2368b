"""Smoke test of the benchmark program: it runs at tiny sizes and produces numbers.

A benchmark is never a timed test: nothing here asserts how fast anything is, only that
``python3 -m bench`` drives the real server end to end and reports figures beside their
anchors (Redis where redis-server is installed; without it, one line says so and the rest
is still measured).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_bench(tmp_path: Path, only: str, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess[str], dict]:
    out = tmp_path / "results.json"
    process = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", only, "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=env,
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
    assert positive(relay["figure"]) and positive(relay["steps"])
    server = relay["details"]["server"]
    assert server["acks"] > 0
    assert server["log_lines"] >= server["acks"]  # every acknowledged message was logged
    if shutil.which("openssl"):  # the same relay over TLS, measured beside it
        assert positive(rows["relay_tls"]["figure"]) and rows["relay_tls"]["anchor"] == relay["figure"]
    if shutil.which("redis-server"):
        assert positive(relay["anchor"]) and positive(relay["ratio"])
        assert positive(rows["relay vs Redis pub/sub"]["anchor"])
        assert relay["details"]["anchor_run"]["acks"] > 0

    for name in ("login", "login (scrypt)"):
        login = rows[name]
        assert positive(login["figure"])
        assert login["details"]["cycles"] == 100  # every login/logout completed
        assert login["details"]["userlog_empty"]

    for name in rows:  # the table is printed too
        assert f"| {name} " in process.stdout


@pytest.mark.skipif(not shutil.which("redis-server"), reason="redis-server is not installed: the run without it is "
                    "test_quick_relay_and_login_produce_numbers itself")
def test_quick_relay_without_redis_says_so_and_measures_the_rest(tmp_path: Path) -> None:
    empty = tmp_path / "bin"  # a PATH where no redis-server is found
    empty.mkdir()
    process, result = run_bench(tmp_path, "relay", env={**os.environ, "PATH": str(empty)})
    assert process.stdout.count("no redis-server installed") == 1
    relay = result["rows"][0]
    assert [r["name"] for r in result["rows"]] in (["relay"], ["relay", "relay_tls"])
    assert relay["name"] == "relay" and positive(relay["figure"]) and positive(relay["steps"])
    assert relay["anchor"] is None and relay["ratio"] is None and relay["met"] is not True


def test_group_and_latency_beside_redis(tmp_path: Path) -> None:
    _, result = run_bench(tmp_path, "group,latency")
    rows = {r["name"]: r for r in result["rows"]}
    group, latency = rows["group fan-out"], rows["latency p99"]
    assert positive(group["figure"]) and positive(latency["figure"])
    assert group["details"]["server"]["deliveries"] == group["details"]["server"]["posted"] * 49
    if shutil.which("redis-server"):
        assert positive(group["anchor"]) and positive(latency["anchor"])


def test_quick_p2pvideo_row_has_its_ceiling(tmp_path: Path) -> None:
    process, result = run_bench(tmp_path, "p2pvideo")
    rows = result["rows"]
    assert rows and all(r["name"].startswith("p2pvideo") for r in rows)
    for r in rows:
        assert positive(r["anchor"])  # the raw UDP blast (or the TCP copy) is always measured
        assert positive(r["details"]["transfer"]["ceiling_MBps"])
        assert positive(r["figure"]) or r["note"]  # a transfer figure, or why there is none

    # the default datagram beside a plain TCP copy of the same file, measured in the same run (SPEC §8)
    default = next(r for r in rows if r["name"] == "p2pvideo: default datagram")
    transfer = default["details"]["transfer"]
    tcp = transfer["tcp_copy"]
    assert tcp["identical"] and tcp["bytes"] == transfer["bytes"] and positive(tcp["MBps"])
    assert default["anchor"] == tcp["MBps"] and default["target"] == ">= 0.35 x Python TCP copy, intact"
    if positive(default["figure"]):
        assert default["ratio"] == default["figure"] / tcp["MBps"]
        assert default["met"] == (transfer["identical"] and default["ratio"] >= 0.35)
    table_line = next(l for l in process.stdout.splitlines() if l.startswith("| p2pvideo: default datagram "))
    assert ">= 0.35 x Python TCP copy" in table_line and f"{tcp['MBps']:,.0f} MB/s" in table_line
