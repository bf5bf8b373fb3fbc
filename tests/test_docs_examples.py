"""Every example in README.md and docs/*.md runs, so none goes stale.

The rules the documentation follows (checked here):
- A fenced block tagged ```python or ```bash is an example and runs: python blocks in a fresh
  interpreter, bash blocks with ``bash -e``; both from the repository root, with this interpreter's
  bin folder (``.venv/bin``) first on PATH, offline (HF_HUB_OFFLINE=1, W&B offline, no RAY_ADDRESS,
  so every example starts its own local Ray as a user's would).
- Blocks that are not examples carry another tag (```text, ```yaml, ```console, ...); an untagged
  fence is an error.
- An example that succeeds prints nothing a user would take for trouble on stderr (``NOISE``:
  warnings, error-level log lines, tracebacks); the project's own ``[squad]`` notes are fine.
- An example that cannot run here (a GPU, a hosted API, a teacher or judge LLM) has
  ``<!-- example: skip (the reason) -->`` on the line before its fence. Skips must name a reason
  and stay few (``MAX_SKIPS``).
- ``<!-- example: server (...) -->`` marks the block that starts the served squad
  (``serve run squad.yaml``). It runs once, in the background, from the first example on; every
  example that talks to ``127.0.0.1:8000`` waits until ``/healthz`` answers, and the server is
  stopped when the examples are done. So that a concurrent ``serve run`` (another test, another
  user) cannot collide with it, it listens on a free port: the test serves a copy of
  ``squad.yaml`` that differs only in the port, and the examples' ``127.0.0.1:8000`` becomes that port.

The examples run a few at a time (``SQUAD_DOCS_JOBS``, default 2) while the server starts, and each
one is still its own test, named by file and line, that fails with the block's output.
"""
from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN_LANGS = {"python", "bash"}
MAX_SKIPS = 6
SERVER_COMMAND = "serve run squad.yaml"
SERVE_URL = re.compile(r"(127\.0\.0\.1|localhost):8000\b")
EXAMPLE_TIMEOUT_S = 900
# Only an ordering hint for the runner (these start Ray or decode with the models in-process).
SLOW_COMMANDS = ("squad train", "squad synth", "squad sweep", "squad batch", "squad eval")
SERVER_START_S = 900
# What a user must not see from a working example: Python warnings, log lines at WARNING or ERROR
# (Python's logging, Ray's, glog's "[date E pid tid] file.cc:"), tracebacks.
NOISE = re.compile(r"\b\w*Warning\b|\bWARNING\b|\bERROR\b|^\[[^\]]* [EW] \d+ \d+\]|Traceback", re.M)

FENCE = re.compile(r"^ {0,3}(`{3,})(.*)$")
MARKER = re.compile(r"^<!--\s*example:\s*(.*?)\s*-->$")
MARKER_FORM = re.compile(r"^(skip|server)\s*\((.*)\)$")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int              # 1-based line of the opening fence
    lang: str
    code: str
    marker: str | None     # None, "skip" or "server"
    reason: str | None     # the marker's text in brackets
    marker_error: str | None = None

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path}:{self.line}"

    @property
    def runs(self) -> bool:
        return self.lang in RUN_LANGS and self.marker is None

    @property
    def needs_server(self) -> bool:
        return bool(SERVE_URL.search(self.code))


