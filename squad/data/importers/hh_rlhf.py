"""Anthropic/hh-rlhf records (``chosen``/``rejected`` transcripts) as correction triples."""
from __future__ import annotations

import re

from squad.data.importers.records import ImportOptions, RecordError, Triple, make_triple, require_text

_HUMAN, _ASSISTANT = "\n\nHuman:", "\n\nAssistant:"
_TURN = re.compile(r"\n\n(Human|Assistant):")


def _split_final_turn(text: str, name: str) -> tuple[str, str]:
    """``(dialogue before the final assistant turn, final assistant text)``."""
    at = text.rfind(_ASSISTANT)
    if at < 0:
        raise RecordError(name, "no '\\n\\nAssistant:' turn")
    prefix, final = text[:at], text[at + len(_ASSISTANT):]
    if _HUMAN in final:
        raise RecordError(name, "the transcript ends with a human turn, not an assistant answer")
    if not final.strip():
        raise RecordError(name, "the final assistant turn is empty")
    return prefix, final.strip()


def _turns(prefix: str, name: str) -> list[tuple[str, str]]:
    prefix = prefix.lstrip()
    if not prefix.startswith("Human:"):
        raise RecordError(name, "the transcript does not start with a 'Human:' turn")
    parts = _TURN.split("\n\n" + prefix)  # ['', role, text, role, text, ...]
    turns = [(parts[i], parts[i + 1].strip()) for i in range(1, len(parts), 2)]
    if turns[-1][0] != "Human":
        raise RecordError(name, "two assistant turns in a row before the final answer")
    if not turns[-1][1]:
        raise RecordError(name, "the last human turn is empty")
    return turns


def convert_hh_rlhf(rec: dict, opts: ImportOptions) -> Triple:
    """Anthropic/hh-rlhf: ``chosen`` and ``rejected`` transcripts that share every turn but the last.

    The answers are the final ``Assistant:`` turns (``chosen`` -> correction, ``rejected`` ->
    answer). The question is the shared dialogue before them; a record whose two dialogues differ
    is rejected (field ``rejected``). A single-turn dialogue gives the human's text as the question.
    A multi-turn one gives, with ``opts.context='transcript'`` (the default), the whole dialogue
    rendered plainly (``Human: ...`` / ``Assistant: ...`` turns separated by blank lines, ending
    with the last human turn), so the earlier turns stay as context; with ``'last-turn'``, only the
    last human turn.
    """
    opts.validate()
    chosen, rejected = require_text(rec, "chosen"), require_text(rec, "rejected")
    prefix_c, correction = _split_final_turn(chosen, "chosen")
    prefix_r, answer = _split_final_turn(rejected, "rejected")
    if prefix_c.strip() != prefix_r.strip():
        raise RecordError("rejected", "the dialogue before the final assistant turn differs from 'chosen'")
    turns = _turns(prefix_c, "chosen")
    if len(turns) == 1 or opts.context == "last-turn":
        question = turns[-1][1]
    else:
        question = "\n\n".join(f"{role}: {text}" for role, text in turns)
    return make_triple(question, answer, correction, "rejected", "chosen")
