"""Grounded rewrites: a small aligner cannot supply facts, so a criterion can require that its
rewrites assert nothing specific that the question and the answer they replace do not already
contain. It may remove, soften or qualify a claim; a new number or a new name is a new claim."""
from __future__ import annotations

import re

_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_WORD = re.compile(r"[^\W\d_][\w'\u2019-]*")
# A capital after the start of the text, a line break, a list mark or a sentence end is grammar,
# not a name: such words count as names only when written in capitals throughout (NASA, DNA).
_SENTENCE_START = re.compile(r"(?:^|[.!?:;]\s*|^[ \t]*(?:[-*+>#]+|\d+[.)])[ \t]+)[\"'(\[*_]*\Z", re.M)


def _numbers(text: str) -> set[str]:
    return {n.replace(",", "").rstrip(".") for n in _NUMBER.findall(text)}


def _names(text: str) -> set[str]:
    """Words that read as names: capitalised mid-sentence, or in capitals throughout."""
    out = set()
    for m in _WORD.finditer(text):
        w = m.group(0)
        if len(w) < 2 or not w[0].isupper():
            continue
        if w.isupper() or not _SENTENCE_START.search(text[max(0, m.start() - 12):m.start()]):
            out.add(w)
    return out


def new_specifics(source: str, rewrite: str) -> list[str]:
    """Numbers and names in ``rewrite`` that ``source`` (the question and the replaced answer)
    does not contain, in order of first appearance; a name counts as known when the source has
    the word in any case."""
    known_numbers = _numbers(source)
    known_words = {w.lower() for w in _WORD.findall(source)}
    names = _names(rewrite)
    found: list[str] = []
    for m in re.finditer(rf"{_NUMBER.pattern}|{_WORD.pattern}", rewrite):
        tok = m.group(0)
        if tok[0].isdigit():
            new = tok.replace(",", "").rstrip(".") not in known_numbers
        else:
            new = tok in names and tok.lower() not in known_words
        if new and tok not in found:
            found.append(tok)
    return found