def parse_blocks(path: Path) -> list[Block]:
    """Every fenced block of a markdown file, with the example marker on the line before it."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, lang, start = m.group(1), m.group(2).strip(), i
        j = i + 1
        while j < len(lines) and not re.match(r"^ {0,3}" + fence + r"`*\s*$", lines[j]):
            j += 1
        if j == len(lines):
            raise AssertionError(f"{path}:{start + 1}: code fence never closed")
        k = start - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        marker = reason = error = None
        mm = MARKER.match(lines[k].strip()) if k >= 0 else None
        if mm:
            form = MARKER_FORM.match(mm.group(1))
            if form:
                marker, reason = form.group(1), form.group(2).strip()
            else:
                error = f"malformed example marker {lines[k].strip()!r}: use 'skip (reason)' or 'server (note)'"
        blocks.append(Block(path, start + 1, lang.split()[0] if lang else "", "\n".join(lines[start + 1:j]) + "\n",
                            marker, reason, error))
        i = j + 1
    return blocks


def all_blocks() -> list[Block]:
    return [b for p in DOC_FILES for b in parse_blocks(p)]


def example_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PYTEST_CURRENT_TEST")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", RAY_USAGE_STATS_ENABLED="0",
               WANDB_SILENT="true", WANDB_MODE="offline", PYTHONUNBUFFERED="1")
    return env


def with_port(code: str, port: int) -> str:
    return SERVE_URL.sub(lambda m: f"{m.group(1)}:{port}", code)


def run_block(block: Block, port: int | None = None, timeout: float = EXAMPLE_TIMEOUT_S) -> str | None:
    """Run one example; None when it succeeded, else a message naming its file and line."""
    code = with_port(block.code, port) if port else block.code
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="docs-example-") as tmp:
        if block.lang == "python":
            script = Path(tmp) / "example.py"
            script.write_text(code, encoding="utf-8")
            cmd = [sys.executable, str(script)]
        else:
            cmd = ["bash", "-e", "-c", code]
        try:
            done = subprocess.run(cmd, cwd=ROOT, env=example_env(), capture_output=True, text=True,
                                  timeout=timeout, start_new_session=True)
        except subprocess.TimeoutExpired as e:
            out = e.stdout or ""
            out = (out.decode(errors="replace") if isinstance(out, bytes) else out)[-4000:]
            return f"{block.where}: {block.lang} example ran past {timeout:.0f} s\n{block.code}--- output (tail) ---\n{out}"
    took = time.perf_counter() - t0
    if block.path in DOC_FILES:
        TIMINGS[block.where] = took
    if done.returncode != 0:
        out = (done.stdout + done.stderr)[-4000:]
        return (f"{block.where}: {block.lang} example failed with exit code {done.returncode} after {took:.0f} s\n"
                f"{block.code}--- output (tail) ---\n{out}")
    noise = [line for line in done.stderr.splitlines() if NOISE.search(line) and not line.startswith("[squad] ")]
    if noise:
        return (f"{block.where}: {block.lang} example worked but printed {len(noise)} warning or error line(s):\n"
                + "\n".join(noise[:20]))
    return None


TIMINGS: dict[str, float] = {}


# ---------------------------------------------------------------------------------------------
# The rules (fast; no models).


def test_every_fence_is_tagged():
    untagged = [b.where for b in all_blocks() if not b.lang]
    assert not untagged, ("untagged code fences (tag examples python/bash, other blocks text/yaml/console/...): "
                          + ", ".join(untagged))


def test_markers_are_well_formed_and_skips_few():
    blocks = all_blocks()
    errors = [f"{b.where}: {b.marker_error}" for b in blocks if b.marker_error]
    errors += [f"{b.where}: a skip must say why: <!-- example: skip (reason) -->"
               for b in blocks if b.marker == "skip" and not b.reason]
    errors += [f"{b.where}: marker on a {b.lang or 'untagged'} block, which never runs anyway"
               for b in blocks if b.marker and b.lang not in RUN_LANGS]
    errors += [f"{b.where}: the server block must be exactly `{SERVER_COMMAND}`"
               for b in blocks if b.marker == "server" and b.code.strip() != SERVER_COMMAND]
    assert not errors, "\n".join(errors)
    skips = [f"{b.where} ({b.reason})" for b in blocks if b.marker == "skip"]
    assert len(skips) <= MAX_SKIPS, f"{len(skips)} skipped examples, at most {MAX_SKIPS}:\n" + "\n".join(skips)
    servers = [b for b in blocks if b.marker == "server"]
    if any(b.runs and b.needs_server for b in blocks):
        assert servers, "examples call 127.0.0.1:8000 but no block is marked <!-- example: server (...) -->"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.M | re.S)
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.*)$", text, re.M)}


def test_links_resolve():
    """Every relative link and image in the docs names a file that exists, and an anchor it has."""
    broken = []
    for path in [*DOC_FILES, ROOT / "CHANGELOG.md"]:
        text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.M | re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+://|^mailto:", target):
                continue
            file, _, anchor = target.partition("#")
            dest = (path.parent / file).resolve() if file else path
            if not dest.exists():
                broken.append(f"{path.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{path.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_the_runner_fails_on_a_failing_example(tmp_path):
    """A broken example fails, naming its file and line; a working one passes."""
    doc = tmp_path / "broken.md"
    doc.write_text("# t\n\n```bash\necho fine\n```\n\n```python\nraise SystemExit('stale example')\n```\n\n"
                   "<!-- example: skip (needs a GPU) -->\n```bash\nexit 1\n```\n\n```text\nnot run\n```\n")
    good, bad, skipped, text = parse_blocks(doc)
    assert (good.line, bad.line, skipped.line) == (3, 7, 12) and skipped.marker == "skip"
    assert skipped.reason == "needs a GPU" and not skipped.runs and not text.runs
    assert run_block(good) is None
    msg = run_block(bad)
    assert msg and msg.startswith(f"{doc}:7: python example failed") and "stale example" in msg
    msg = run_block(Block(doc, 3, "bash", "true\nfalse\necho not reached\n", None, None))
    assert msg and msg.startswith(f"{doc}:3: bash example failed with exit code 1") and "not reached" not in msg.split("---")[-1]
    noisy = "echo '/x.py:3: FutureWarning: soon' >&2\necho '[2026-12-07 08:19:39,316 E 1 1] core_worker.cc:1: x' >&2\n"
    msg = run_block(Block(doc, 3, "bash", noisy + "echo '[squad] a note of ours' >&2\n", None, None))
    assert msg and msg.startswith(f"{doc}:3: bash example worked but printed 2 warning or error line(s)")
    assert "FutureWarning" in msg and "core_worker" in msg and "a note of ours" not in msg


# ---------------------------------------------------------------------------------------------
# The examples themselves (real models: the shipped bundle, the embedded SmolLM2 and MiniLM).


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Runner:
    """Runs the selected examples a few at a time, and the served squad for those that need it."""

    def __init__(self, blocks: list[Block], workdir: Path, jobs: int, serve: bool = False):
        self.blocks = blocks
        self.serve = serve  # start the server even if no selected example needs it
        self.workdir = workdir
        self.jobs = jobs
        self.started = time.perf_counter()
        self.pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="docs-example")
        self.futures: dict[str, Future] = {}
        self.server: subprocess.Popen | None = None
        self.port: int | None = None

    def start(self):
        self.started = time.perf_counter()
        local = [b for b in self.blocks if not b.needs_server]
        served = [b for b in self.blocks if b.needs_server]
        if served or self.serve:
            self._start_server()
            for b in served:
                self.futures[b.where] = Future()
            threading.Thread(target=self._run_served, args=(served,), daemon=True).start()
        # Longest first, so that they overlap the server's start and the short ones fill the end.
        for b in sorted(local, key=lambda b: not any(cmd in b.code for cmd in SLOW_COMMANDS)):
            self.futures[b.where] = self.pool.submit(run_block, b)

    def _start_server(self):
        block = next(b for b in all_blocks() if b.marker == "server")
        self.server_block = block
        self.port = _free_port()
        config = self.workdir / "squad.yaml"
        text = (ROOT / "squad.yaml").read_text(encoding="utf-8")
        assert re.search(r"^\s*port: 8000$", text, re.M), "squad.yaml no longer serves on port 8000"
        config.write_text(re.sub(r"^(\s*)port: 8000$", rf"\g<1>port: {self.port}", text, flags=re.M), encoding="utf-8")
        self.server_log = self.workdir / "serve_run.log"
        command = block.code.strip().replace("squad.yaml", str(config))
        # Ray token auth, explicit, so that `serve deploy` can reach this cluster (`serve run` turns it on
        # by itself when ~/.ray/auth_token exists, and `serve deploy` only sends a token when told to).
        self.server_env = {**example_env(), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
        self.config = config
        with open(self.server_log, "w") as log:
            self.server = subprocess.Popen(["bash", "-e", "-c", command], cwd=ROOT, env=self.server_env, stdout=log,
                                           stderr=subprocess.STDOUT, start_new_session=True)

    def _wait_healthy(self) -> str | None:
        import httpx

        deadline = time.time() + SERVER_START_S
        url = f"http://127.0.0.1:{self.port}/healthz"
        while time.time() < deadline:
            if self.server.poll() is not None:
                return f"exited with code {self.server.returncode}"
            try:
                if httpx.get(url, timeout=5).status_code == 200:
                    return None
            except httpx.HTTPError:
                pass
            if "Deploying app 'squad' failed" in self.server_log.read_text(errors="replace"):
                return "the app failed to deploy"
            time.sleep(3)
        return f"not healthy after {SERVER_START_S} s"

    def _run_served(self, served: list[Block]):
        t0 = time.perf_counter()
        self.health_problem = problem = self._wait_healthy()
        if problem is None:
            TIMINGS[f"{self.server_block.where} (server start)"] = time.perf_counter() - t0
        for b in served:
            fut = self.futures[b.where]
            if problem:
                tail = self.server_log.read_text(errors="replace")[-4000:]
                fut.set_result(f"{b.where} needs the server of {self.server_block.where} ({SERVER_COMMAND}), "
                               f"which {problem}:\n{tail}")
                continue
            try:
                fut.set_result(run_block(b, port=self.port))
            except Exception as e:  # noqa: BLE001 - reported through the example's own test
                fut.set_result(f"{b.where}: {type(e).__name__}: {e}")

    def result(self, where: str) -> str | None:
        return self.futures[where].result()

    def stop(self):
        self.pool.shutdown(wait=False, cancel_futures=True)
        if self.server is not None and self.server.poll() is None:
            os.killpg(self.server.pid, signal.SIGINT)
            try:  # `serve run` stops its local Ray slowly; nothing is kept after the session
                self.server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.server.pid, signal.SIGKILL)
                self.server.wait(timeout=30)


def _params():
    out = []
    for b in all_blocks():
        if b.lang not in RUN_LANGS or b.marker == "server":
            continue
        marks = [pytest.mark.skip(reason=f"{b.where}: {b.reason}")] if b.marker == "skip" else []
        out.append(pytest.param(b, id=b.where.replace(os.sep, "/"), marks=marks))
    return out


@pytest.fixture(scope="module")
def runner(request, tmp_path_factory):
    selected = [it.callspec.params["block"] for it in request.session.items
                if getattr(it, "function", None) is test_example and it.callspec.params["block"].runs]
    serve = any(getattr(it, "function", None) is test_served_squad_reconfigures_in_place for it in request.session.items)
    jobs = int(os.environ.get("SQUAD_DOCS_JOBS", "2"))
    r = Runner(selected, tmp_path_factory.mktemp("docs_examples"), jobs, serve=serve)
    r.start()
    yield r
    r.stop()


@pytest.mark.real
@pytest.mark.timeout(EXAMPLE_TIMEOUT_S + SERVER_START_S + 300)
@pytest.mark.parametrize("block", _params())
def test_example(block: Block, runner: Runner):
    problem = runner.result(block.where)
    if problem:
        pytest.fail(problem, pytrace=False)


@pytest.mark.real
@pytest.mark.timeout(EXAMPLE_TIMEOUT_S + SERVER_START_S + 300)
def test_example_timings(runner: Runner, capsys):
    """Not a check: prints how long each example took (they overlap), once every example is done."""
    for fut in runner.futures.values():
        fut.result()
    with capsys.disabled():
        print(f"\ndocs examples: {time.perf_counter() - runner.started:.0f} s wall, {len(runner.futures)} examples, "
              f"{runner.jobs} at a time beside the server; each one's own time:")
        for where, took in sorted(TIMINGS.items(), key=lambda kv: -kv[1]):
            print(f"  {took:6.1f} s  {where}")


@pytest.mark.real
@pytest.mark.timeout(EXAMPLE_TIMEOUT_S + SERVER_START_S + 300)
def test_served_squad_reconfigures_in_place(runner: Runner):
    """After the examples, on the same `serve run squad.yaml`: the live settings are squad.yaml's, and
    `serve deploy` of a copy that changes only the user_config reconfigures the running ingress
    replica instead of replacing it."""
    import httpx

    for fut in runner.futures.values():
        fut.result()
    while runner.server is not None and not hasattr(runner, "health_problem"):
        time.sleep(1)
    assert runner.server is not None and runner.health_problem is None, runner.server_log.read_text()[-3000:]
    url = f"http://127.0.0.1:{runner.port}/healthz"
    health = httpx.get(url, timeout=10).json()
    assert health["runtime"]["thresholds"] == {"ethics": 0.5, "helpfulness": 0.5, "honesty": 0.5}
    assert health["runtime"]["max_steps"] == 3
    edited = runner.workdir / "squad-edited.yaml"
    edited.write_text(runner.config.read_text().replace("max_steps: 3", "max_steps: 1").replace(
        "{ethics: 0.5, helpfulness: 0.5, honesty: 0.5}", "{ethics: 0.5, helpfulness: 0.5, honesty: 0.99}"))
    dashboard = re.search(r"dashboard at \S*?(http://[\d.]+:\d+)", runner.server_log.read_text())
    assert dashboard, "serve run did not print its dashboard address"
    serve_bin = Path(sys.executable).parent / "serve"
    done = subprocess.run([str(serve_bin), "deploy", str(edited), "-a", dashboard.group(1)], cwd=ROOT,
                          env=runner.server_env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    deadline, now = time.time() + 120, health
    while time.time() < deadline:
        now = httpx.get(url, timeout=10).json()
        if now.get("runtime", {}).get("max_steps") == 1:
            break
        time.sleep(2)
    assert now["runtime"]["thresholds"]["honesty"] == 0.99 and now["runtime"]["max_steps"] == 1
    assert now["replica"] == health["replica"], "the ingress replica was restarted"
