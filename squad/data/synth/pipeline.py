"""The synth pipeline: topics, questions, dedup, then answer, critique and correction per question."""
from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from pydantic import BaseModel, Field, ValidationError, model_validator

from squad.config.policy import Policy
from squad.data.rows import CorrectionRow
from squad.data.synth.parsing import clean, norm_text, parse_list
from squad.data.synth.prompts import COMMON_PLACEHOLDERS, SynthPrompts, fill
from squad.data.synth.teachers import Teacher, TeacherError
from squad.errors import SquadError

AVOID_MAX = 50  # topics listed in {avoid}: the most recent ones


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
        self.base = {k: getattr(policy, k) for k in COMMON_PLACEHOLDERS}
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
        used = {norm_text(t) for t in self.topics_used}
        topics = [t for t in parse_list(reply) if norm_text(t) not in used][:cfg.topics_per_round]
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
        if same := next((k for k in self.kept_q if norm_text(k.question) == norm_text(it.question)), None):
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
            if norm_text(corr) == norm_text(it.answer):
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
    from squad.progress import terminal_bar

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
            terminal_bar(total=cfg.n, desc=f"synth {policy.name}", unit="row", file=sys.stderr, enabled=progress) as bar:
        run = _Run(policy, prompts, teacher, cfg, out, rej, embed, summary, bar)
        run.run()
    summary.reasons = dict(run.reasons.most_common())
    return summary
