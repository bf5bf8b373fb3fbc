"""openbmb/UltraFeedback and HuggingFaceH4/ultrafeedback_binarized records as correction triples."""
from __future__ import annotations

from typing import Any

from squad.data.importers.records import (ImportOptions, RecordError, Triple, as_number, make_triple,
                                          require_text)


def _last_assistant(messages: Any, name: str) -> str:
    if not isinstance(messages, list):
        raise RecordError(name, f"expected a list of {{role, content}} messages, got {type(messages).__name__}")
    for m in reversed(messages):
        if isinstance(m, dict) and m.get("role") == "assistant":
            content = m.get("content")
            if not isinstance(content, str) or not content.strip():
                raise RecordError(name, "the assistant message has no text")
            return content
    raise RecordError(name, "no assistant message")


def _binarized(rec: dict) -> Triple:
    if isinstance(rec.get("prompt"), str) and rec["prompt"].strip():
        question = rec["prompt"]
    else:
        users = [m.get("content") for m in rec.get("chosen") or [] if isinstance(m, dict) and m.get("role") == "user"]
        if not users or not isinstance(users[0], str) or not users[0].strip():
            raise RecordError("prompt", "missing (and no user message in 'chosen')")
        question = users[0]
    if "rejected" not in rec:
        raise RecordError("rejected", "missing")
    correction = _last_assistant(rec["chosen"], "chosen")
    answer = _last_assistant(rec["rejected"], "rejected")
    sc, sr = as_number(rec.get("score_chosen")), as_number(rec.get("score_rejected"))
    if sc is not None and sr is not None and sc == sr:
        raise RecordError("score_chosen", f"tie: score_chosen = score_rejected = {sc:g}")
    return make_triple(question, answer, correction, "rejected", "chosen")


def convert_ultrafeedback(rec: dict, opts: ImportOptions) -> Triple:
    """openbmb/UltraFeedback, or HuggingFaceH4/ultrafeedback_binarized (told apart per record).

    Raw layout: ``instruction`` is the question; among the ``completions`` that have a numeric
    ``overall_score`` and a non-empty ``response``, the best score gives the correction and the
    worst the answer (the first in list order among equal scores). Fewer than two usable
    completions, or a tie between best and worst, rejects the record (field ``completions``).

    Binarized layout: ``prompt`` is the question; the last assistant message of ``chosen`` is the
    correction, that of ``rejected`` the answer; equal ``score_chosen`` and ``score_rejected``
    reject the record as a tie.
    """
    if "completions" not in rec:
        if "chosen" in rec:
            return _binarized(rec)
        raise RecordError("completions", "missing (expected 'instruction' + 'completions' "
                                         "(openbmb/UltraFeedback) or 'prompt' + 'chosen' + 'rejected' "
                                         "(ultrafeedback_binarized))")
    question = require_text(rec, "instruction")
    comps = rec["completions"]
    if not isinstance(comps, list):
        raise RecordError("completions", f"must be a list, got {type(comps).__name__}")
    usable = []
    for i, c in enumerate(comps):
        if not isinstance(c, dict):
            continue
        score, resp = as_number(c.get("overall_score")), c.get("response")
        if score is not None and isinstance(resp, str) and resp.strip():
            usable.append((score, i, resp))
    if len(usable) < 2:
        raise RecordError("completions", f"{len(usable)} of {len(comps)} completions have a numeric "
                                         "'overall_score' and a non-empty 'response'; need 2")
    best = max(usable, key=lambda t: (t[0], -t[1]))
    worst = min(usable, key=lambda t: (t[0], t[1]))
    if best[0] == worst[0]:
        raise RecordError("completions", f"tie: every usable completion has overall_score {best[0]:g}")
    return make_triple(question, worst[2], best[2], f"completions[{worst[1]}].response",
                 f"completions[{best[1]}].response")
