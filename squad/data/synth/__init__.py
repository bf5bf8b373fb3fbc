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

from squad.data.synth.parsing import clean, norm_text, parse_list
from squad.data.synth.pipeline import AVOID_MAX, SynthConfig, SynthSummary, synthesize
from squad.data.synth.prompts import COMMON_PLACEHOLDERS, PROMPT_KEYS, SynthPrompts, fill, load_synth_policy
from squad.data.synth.teachers import (CHAT_MARKERS, DEFAULT_API_KEY_ENV, LocalTeacher, OpenAITeacher, Teacher,
                                       TeacherError, make_teacher)

__all__ = ["AVOID_MAX", "CHAT_MARKERS", "COMMON_PLACEHOLDERS", "DEFAULT_API_KEY_ENV", "LocalTeacher",
           "OpenAITeacher", "PROMPT_KEYS", "SynthConfig", "SynthPrompts", "SynthSummary", "Teacher",
           "TeacherError", "clean", "fill", "load_synth_policy", "make_teacher", "norm_text", "parse_list",
           "synthesize"]
