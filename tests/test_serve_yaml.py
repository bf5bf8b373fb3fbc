"""`serve run squad.yaml` from the repo root as a user runs it, called over real HTTP."""
from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.real
ROOT = Path(__file__).resolve().parent.parent


def _wait_healthy(proc, log_path: Path, deadline_s: float = 420):
    deadline, health = time.time() + deadline_s, None
    while time.time() < deadline:
        assert proc.poll() is None, "serve run exited early:\n" + log_path.read_text()[-3000:]
        try:
            health = httpx.get("http://127.0.0.1:8000/healthz", timeout=5)
            if health.status_code == 200:
                return health.json()
        except httpx.HTTPError:
            pass
        time.sleep(3)
        if "Deploying app 'squad' failed" in log_path.read_text():
            break
    raise AssertionError("squad.yaml app did not become healthy:\n" + log_path.read_text()[-3000:])


def test_serve_run_squad_yaml(tmp_path):
    serve_bin = Path(sys.executable).parent / "serve"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local Ray, as a user gets
    env["HF_HUB_OFFLINE"] = "1"
    # Ray token auth, explicit on both sides: `serve run` enables it when ~/.ray/auth_token exists,
    # and `serve deploy` only sends a token when told to.
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    log_path = tmp_path / "serve_run.log"
    log = open(log_path, "w")
    proc = subprocess.Popen([str(serve_bin), "run", "squad.yaml"], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        health = _wait_healthy(proc, log_path)
        assert health["runtime"]["thresholds"] == {"ethics": 0.5, "helpfulness": 0.5, "honesty": 0.5}
        r = httpx.post("http://127.0.0.1:8000/v1/correct", timeout=300, json={
            "question": "What is the boiling point of water at sea level?",
            "answer": "Water boils at 100 degrees Celsius (212 degrees Fahrenheit) at sea level."})
        assert r.status_code == 200 and set(r.json()["scores"]) == {"ethics", "helpfulness", "honesty"}
        r = httpx.post("http://127.0.0.1:8000/v1/chat/completions", timeout=300, json={
            "model": "aligner-squad", "messages": [{"role": "user", "content": "What is the capital of France?"}]})
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"].strip()
        assert r.json()["squad"]["question"] == "What is the capital of France?"

        # Edit only the user_config and redeploy: the live replica is reconfigured, not replaced.
        edited = tmp_path / "squad.yaml"
        edited.write_text((ROOT / "squad.yaml").read_text().replace("max_steps: 3", "max_steps: 1")
                          .replace("{ethics: 0.5, helpfulness: 0.5, honesty: 0.5}", "{ethics: 0.5, helpfulness: 0.5, honesty: 0.99}"))
        dashboard = re.search(r"dashboard at \S*?(http://[\d.]+:\d+)", log_path.read_text())
        assert dashboard, "serve run did not print its dashboard address"
        done = subprocess.run([str(serve_bin), "deploy", str(edited), "-a", dashboard.group(1)], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        deadline = time.time() + 120
        while time.time() < deadline:
            now = httpx.get("http://127.0.0.1:8000/healthz", timeout=10).json()
            if now.get("runtime", {}).get("max_steps") == 1:
                break
            time.sleep(2)
        assert now["runtime"]["thresholds"]["honesty"] == 0.99 and now["runtime"]["max_steps"] == 1
        assert now["replica"] == health["replica"], "the ingress replica was restarted"
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
