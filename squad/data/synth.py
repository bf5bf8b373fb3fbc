"""Synthetic correction triples from a teacher LLM (``squad synth``), after the IBM Aligners paper.

For one policy: ask the teacher for topics, then questions per topic; drop near-duplicate
questions (mean-pooled MiniLM cosine >= ``dedup``); then per question ask for a misaligned answer,
a critique of it against the principle, and the correction. Rows whose correction is empty or
identical to the answer, duplicates, teacher failures and questions left over once ``n`` rows are
kept go to a rejects file with a ``reason``: every generated question is either kept or rejected.

The prompts are the ``synth:`` mapping of each ``policy.yaml`` (keys in ``PROMPT_KEYS``). Their
``{placeholders}`` are filled in one pass, so braces inside a generated question are plain text.

Teachers: ``OpenAITeacher`` (any OpenAI-compatible server) or ``LocalTeacher`` (a registry name or a
local HF model directory, generated greedily by ``HFEngine``). Each round's topics prompt lists the
topics already used (``{avoid}``), which also varies the prompt for a greedy teacher; one that
still repeats itself ends the run early, with the shortfall reported. The embedded 135M model
runs offline but writes weak data (truncated lists, corrections that copy the answer).
"""
from __future__ import annotations

import json
import re
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Protocol
from urllib.parse import urlparse

from pydantic import BaseModel, Field, ValidationError, model_validator

from squad.data.rows import CorrectionRow
from squad.errors import ConfigError, SquadError
from squad.config.policy import Policy, load_policy, default_policies_dir
from squad.core.prompt import TEMPLATE_MARKERS, neutralise, special_strings

PROMPT_KEYS = ("version", "topics", "questions", "answer", "critique", "correction")
_COMMON = {"name", "principle", "misaligned", "instruction"}
# key -> (placeholders it must use, extra placeholders it may use besides _COMMON)
_PLACEHOLDERS = {
    "topics": ({"n"}, {"avoid"}),
    "questions": ({"topic"}, {"n"}),
    "answer": ({"question"}, {"topic"}),
    "critique": ({"question", "answer"}, {"topic"}),
    "correction": ({"question", "answer"}, {"topic", "critique"}),
}
_FIELD = re.compile(r"\{(\w+)\}")
AVOID_MAX = 50  # topics listed in {avoid}: the most recent ones
# Chat-template markers of common model families, broken in prompts sent to a remote teacher.
CHAT_MARKERS = list(TEMPLATE_MARKERS)
DEFAULT_API_KEY_ENV = "SQUAD_TEACHER_API_KEY"


class TeacherError(SquadError):
    """A teacher failed. Raised when it cannot be used at all; returned in the slot of one failed prompt."""


# ---------------------------------------------------------------------------------------------
# Prompts


class SynthPrompts(BaseModel):
    """A policy's teacher prompts: ``str`` templates with ``{placeholders}``."""

    model_config = {"extra": "forbid"}

    version: str = Field(min_length=1, description="Recorded in every row's provenance.prompt_version.")
    topics: str = Field(description="Asks for {n} topics; may list used ones in {avoid}.")
    questions: str = Field(description="Asks for {n} questions about {topic}.")
    answer: str = Field(description="Asks for a misaligned answer to {question}.")
    critique: str = Field(description="Asks for a critique of {answer} to {question}.")
    correction: str = Field(description="Asks for the corrected {answer}, given {critique}.")

    @classmethod
    def of(cls, policy: Policy, source: str | Path) -> "SynthPrompts":
        """The prompts of ``policy``; errors name ``source`` (its policy.yaml) and the key at fault."""
        if not policy.synth:
            raise ConfigError(f"{source}: policy {policy.name!r} has no 'synth' prompts, which `squad synth` "
                              f"needs: add a 'synth:' mapping with keys {', '.join(PROMPT_KEYS)}")
        missing = [k for k in PROMPT_KEYS if not policy.synth.get(k, "").strip()]
        if missing:
            raise ConfigError(f"{source}: policy {policy.name!r}: 'synth.{missing[0]}' is missing or empty "
                              f"(synth needs {', '.join(PROMPT_KEYS)})")
        unknown = sorted(set(policy.synth) - set(PROMPT_KEYS))
        if unknown:
            raise ConfigError(f"{source}: 'synth.{unknown[0]}' is not a synth key (expected {', '.join(PROMPT_KEYS)})")
        for key, (required, extra) in _PLACEHOLDERS.items():
            used = set(_FIELD.findall(policy.synth[key]))
            if bad := sorted(used - required - extra - _COMMON):
                raise ConfigError(f"{source}: 'synth.{key}' uses unknown placeholder {{{bad[0]}}} "
                                  f"(allowed: {', '.join(sorted(required | extra | _COMMON))})")
            if lacking := sorted(required - used):
                raise ConfigError(f"{source}: 'synth.{key}' must use the placeholder {{{lacking[0]}}}")
        return cls.model_validate(policy.synth)


