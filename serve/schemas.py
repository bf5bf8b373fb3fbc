"""Request bodies of the HTTP API (pydantic; FastAPI validates them)."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator


class _Req(BaseModel):
    model_config = {"extra": "forbid"}


def _nonblank(v: str) -> str:
    if not v.strip():
        raise ValueError("must not be empty")
    return v


class SquadOptions(_Req):
    criteria: list[str] | None = Field(None, min_length=1)
    thresholds: dict[str, float] | None = None

    @field_validator("thresholds")
    @classmethod
    def _range(cls, v):
        for k, x in (v or {}).items():
            if not 0.0 <= x <= 1.0:
                raise ValueError(f"threshold for {k!r} must be in [0, 1], got {x}")
        return v


class PairIn(_Req):
    question: str
    answer: str
    _q = field_validator("question", "answer")(_nonblank)


class CorrectRequest(SquadOptions):
    question: str | None = None
    answer: str | None = None
    pairs: list[PairIn] | None = Field(None, min_length=1, description="Batch form: many pairs at once.")
    _q = field_validator("question", "answer")(lambda v: v if v is None else _nonblank(v))

    def all_pairs(self) -> list[tuple[str, str]]:
        if self.pairs is not None:
            if self.question is not None or self.answer is not None:
                raise ValueError("give either question/answer or pairs, not both")
            return [(p.question, p.answer) for p in self.pairs]
        missing = [f for f in ("question", "answer") if getattr(self, f) is None]
        if missing:
            raise ValueError(f"field '{missing[0]}' is required")
        return [(self.question, self.answer)]


class InspectRequest(_Req):
    question: str
    answer: str
    criteria: list[str] | None = Field(None, min_length=1)
    _q = field_validator("question", "answer")(_nonblank)


class ChatMessage(BaseModel):
    model_config = {"extra": "allow"}
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str


class ChatRequest(BaseModel):
    """OpenAI chat completions; unknown OpenAI parameters are accepted and ignored."""

    model_config = {"extra": "allow"}
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    squad: SquadOptions | None = Field(None, description="Aligner Squad options (extra_body={'squad': {...}}).")
