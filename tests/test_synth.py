"""``squad synth`` (squad/data/synth.py, squad/cli/synth.py) against a real fake OpenAI-compatible server.

The server (``http.server`` on 127.0.0.1, a free port, a background thread) answers each prompt
kind deterministically; it recognises the kind by the opening text of the ethics policy's templates.
Its questions include duplicates, one whose correction is identical to its answer, one whose
correction is empty, one the server refuses (HTTP 400), and one with ``{principle}`` and
``<|im_end|>`` in it.
"""
from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from squad.cli.main import main
from squad.data.rows import CorrectionRow, read_jsonl
from squad.errors import ConfigError, SquadError
from squad.config.policy import load_policy, default_policies_dir
from squad.data.synth import (PROMPT_KEYS, SynthConfig, SynthPrompts, TeacherError, clean, fill, load_synth_policy,
                         make_teacher, parse_list, synthesize)

ROOT = Path(__file__).resolve().parent.parent
KEY_ENV, KEY = "SQUAD_TEST_TEACHER_KEY", "sk-test-123"
INJECT = "What does {principle} mean next to <|im_end|> in a chat log?"
TOPICS_1 = "Sure! Here are some topics:\n\n1. Kitchen knives\n2) \"Online privacy\"\n- Office manners\n"
TOPICS_2 = "* Glaciers\n* Night driving\n* Pet care\n"
QUESTIONS = {
    "Kitchen knives": "1. How should I store kitchen knives safely?\n2. How do I store my kitchen knives safely?\n"
                      "3. Which knife should a beginner cook buy?",  # a near duplicate
    "Online privacy": f"Questions:\n1. how should I store  kitchen knives safely?\n"  # an exact duplicate
                      f"2. {INJECT}\n3. Is it fine to post photos of strangers online?",
    "Office manners": "1. Why are my coworkers from that country so lazy?\n"
                      "2. What should I tell a colleague who keeps talking about lighthouses?\n"
                      "3. How do I politely leave a boring volcano lecture?",
    "Glaciers": "1. Are glaciers melting because of me?\n2. Which glacier is the largest?\n3. How do glaciers move?",
    "Night driving": "1. How do I stay awake driving at night?\n2. Are yellow glasses good at night?\n"
                     "3. Should I flash my lights at other cars?",
    "Pet care": "1. How often should a cat see a vet?\n2. Can dogs eat grapes?\n3. How do I trim a rabbit's nails?",
}
ANSWER = "Figure it out yourself, it is obvious."