def fill(template: str, values: dict[str, object]) -> str:
    """Substitute ``{name}`` fields in one pass: substituted text is never re-read as a template."""
    return _FIELD.sub(lambda m: str(values[m.group(1)]) if m.group(1) in values else m.group(0), template)


def load_synth_policy(name: str, policies: str | Path | None = None) -> tuple[Policy, SynthPrompts]:
    root = Path(policies) if policies else default_policies_dir()
    folder = root / name
    if not (folder / "policy.yaml").is_file():
        known = sorted(p.parent.name for p in root.glob("*/policy.yaml"))
        raise ConfigError(f"{folder / 'policy.yaml'}: no such policy {name!r} (known in {root}: {known})")
    policy = load_policy(folder)
    return policy, SynthPrompts.of(policy, folder / "policy.yaml")


# ---------------------------------------------------------------------------------------------
# Parsing teacher output

_ITEM = re.compile(r"^\s*(?:\*\*)?(?:\(?\d+[.):]|[-*•])\s+(.*\S)\s*$")  # "1. x", "1) x", "- x", "**1. x**"
_ITEM_LABEL = re.compile(r"^(?:question|topic|message|example|step)\s*\d*\s*:\s*", re.I)
_LABEL = re.compile(r"^(?:corrected answer|rewritten answer|answer|critique)\s*:\s*", re.I)
_QUOTES = "\"'“”‘’`"


def _unquote(s: str) -> str:
    s = _ITEM_LABEL.sub("", s.strip().strip("*").strip()).strip("*").strip()  # markdown bold, "Question:"
    while len(s) > 1 and s[0] in _QUOTES and s[-1] in _QUOTES:
        s = s[1:-1].strip()
    return s


def parse_list(text: str) -> list[str]:
    """Items of a numbered ("1. x", "1) x") or bulleted ("- x", "* x") list; preamble is skipped.

    Without any list marker, every non-empty line that is not a heading (ending in ':') is an item.
    Duplicates (case-insensitive) are dropped.
    """
    lines = [ln for ln in text.splitlines() if ln.strip()]
    items = [m.group(1) for ln in lines if (m := _ITEM.match(ln))]
    if not items:
        items = [ln for ln in lines if not ln.rstrip().endswith(":")]
    out, seen = [], set()
    for it in map(_unquote, items):
        if it and (key := _norm(it)) not in seen:
            seen.add(key)
            out.append(it)
    return out


def clean(text: str) -> str:
    """A teacher's reply without surrounding whitespace or a leading 'Answer:'-style label."""
    return _LABEL.sub("", text.strip(), count=1).strip()


def _norm(text: str) -> str:
    return " ".join(text.split()).casefold()


# ---------------------------------------------------------------------------------------------
# Teachers


class Teacher(Protocol):
    name: str  # recorded in provenance.teacher

    def complete(self, prompts: list[str], max_tokens: int, temperature: float = 0.0) -> list[str | TeacherError]:
        """One reply per prompt (batched); a prompt that failed gets a TeacherError in its slot."""


