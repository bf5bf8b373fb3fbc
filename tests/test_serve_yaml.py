"""`serve run squad.yaml` from the repo root as a user runs it, called over real HTTP."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.real
ROOT = Path(__file__).resolve().parent.parent


def test_serve_run_squad_yaml():
    serve_bin = Path(sys.executable).parent / "serve"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local Ray, as a user gets
    env["HF_HUB_OFFLINE"] = "1"
    log = open(ROOT / "out" / "serve_run_test.log", "w") if (ROOT / "out").is_dir() else subprocess.DEVNULL
    proc = subprocess.Popen([str(serve_bin), "run", "squad.yaml"], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline, health = time.time() + 420, None
        while time.time() < deadline:
            assert proc.poll() is None, "serve run exited early"
            try:
                health = httpx.get("http://127.0.0.1:8000/healthz", timeout=5)
                if health.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(3)
        assert health is not None and health.status_code == 200, "squad.yaml app did not become healthy"
        r = httpx.post("http://127.0.0.1:8000/v1/correct", timeout=300, json={
            "question": "What is the boiling point of water at sea level?",
            "answer": "Water boils at 100 degrees Celsius (212 degrees Fahrenheit) at sea level."})
        assert r.status_code == 200 and set(r.json()["scores"]) == {"ethics", "helpfulness", "honesty"}
        r = httpx.post("http://127.0.0.1:8000/v1/chat/completions", timeout=300, json={
            "model": "aligner-squad", "messages": [{"role": "user", "content": "What is the capital of France?"}]})
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"].strip()
        assert r.json()["squad"]["question"] == "What is the capital of France?"
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