class FakeTeacher:
    """An OpenAI-compatible server on loopback that records every request."""

    def __init__(self, prompts: SynthPrompts):
        self.prefixes = {k: getattr(prompts, k).split("{")[0] for k in PROMPT_KEYS[1:]}
        self.requests: list[dict] = []
        self.topic_calls = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def kind(self, prompt: str) -> str:
        return next(k for k, p in self.prefixes.items() if prompt.startswith(p))

    def reply(self, prompt: str) -> tuple[int, str]:
        kind = self.kind(prompt)
        if kind == "topics":
            self.topic_calls += 1
            return 200, TOPICS_1 if self.topic_calls == 1 else TOPICS_2
        if kind == "questions":
            return 200, next(v for k, v in QUESTIONS.items() if f"Topic: {k}\n" in prompt)
        if kind == "answer":
            return (400, "prompt rejected by the fake server") if "melting" in prompt else (200, ANSWER)
        if kind == "critique":
            return 200, "Critique: the tone is dismissive and it gives no help."
        if "lighthouses" in prompt:
            return 200, "  FIGURE it out yourself,\n it is obvious. "  # identical after strip/casefold
        return 200, "  " if "volcano" in prompt else "Corrected answer: Here is a calm, respectful answer."

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code: int, obj: dict):
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                fake.requests.append({"path": self.path, "auth": self.headers.get("Authorization")})
                self._send(200, {"object": "list", "data": [{"id": "fake-teacher", "object": "model",
                                                             "created": 0, "owned_by": "test"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["messages"][0]["content"]
                fake.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body,
                                      "kind": fake.kind(prompt)})
                code, text = fake.reply(prompt)
                if code != 200:
                    return self._send(code, {"error": {"message": text, "type": "invalid_request_error"}})
                self._send(200, {"id": "c1", "object": "chat.completion", "created": 0, "model": body["model"],
                                 "choices": [{"index": 0, "finish_reason": "stop",
                                              "message": {"role": "assistant", "content": text}}]})

        return Handler

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def ethics():
    return load_synth_policy("ethics")


@pytest.fixture
def fake(ethics):
    f = FakeTeacher(ethics[1])
    yield f
    f.close()


@pytest.fixture(scope="module")
def embed():
    from squad.eval.metrics import Embedder

    return Embedder()


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# Prompts and parsing


def test_every_policy_has_valid_synth_prompts():
    for name in ("ethics", "helpfulness", "honesty"):
        _, prompts = load_synth_policy(name)
        assert prompts.version == "v1"
    answers = {load_synth_policy(n)[1].answer for n in ("ethics", "helpfulness", "honesty")}
    assert len(answers) == 3  # tailored per policy


def test_fill_is_one_pass():
    out = fill("Q: {question} / P: {principle}", {"question": "use {principle} and {{x}} {0}", "principle": "be kind"})
    assert out == "Q: use {principle} and {{x}} {0} / P: be kind"


def test_parse_list_formats():
    text = ("Here are five topics:\n\n1. Alpha\n2) \"Beta\"\n\n- Gamma\n* 'Delta'\n• **Epsilon**\n3. alpha\n")
    assert parse_list(text) == ["Alpha", "Beta", "Gamma", "Delta", "Epsilon"]
    assert parse_list("Topics:\nOne thing\n\nAnother thing\n") == ["One thing", "Another thing"]
    assert parse_list("Sure:\n\n**1. Bake a cake**\n- **Question 2:** \"Why?\"\n") == ["Bake a cake", "Why?"]
    assert clean("  Corrected answer: Be kind. ") == "Be kind."


def _policy_dir(tmp_path: Path, synth: dict | None) -> Path:
    src = (default_policies_dir() / "ethics" / "policy.yaml").read_text(encoding="utf-8")
    text = src.split("# Teacher prompts for")[0]
    if synth is not None:
        text += "synth:\n" + "".join(f"  {k}: {json.dumps(v)}\n" for k, v in synth.items())
    folder = tmp_path / "pol" / "ethics"
    folder.mkdir(parents=True)
    (folder / "policy.yaml").write_text(text, encoding="utf-8")
    return folder.parent


def test_missing_synth_prompts_name_the_file_and_key(tmp_path, capsys):
    root = _policy_dir(tmp_path, None)
    with pytest.raises(ConfigError, match=r"ethics/policy.yaml: policy 'ethics' has no 'synth' prompts"):
        load_synth_policy("ethics", root)
    code = main(["synth", "--policy", "ethics", "--policies", str(root), "--teacher", "http://127.0.0.1:9",
                 "--output", str(tmp_path / "o.jsonl")])
    assert code == 2 and "has no 'synth' prompts" in capsys.readouterr().err

    good = load_policy(default_policies_dir() / "ethics").synth
    root2 = _policy_dir(tmp_path / "b", {k: v for k, v in good.items() if k != "critique"})
    with pytest.raises(ConfigError, match=r"policy.yaml: policy 'ethics': 'synth.critique' is missing"):
        load_synth_policy("ethics", root2)
    root3 = _policy_dir(tmp_path / "c", {**good, "answer": "Answer {questoin}"})
    with pytest.raises(ConfigError, match=r"'synth.answer' uses unknown placeholder \{questoin\}"):
        load_synth_policy("ethics", root3)
    with pytest.raises(ConfigError, match="no such policy 'nope'"):
        load_synth_policy("nope")


def test_unreachable_teacher_is_a_clear_fast_error(tmp_path, capsys):
    url = f"http://127.0.0.1:{free_port()}/v1"
    t0 = time.monotonic()
    with pytest.raises(TeacherError, match=f"cannot reach the teacher at {url}"):
        make_teacher(url, timeout=2, retries=0)
    code = main(["synth", "--policy", "ethics", "--teacher", url, "--teacher-model", "m", "--retries", "0",
                 "--timeout", "2", "--n", "2", "--output", str(tmp_path / "o.jsonl")])
    assert code == 2 and f"cannot reach the teacher at {url}" in capsys.readouterr().err
    assert time.monotonic() - t0 < 10


def test_bad_options_and_teacher_model_for_local_teacher(tmp_path, capsys):
    code = main(["synth", "--policy", "ethics", "--teacher", "x", "--n", "0", "--output", str(tmp_path / "o")])
    assert code == 2 and "--n 0: Input should be greater than or equal to 1" in capsys.readouterr().err
    with pytest.raises(SquadError, match="--teacher-model"):
        make_teacher("smollm2-135m-instruct", model="gpt")


# ---------------------------------------------------------------------------------------------
# The pipeline against the fake server


def test_cli_end_to_end(fake, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(KEY_ENV, KEY)
    out = tmp_path / "ethics.jsonl"
    code = main(["synth", "--policy", "ethics", "--teacher", fake.url, "--api-key-env", KEY_ENV, "--n", "6",
                 "--topics", "3", "--questions-per-topic", "3", "--output", str(out), "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0
    rows, rejects = lines(out), lines(Path(str(out) + ".rejects.jsonl"))
    assert [CorrectionRow.model_validate(r) for r in rows] == read_jsonl(out, CorrectionRow)
    assert len(rows) == summary["kept"] == 6 and summary["rejected"] == len(rejects) == 12
    # Every generated question is kept or rejected, once.
    assert summary["questions"] == 18 == len(rows) + sum("question_number" in r for r in rejects)
    assert summary["rounds"] == 2 and summary["teacher"] == f"fake-teacher @ {fake.url}"
    assert summary["reasons"] == {"not used": 7, "duplicate": 2, "empty correction": 1,
                                  "correction identical to answer": 1, "teacher error": 1}
    for r in rows:
        assert set(r) == {"question", "answer", "correction", "topic", "critique", "provenance"}
        assert r["answer"] == ANSWER and r["correction"] == "Here is a calm, respectful answer."
        assert r["critique"] == "the tone is dismissive and it gives no help."
        p = r["provenance"]
        assert (p["teacher"], p["prompt_version"], p["policy"]) == (summary["teacher"], "v1", "ethics")
        assert p["generated_at"].endswith("+00:00")
    # The injected question is data: kept verbatim, sent with braces intact and the marker broken.
    assert INJECT in [r["question"] for r in rows]
    sent = [q["body"]["messages"][0]["content"] for q in fake.requests if q.get("kind") == "answer"]
    inj = next(s for s in sent if "chat log" in s)
    assert "What does {principle} mean next to <\u200d|im_end|> in a chat log?" in inj
    assert all("<|im_end|>" not in s for s in sent)

    by = {r["question"]: r for r in rejects}
    dup = by["How do I store my kitchen knives safely?"]
    assert dup["stage"] == "dedup" and dup["reason"].startswith("duplicate of question 1 (cosine 0.9")
    assert dup["duplicate_of"] == "How should I store kitchen knives safely?"
    assert by["how should I store  kitchen knives safely?"]["reason"] == "duplicate of question 1 (identical)"
    assert by["How do I politely leave a boring volcano lecture?"]["reason"] == "empty correction"
    ident = by["What should I tell a colleague who keeps talking about lighthouses?"]
    assert ident["reason"] == "correction identical to answer" and ident["answer"] == ANSWER
    err = by["Are glaciers melting because of me?"]
    assert err["stage"] == "answer" and err["reason"].startswith("teacher error: HTTP 400")
    assert "prompt rejected by the fake server" in err["reason"]
    assert sum(r["reason"] == "not used: 6 rows already kept" for r in rejects) == 7

    # What the server saw: the key from the env var, the model from /v1/models, temperatures by step.
    assert fake.requests[0]["path"] == "/v1/models"
    assert {q["auth"] for q in fake.requests} == {f"Bearer {KEY}"}
    posts = [q for q in fake.requests if "body" in q]
    assert {q["body"]["model"] for q in posts} == {"fake-teacher"}
    temps = {q["kind"]: q["body"]["temperature"] for q in posts}
    assert temps == {"topics": 0.8, "questions": 0.8, "answer": 0.8, "critique": 0.2, "correction": 0.2}
    topic_prompts = [q["body"]["messages"][0]["content"] for q in posts if q["kind"] == "topics"]
    assert "Do not reuse these topics: none yet" in topic_prompts[0]
    assert "Do not reuse these topics: Kitchen knives; Online privacy; Office manners" in topic_prompts[1]
    # No answer is asked for a duplicate, nor for a question left over.
    assert sum(q["kind"] == "answer" for q in posts) == 9


def test_python_api_stops_short_and_says_so(fake, ethics, embed, tmp_path):
    policy, prompts = ethics
    teacher = make_teacher(fake.url, model="fake-teacher", timeout=5, retries=0, seed=7)
    out, rej = tmp_path / "o.jsonl", tmp_path / "r.jsonl"
    cfg = SynthConfig(n=50, topics_per_round=3, questions_per_topic=3, max_rounds=3)
    s = synthesize(policy, prompts, teacher, out, cfg, rejects=rej, embed=embed, progress=False)
    rows, rejects = read_jsonl(out, CorrectionRow), lines(rej)
    # Round 3 gets no new topics (the fake repeats round 2's), so the run stops short of n.
    assert (s.kept, s.rounds, s.questions) == (len(rows), 3, 18) and s.kept == 13
    assert rejects[-1] == {"stage": "topics", "reason": "no new topics in the teacher's reply", "reply": TOPICS_2}
    assert s.kept + sum("question_number" in r for r in rejects) == s.questions
    assert all(r.topic for r in rows)
    assert {q["body"].get("seed") for q in fake.requests if "body" in q} == {7}
    assert not any(q["path"] == "/v1/models" for q in fake.requests)  # the model was given


def test_cli_text_summary_and_exit_3_when_short(fake, tmp_path, capsys):
    out = tmp_path / "h.jsonl"
    code = main(["synth", "--policy", "ethics", "--teacher", fake.url.removesuffix("/v1"), "--n", "40",
                 "--topics", "3", "--questions-per-topic", "3", "--max-rounds", "1", "--output", str(out),
                 "--rejects", str(tmp_path / "rej.jsonl")])
    text = capsys.readouterr().out
    assert code == 3
    assert f"ethics: 5 rows kept (only 5 of 40 after 1 rounds) -> {out}, 4 rejected (duplicate 2," in text
    assert f"-> {tmp_path / 'rej.jsonl'}; 9 questions from fake-teacher @ {fake.url}" in text


# ---------------------------------------------------------------------------------------------
# The embedded model as a local teacher


@pytest.fixture
def one_torch_thread():
    """Generation on one thread: on a small shared CPU, two busy-waiting threads ran ~8x slower here."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.real
def test_local_teacher_smollm2(tmp_path, one_torch_thread):
    policy, prompts = load_synth_policy("helpfulness")
    teacher = make_teacher("smollm2-135m-instruct")
    assert teacher.complete(["Say hi."], 4)[0]  # one short reply
    out = tmp_path / "local.jsonl"
    cfg = SynthConfig(n=2, topics_per_round=2, questions_per_topic=2, max_tokens=64, max_rounds=2)
    t0 = time.monotonic()
    s = synthesize(policy, prompts, teacher, out, cfg, progress=False)
    print(f"\nsmollm2 synth n=2: {time.monotonic() - t0:.1f} s, {s.as_dict()}")
    rows = read_jsonl(out, CorrectionRow)
    rejects = lines(Path(s.rejects))
    assert len(rows) == s.kept >= 1
    assert s.kept + sum("question_number" in r for r in rejects) == s.questions
    for r in lines(out):
        print(json.dumps(r, ensure_ascii=False))
        assert r["provenance"]["teacher"] == "smollm2-135m-instruct"
        assert (r["provenance"]["prompt_version"], r["provenance"]["policy"]) == ("v1", "helpfulness")
        assert r["correction"].strip().casefold() != r["answer"].strip().casefold()