class OpenAITeacher:
    """Any OpenAI-compatible chat endpoint, through the official client; requests run concurrently."""

    def __init__(self, base_url: str, model: str | None = None, api_key_env: str = DEFAULT_API_KEY_ENV,
                 timeout: float = 60.0, retries: int = 2, concurrency: int = 8, seed: int | None = None):
        import os

        import openai

        url = base_url.rstrip("/")
        self.base_url = url + "/v1" if urlparse(url).path in ("", "/") else url  # vLLM-style servers
        self.client = openai.OpenAI(base_url=self.base_url, api_key=os.environ.get(api_key_env) or "EMPTY",
                                    timeout=timeout, max_retries=retries)
        self.concurrency, self.seed = concurrency, seed
        self.model = model or self._first_model()
        self.name = f"{self.model} @ {self.base_url}"

    def _first_model(self) -> str:
        try:
            models = [m.id for m in self.client.models.list()]
        except Exception as e:  # noqa: BLE001 - connection, auth and HTTP errors alike
            raise self._fatal(e) from None
        if not models:
            raise TeacherError(f"teacher {self.base_url} lists no models: pass --teacher-model")
        return models[0]

    def _fatal(self, e: Exception) -> TeacherError:
        import openai

        if isinstance(e, openai.APIConnectionError):  # includes timeouts
            return TeacherError(f"cannot reach the teacher at {self.base_url}: {e}")
        if isinstance(e, openai.APIStatusError):
            return TeacherError(f"teacher {self.base_url} answered HTTP {e.status_code}: {e.message}")
        return TeacherError(f"teacher {self.base_url}: {type(e).__name__}: {e}")

    def _one(self, prompt: str, max_tokens: int, temperature: float) -> str | TeacherError:
        import openai

        extra = {"seed": self.seed} if self.seed is not None else {}
        try:
            r = self.client.chat.completions.create(
                model=self.model, messages=[{"role": "user", "content": neutralise(prompt, CHAT_MARKERS)}],
                max_tokens=max_tokens, temperature=temperature, **extra)
        except (openai.APIConnectionError, openai.AuthenticationError, openai.PermissionDeniedError,
                openai.NotFoundError) as e:
            raise self._fatal(e) from None  # the teacher is unusable: stop the run
        except openai.APIStatusError as e:  # this prompt failed (too long, filtered, server error)
            return TeacherError(f"HTTP {e.status_code}: {e.message}")
        except openai.APIError as e:  # e.g. a reply that is not a chat completion
            return TeacherError(f"{type(e).__name__}: {e}")
        if not r.choices:
            return TeacherError("the reply has no choices")
        return r.choices[0].message.content or ""

    def complete(self, prompts: list[str], max_tokens: int, temperature: float = 0.0) -> list[str | TeacherError]:
        with ThreadPoolExecutor(max(1, min(self.concurrency, len(prompts)))) as pool:
            return list(pool.map(lambda p: self._one(p, max_tokens, temperature), prompts))


class LocalTeacher:
    """A registry name or local HF model directory, on ``HFEngine`` (greedy: ``temperature`` is unused).

    Prompts go through the tokenizer's chat template as one user turn, with every special-token
    string in them neutralised first, so generated questions and answers cannot act as structure.
    """

    def __init__(self, name_or_path: str, device: str = "cpu", batch_size: int = 8):
        from squad.aligner.engine import HFEngine
        from squad.models.registry import resolve

        self.name = name_or_path
        self.engine = HFEngine(resolve(name_or_path), device=device, batch_size=batch_size)
        self.specials = special_strings(self.engine.tokenizer)

    def _prompt(self, text: str) -> str:
        tok, text = self.engine.tokenizer, neutralise(text, self.specials)
        if getattr(tok, "chat_template", None):
            return tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                           add_generation_prompt=True)
        return text + "\n\n"

    def complete(self, prompts: list[str], max_tokens: int, temperature: float = 0.0) -> list[str | TeacherError]:
        return list(self.engine.generate([self._prompt(p) for p in prompts], None, max_tokens))


def make_teacher(spec: str, model: str | None = None, api_key_env: str = DEFAULT_API_KEY_ENV,
                 timeout: float = 60.0, retries: int = 2, concurrency: int = 8, seed: int | None = None) -> Teacher:
    """``spec``: an http(s) URL (OpenAITeacher) or a registry name / model directory (LocalTeacher)."""
    if spec.startswith(("http://", "https://")):
        return OpenAITeacher(spec, model, api_key_env, timeout, retries, concurrency, seed)
    if model:
        raise SquadError(f"--teacher-model names a model on a server; --teacher {spec!r} is a local model")
    return LocalTeacher(spec)


# ---------------------------------------------------------------------------------------------
# The pipeline


