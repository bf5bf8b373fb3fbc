"""The Correction result (also the JSON body on the wire) and its trace."""
from __future__ import annotations

from pydantic import BaseModel, Field


class Step(BaseModel):
    """One aligner application in a squad run."""

    criterion: str = Field(description="The criterion whose aligner ran.")
    score_before: float = Field(description="That criterion's inspector score before this step.")
    threshold: float = Field(description="The threshold the score was under.")
    applied: bool = Field(description="True when the aligner's output replaced the answer.")
    answer: str = Field(description="The answer after this step.")
    latency_ms: float = Field(description=(
        "This pair's share of the aligner call: the call's wall time divided by the pairs it rewrote "
        "(on a streaming engine, each interval split among the pairs in flight; on vLLM, the engine's "
        "own time for this request)."))
    wall_ms: float | None = Field(None, description="Wall time this pair waited for the step: the whole call's time in a batch.")
    error: str | None = Field(None, description="The aligner's error, when it failed (fail-open keeps the last good answer).")
    rewrite: str | None = Field(None, description="The aligner's output, kept or not.")
    scores_after: dict[str, float] | None = Field(None, description="Inspector scores of the rewrite.")
    rejected: str | None = Field(None, description=(
        "Why the rewrite was not kept (do no harm: its criterion still fails, a criterion that passed "
        "before fails after it, or a grounded criterion's rewrite adds numbers or names); the previous "
        "answer stays."))

    @property
    def outcome(self) -> str:
        """One line for people: what became of this step's rewrite."""
        if self.applied:
            return "rewrite kept"
        if self.rejected:
            return f"rewrite rejected, answer kept: {self.rejected}"
        return f"aligner failed: {self.error}"


class Correction(BaseModel):
    question: str
    original: str = Field(description="The answer as it came in.")
    answer: str = Field(description="The final answer.")
    changed: bool = Field(description="Whether the final answer differs from the original.")
    initial_scores: dict[str, float] = Field(description="Inspector scores of the original answer.")
    scores: dict[str, float] = Field(description="Inspector scores of the final answer.")
    steps: list[Step] = Field(default_factory=list)
    latency_ms: float = Field(description=(
        "This pair's own cost: its share of every inspector and aligner call on its path (the sum over "
        "a batch's pairs is the batch's model time)."))
    wall_ms: float | None = Field(None, description="Wall time from the start of the run this pair was part of to its answer.")
    sanitised: list[str] = Field(default_factory=list, description=(
        "What was removed from the original answer before scoring, one line per kind (chat-template "
        "markup and injected turns, role lines, text addressed to the model or its checkers, hidden "
        "text, repeated sentences); non-empty means the answer was flagged."))