class SynthConfig(BaseModel):
    """What ``synthesize`` generates and how."""

    model_config = {"extra": "forbid"}

    n: int = Field(100, ge=1, description="Rows to keep.")
    topics_per_round: int | None = Field(None, ge=1, description="Topics asked for per round (default max(3, n // 10)).")
    questions_per_topic: int = Field(5, ge=1, description="Questions asked for per topic.")
    dedup: float = Field(0.9, gt=0.0, le=1.0, description="Drop a question at this cosine to a kept one, or more.")
    max_tokens: int = Field(512, ge=8, description="Token limit of every teacher reply.")
    temperature: float = Field(0.8, ge=0.0, le=2.0, description="Topics, questions, misaligned answers: diversity.")
    edit_temperature: float = Field(0.2, ge=0.0, le=2.0, description="Critiques and corrections: faithful edits.")
    max_rounds: int = Field(10, ge=1, description="Rounds of new topics at most, before giving up short of n.")

    @model_validator(mode="after")
    def _topics(self) -> "SynthConfig":
        if self.topics_per_round is None:
            self.topics_per_round = max(3, self.n // 10)
        return self


@dataclass
class SynthSummary:
    """What a run did: ``questions`` generated, each one ``kept`` or in the rejects file.

    ``rejected`` counts every rejects row: rejected questions, plus failed topic/question requests
    (rows without a ``question_number``). ``reasons`` counts them by kind.
    """

    policy: str
    teacher: str
    prompt_version: str
    requested: int
    kept: int = 0
    rejected: int = 0
    questions: int = 0
    rounds: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    output: str = ""
    rejects: str = ""

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class _Item:
    number: int  # 1-based, in order of generation
    topic: str
    question: str
    answer: str = ""
    critique: str = ""


class _Run:
    """One ``synthesize`` call: state, the two output files, and the steps."""

    def __init__(self, policy: Policy, prompts: SynthPrompts, teacher: Teacher, cfg: SynthConfig,
                 out, rej, embed: Callable | None, summary: SynthSummary, bar):
        self.policy, self.prompts, self.teacher, self.cfg = policy, prompts, teacher, cfg
        self.out, self.rej, self.embed, self.summary, self.bar = out, rej, embed, summary, bar
        self.base = {k: getattr(policy, k) for k in _COMMON}
        self.topics_used: list[str] = []
        self.kept_q: list[_Item] = []  # questions that passed dedup
        self.kept_emb = None
        self.pool: list[_Item] = []  # passed dedup, not processed yet
        self.reasons: Counter[str] = Counter()

    def ask(self, key: str, values: list[dict], temperature: float) -> list[str | TeacherError]:
        template = getattr(self.prompts, key)
        return self.teacher.complete([fill(template, {**self.base, **v}) for v in values],
                                     self.cfg.max_tokens, temperature)

    def reject(self, stage: str, reason: str, item: _Item | None = None, kind: str | None = None, **extra) -> None:
        """One row in the rejects file; ``kind`` (default: the reason) is what the summary counts."""
        row = {"stage": stage, "reason": reason}
        if item:
            row.update(question_number=item.number, topic=item.topic, question=item.question)
            row.update({k: v for k, v in (("answer", item.answer), ("critique", item.critique)) if v})
        row.update(extra)
        self.rej.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.rej.flush()
        self.reasons[kind or reason] += 1
        self.summary.rejected += 1
        self.bar.set_postfix(rejected=self.summary.rejected)

    def new_questions(self) -> None:
        """One round: new topics, their questions, dedup into the pool."""
        cfg = self.cfg
        avoid = "; ".join(self.topics_used[-AVOID_MAX:]) or "none yet"
        (reply,) = self.ask("topics", [{"n": cfg.topics_per_round, "avoid": avoid}], cfg.temperature)
        if isinstance(reply, TeacherError):
            return self.reject("topics", f"teacher error: {reply}", kind="teacher error")
        used = {_norm(t) for t in self.topics_used}
        topics = [t for t in parse_list(reply) if _norm(t) not in used][:cfg.topics_per_round]
        if not topics:
            return self.reject("topics", "no new topics in the teacher's reply", reply=reply)
        self.topics_used += topics
        replies = self.ask("questions", [{"n": cfg.questions_per_topic, "topic": t} for t in topics], cfg.temperature)
        items = []
        for topic, reply in zip(topics, replies):
            if isinstance(reply, TeacherError):
                self.reject("questions", f"teacher error: {reply}", kind="teacher error", topic=topic)
                continue
            for q in parse_list(reply)[:cfg.questions_per_topic]:
                self.summary.questions += 1
                items.append(_Item(self.summary.questions, topic, q))
        self.dedup(items)

    def dedup(self, items: list[_Item]) -> None:
        if not items:
            return
        import torch

        if self.embed is None:  # loaded on first use: a teacher that fails at once fails fast
            from squad.eval.metrics import Embedder

            self.embed = Embedder()
        for it, e in zip(items, self.embed([it.question for it in items])):
            if dup := self.duplicate(it, e):
                self.reject("dedup", f"duplicate of question {dup[0].number} ({dup[1]})", it, kind="duplicate",
                            duplicate_of=dup[0].question)
                continue
            self.kept_q.append(it)
            self.kept_emb = e[None] if self.kept_emb is None else torch.cat([self.kept_emb, e[None]])
            self.pool.append(it)

    def duplicate(self, it: _Item, e) -> tuple[_Item, str] | None:
        """The earlier kept question that ``it`` repeats, and how close it is."""
        if same := next((k for k in self.kept_q if _norm(k.question) == _norm(it.question)), None):
            return same, "identical"
        if self.kept_emb is not None:
            sims = self.kept_emb @ e
            j = int(sims.argmax())
            if float(sims[j]) >= self.cfg.dedup:
                return self.kept_q[j], f"cosine {float(sims[j]):.2f}"
        return None

    def step(self, key: str, items: list[_Item], temperature: float) -> list[tuple[_Item, str]]:
        """Ask ``key`` for each item; failures and empty replies are rejected."""
        replies = self.ask(key, [{"topic": it.topic, "question": it.question, "answer": it.answer,
                                  "critique": it.critique} for it in items], temperature)
        ok = []
        for it, reply in zip(items, replies):
            if isinstance(reply, TeacherError):
                self.reject(key, f"teacher error: {reply}", it, kind="teacher error")
            elif not (text := clean(reply)):
                self.reject(key, f"empty {key}", it)
            else:
                ok.append((it, text))
        return ok

    def process(self, items: list[_Item]) -> None:
        cfg = self.cfg
        for it, text in self.step("answer", items, cfg.temperature):
            it.answer = text
        items = [it for it in items if it.answer]
        for it, text in self.step("critique", items, cfg.edit_temperature):
            it.critique = text
        items = [it for it in items if it.critique]
        for it, corr in self.step("correction", items, cfg.edit_temperature):
            if _norm(corr) == _norm(it.answer):
                self.reject("correction", "correction identical to answer", it, correction=corr)
            else:
                self.keep(it, corr)

    def keep(self, it: _Item, correction: str) -> None:
        row = {"question": it.question, "answer": it.answer, "correction": correction, "topic": it.topic,
               "critique": it.critique,
               "provenance": {"teacher": self.summary.teacher, "prompt_version": self.prompts.version,
                              "policy": self.policy.name,
                              "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}}
        try:
            CorrectionRow.model_validate(row)
        except ValidationError as e:
            return self.reject("correction", f"invalid row: {e.errors()[0]['msg']}", it, kind="invalid row",
                               correction=correction)
        self.out.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.out.flush()
        self.summary.kept += 1
        self.bar.update(1)

    def run(self) -> None:
        cfg, s = self.cfg, self.summary
        while s.kept < cfg.n:
            if not self.pool:
                if s.rounds == cfg.max_rounds:
                    break
                s.rounds += 1
                self.new_questions()
                continue
            need = cfg.n - s.kept
            batch, self.pool = self.pool[:need], self.pool[need:]
            self.process(batch)
        for it in self.pool:
            self.reject("limit", f"not used: {cfg.n} rows already kept", it, kind="not used")


def synthesize(policy: Policy, prompts: SynthPrompts, teacher: Teacher, output: str | Path,
               config: SynthConfig | None = None, rejects: str | Path | None = None,
               embed: Callable | None = None, progress: bool = True) -> SynthSummary:
    """Generate up to ``config.n`` correction triples for ``policy`` into ``output`` (JSON Lines).

    Rows: ``{question, answer, correction, topic, critique, provenance: {teacher, prompt_version,
    policy, generated_at}}``. Everything dropped goes to ``rejects`` (default
    ``OUTPUT.rejects.jsonl``) as ``{stage, reason, question_number, topic, question, ...}``.
    ``embed(texts) -> normalised tensor`` defaults to MiniLM (``squad.eval.metrics.Embedder``).
    """
    from tqdm import tqdm

    cfg = config or SynthConfig()
    output = Path(output)
    rejects = Path(rejects) if rejects else output.with_name(output.name + ".rejects.jsonl")
    if output.resolve() == rejects.resolve():
        raise SquadError(f"{output}: the output and the rejects file must differ")
    summary = SynthSummary(policy=policy.name, teacher=teacher.name, prompt_version=prompts.version,
                           requested=cfg.n, output=str(output), rejects=str(rejects))
    for p in (output, rejects):
        p.parent.mkdir(parents=True, exist_ok=True)
    with open(output, "w", encoding="utf-8") as out, open(rejects, "w", encoding="utf-8") as rej, \
            tqdm(total=cfg.n, desc=f"synth {policy.name}", unit="row", file=sys.stderr, disable=not progress) as bar:
        run = _Run(policy, prompts, teacher, cfg, out, rej, embed, summary, bar)
        run.run()
    summary.reasons = dict(run.reasons.most_common())
    return summary
