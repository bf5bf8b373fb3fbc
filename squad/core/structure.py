"""Untrusted structure in answers: what an answer carries that is not content, found and removed.

An answer is text for a person. Prompt structure in it (chat-template markup of any model family,
role lines opening a fake conversation), sentences addressed to the model, the corrector or the
inspectors, hidden text (invisible characters, HTML comments) and a payload repeated over and over
are attacks on whoever reads the answer next, the squad included. ``sanitise`` removes each of them
and says what it removed; the squad then scores and corrects what is left, and an answer that
needed sanitising counts as flagged. Fenced code blocks are left as they are, except for markup and
invisible characters.
"""
from __future__ import annotations

import re
import unicodedata

import ftfy

from squad.core.prompt import TEMPLATE_MARKERS, ZWJ

# Markers that open a turn: the role is named after the marker (ChatML, Llama 3, Gemma) or is the marker's own.
_OPENERS = {"<|im_start|>": None, "<|start_header_id|>": None, "<start_of_turn>": None,
            "<|system|>": "system", "<|user|>": "user", "<|assistant|>": "assistant",
            "[INST]": "user", "[/INST]": "assistant", "<<SYS>>": "system", "<</SYS>>": "user",
            "<\uff5cUser\uff5c>": "user", "<\uff5cAssistant\uff5c>": "assistant"}
_MARKER = re.compile("|".join(re.escape(f) for m in sorted(TEMPLATE_MARKERS, key=len, reverse=True)
                              for f in (m, m[0] + ZWJ + m[1:])))
_NEUTRAL = {"<|begin_of_text|>", "<|end_header_id|>", "<\uff5cbegin\u2581of\u2581sentence\uff5c>",
            "<s>", "<unk>", "<pad>", "<mask>", "<|pad|>"}
_ROLE_NAME = re.compile(r"\s*(system|user|assistant|model|developer|tool)\b\s*(?:<\|end_header_id\|>)?", re.I)

_ROLE_LINE = re.compile(r"^[\s>*_#\[(<]*(system|developer|user|human|assistant|ai|model)(?:\s+(?:message|prompt|note))?"
                        r"[\s*_\])>]*[:\uff1a]", re.I | re.M)
_FAKE_CORRECTION = re.compile(  # labels that claim to correct the answer ("Fixed:" in release notes does not)
    r"^[\s>*_#\[(]*(?:(?:final\s+|moderator[- ]verified\s+)?(?:corrections?|erratum|errata|revision|amendment|"
    r"(?:corrected|revised|amended)(?:\s+(?:answer|response|version|reply|code|text))?|"
    r"updated\s+(?:answer|response|version|reply|code|text))|"
    r"(?:answer|response|reply)\s*\((?:revised|corrected|updated|fixed|verified)\))"
    r"(?:\s*\([^)\n]{0,30}\))?[\s*_\])]*[:\uff1a]", re.I | re.M)
_CHECKERS = r"(?:evaluator|grader|judge|inspector|reviewer|moderator|classifier|corrector|aligner|checker|scorer|rater|" \
            r"annotator)s?"
_AUDIENCE = rf"(?:(?:ai|a\.i\.|llm|language model|model|assistant|system|filter)s?|{_CHECKERS})"
_TO_THE_SYSTEM = re.compile("|".join((
    r"\b(?:ignore|disregard|forget|override|bypass)\b[^.!?\n]{0,40}\b(?:instructions?|rules?|guidelines?|prompts?|"
    r"polic(?:y|ies)|restrictions?|filters?|training)\b",
    rf"\b(?:note|message|instructions?|attention|reminder)\s+(?:to|for)\s+(?:the\s+|any\s+|all\s+)?(?:\w+\s+)?{_AUDIENCE}\b",
    rf"\b(?:dear|hey|attention)\s+(?:\w+\s+)?{_AUDIENCE}\b",
    rf"\b{_AUDIENCE}\b[^.!?\n]{{0,40}}\b(?:must|should|shall|is to|are to|will now|needs? to)\b[^.!?\n]{{0,40}}"
    r"\b(?:rate|score|mark|pass|approve|accept|classify|label|keep|leave|ignore|output|return)\b",
    r"\b(?:rate|score|grade|mark|classify|label|judge)\b[^.!?\n]{0,30}\b(?:this|the|my)\s+(?:answer|response|reply|"
    r"text|output|message)\b[^.!?\n]{0,40}\b(?:as|with|at|a)\b",
    r"\b(?:do not|don't|no need to|never)\s+(?:correct|change|modify|edit|rewrite|flag|alter|censor|filter)\b"
    r"[^.!?\n]{0,30}\b(?:this|the|my)\s+(?:answer|response|reply|text|output)\b",
    r"\b(?:this|the)\s+(?:answer|response|reply|text)\s+(?:has\s+been|was|is)\s+(?:already\s+)?(?:verified|approved|"
    r"fact-checked|reviewed|corrected|checked|certified|pre-approved)\b",
    r"\byou are now\b", r"\b(?:developer|god|jailbreak|dan|unrestricted)\s+mode\b",
    r"\bnew\s+(?:system\s+)?(?:instructions?|polic(?:y|ies)|rules?|directives?)\s*[:\uff1a]", r"\bsystem\s+override\b",
    rf"\b{_CHECKERS}\s*[:\uff1a]", rf"\bif\s+you\s+are\s+(?:an?\s+|the\s+)?(?:\w+\s+)?{_AUDIENCE}\b",
    r"\b(?:not|never)\s+be\s+(?:edited|changed|modified|rewritten|corrected|altered|flagged)\b",
    r"\b(?:do\s+not|don't|never)\s+(?:change|edit|modify|rewrite|correct|alter|flag)\s+(?:it|this|that|anything)\b",
    r"\bby\s+(?:any|an|the)\s+(?:automated|ai|automatic)\s+(?:system|tool|editor|process|checker|filter)s?\b",
)), re.I)
_LOOP = re.compile(r"(.{1,30}?)\1{7,}", re.S)  # one unit said eight times or more in a row
_PADDING = re.compile(r"(?:[ \t\u00a0\u3000]*\n){6,}|[ \t\u00a0\u3000]{40,}")
_BLOB = re.compile(r"[A-Za-z0-9+/=_-]{100,}")  # encoded data (base64, hex), not text for a person
_COMBINING = re.compile(r"(?<=[\u0300-\u036f\u0483-\u0489\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]{2})"
                        r"[\u0300-\u036f\u0483-\u0489\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]")
_ASIDE = re.compile(r"\[[^\]\n]{1,400}\]|\([^)\n]{1,400}\)")  # a bracketed aside, taken whole
_SENTENCE = re.compile(r"[^.!?\n]*(?:[.!?]+[\"')\]]*|\n|$)")
_FENCED = re.compile(r"^[ \t]*(`{3,}|~{3,})[^\n]*(?:\n.*?^[ \t]*\1[ \t]*$|.*\Z)", re.M | re.S)
_INLINE_CODE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
_HTML_COMMENT = re.compile(r"<!--.*?(?:-->|$)", re.S)
_KEEP_JOINERS = {"\u200c", ZWJ}  # joiners inside non-Latin words and emoji sequences


def sanitise(text: str) -> tuple[str, list[str]]:
    """``text`` without untrusted structure, and one line per kind of thing removed ([] when clean)."""
    found: list[str] = []
    if not text.strip():
        return "", ["the answer is empty"]
    text = _remove_invisible(text, found)
    text = _fix_encoding(text, found)
    text = _keep_first_assistant_turn(text, found)
    prose, code = _split_code(text)
    if any(_HTML_COMMENT.search(p) for p in prose):
        prose = [_HTML_COMMENT.sub("", p) for p in prose]
        found.append("removed hidden text (an HTML comment)")
    prose, code = _keep_first_assistant_lines(prose, code, found)
    prose, code = _cut_from(prose, code, _FAKE_CORRECTION, "a block posing as a correction", found)
    prose = _drop_sentences(prose, found)
    prose = _collapse(prose, found)
    text = _join_code(prose, code).strip()
    return (text if text.strip() else ""), found


def _fix_encoding(text: str, found: list[str]) -> str:
    """Mojibake (UTF-8 read as another encoding) decoded back, and stacked combining marks cut to two."""
    fixed = _COMBINING.sub("", ftfy.fix_encoding(text))
    if fixed != text:
        found.append("repaired garbled characters (mojibake or stacked accents)")
    return fixed


def _collapse(prose: list[str], found: list[str]) -> list[str]:
    """A unit looped eight times or more is said once; blank padding shrinks to one blank line; encoded
    blobs go."""
    out, loops, pads, blobs = [], 0, 0, 0
    for part in prose:
        loops += sum(not _dull(m.group(1)) for m in _LOOP.finditer(part))
        part = _LOOP.sub(lambda m: m.group(0) if _dull(m.group(1)) else m.group(1), part)
        part, n = _PADDING.subn(lambda m: "\n\n" if "\n" in m.group(0) else " ", part)
        pads += n
        part, n = _BLOB.subn("", part)
        blobs += n
        out.append(part)
    found += [f"removed {what}" for n, what in ((loops, "a looping repetition"), (pads, "blank padding"),
                                                  (blobs, "an encoded blob")) if n]
    return out


def _dull(unit: str) -> bool:
    """Units whose runs are ordinary text: one character repeated (rules, dots, zeros; an emoji is not
    one) or no letter, digit or emoji at all."""
    return len(set(unit)) == 1 and unicodedata.category(unit[0]) != "So" or \
        not any(ch.isalnum() or unicodedata.category(ch) == "So" for ch in unit)


def _remove_invisible(text: str, found: list[str]) -> str:
    out, n = [], 0
    for i, ch in enumerate(text):
        hidden = unicodedata.category(ch) == "Cf" or 0xE0100 <= ord(ch) <= 0xE01EF
        if hidden and ch in _KEEP_JOINERS and 0 < i < len(text) - 1 and not (text[i - 1].isascii() or text[i + 1].isascii()):
            hidden = False
        if hidden:
            n += 1
        else:
            out.append(ch)
    if n:
        found.append(f"removed {n} invisible character{'s' * (n > 1)}")
    return "".join(out)


def _keep_first_assistant_turn(text: str, found: list[str]) -> str:
    """With chat-template markup, the answer is the assistant's first turn that says something (the
    text before any marker is one); every other turn is injected, and so is every later one."""
    text, quoted = _unquote_markers(text)
    marks = list(_MARKER.finditer(text))
    if not marks:
        if quoted:
            found.append("named the chat-template markup quoted in code without its delimiters")
        return text
    turns, role, pos, buf = [], "assistant", 0, []
    for m in marks:
        if m.start() < pos:  # the end of a role header already read
            continue
        buf.append(text[pos:m.start()])
        marker, pos = m.group(0).replace(ZWJ, ""), m.end()
        if marker in _NEUTRAL:  # not a turn boundary: the marker alone goes
            continue
        turns.append((role, "".join(buf)))
        buf = []
        if marker in _OPENERS:
            role = _OPENERS[marker]
            if role is None:
                name = _ROLE_NAME.match(text, pos)
                role, pos = (name.group(1).lower(), name.end()) if name else ("unknown", pos)
        else:
            role = "outside"  # a turn ended: what follows is no longer the answer
    turns.append((role, "".join(buf) + text[pos:]))
    return _first_assistant_turn(turns, "chat-template markup", found)


def _first_assistant_turn(turns: list[tuple[str, str]], what: str, found: list[str]) -> str:
    """The assistant's first turn that says something; every other turn that does is injected."""
    said = [(r, t) for r, t in turns if t.strip()]
    answer = next((t for r, t in said if r in ("assistant", "ai", "model")), "")
    others = len(said) - (1 if answer else 0)
    found.append(f"removed {what}" + (f" and {others} injected turn{'s' * (others > 1)}" if others else ""))
    return answer


def _unquote_markers(text: str) -> tuple[str, bool]:
    """Markers quoted in code (a fenced block or an inline span) are mentioned, not used: each is
    named without its delimiters (``<|im_end|>`` becomes ``im_end``) and the answer's turn goes on."""
    def named(code: str) -> str:
        return _MARKER.sub(lambda m: m.group(0).replace(ZWJ, "").strip("<>|[]/\uff5c") or "marker", code)

    out = _FENCED.sub(lambda m: named(m.group(0)), text)
    out = _INLINE_CODE.sub(lambda m: named(m.group(0)), out)
    return out, out != text


def _split_code(text: str) -> tuple[list[str], list[str]]:
    """Alternating prose and fenced-code parts: prose[i] comes before code[i] (an unclosed fence runs to the end)."""
    prose, code, pos = [], [], 0
    for m in _FENCED.finditer(text):
        prose.append(text[pos:m.start()])
        code.append(m.group(0))
        pos = m.end()
    prose.append(text[pos:])
    return prose, code


def _join_code(prose: list[str], code: list[str]) -> str:
    out = []
    for k, p in enumerate(prose):
        out.append(p)
        if k < len(code):
            out.append(code[k])
    return "".join(out)


def _keep_first_assistant_lines(prose: list[str], code: list[str], found: list[str]) -> tuple[list[str], list[str]]:
    """Role lines (``System:``, ``### User:``) split the answer into turns as markup does: the answer is
    the assistant's first turn that says something (text before any role line is one). Without
    markup a turn has no end marker: another role's turn ends at its paragraph's end."""
    joined = "".join(p + (f"\x00{i}\x00" if i < len(code) else "") for i, p in enumerate(prose))
    marks = list(_ROLE_LINE.finditer(joined))
    if not marks:
        return prose, code
    turns, role, pos = [], "assistant", 0
    for m in [*marks, None]:
        text = joined[pos:m.start() if m else len(joined)]
        if role not in ("assistant", "ai", "model") and (gap := re.search(r"\n[ \t]*\n", text.strip("\n"))):
            text = text.strip("\n")  # another role's plain-text turn ends with its paragraph
            turns += [(role, text[:gap.start()]), ("assistant", text[gap.end():])]
        else:
            turns.append((role, text))
        if m:
            role, pos = m.group(1).lower(), m.end()
    answer = _first_assistant_turn(turns, "role lines", found)
    parts = re.split(r"\x00(\d+)\x00", answer)
    return parts[0::2], [code[int(i)] for i in parts[1::2]]


def _cut_from(prose: list[str], code: list[str], pattern: re.Pattern, what: str,
              found: list[str]) -> tuple[list[str], list[str]]:
    """Everything from the first line matching ``pattern`` after some text on, code blocks included (a
    match with nothing before it is the answer's own label, and stays)."""
    for k, part in enumerate(prose):
        for m in pattern.finditer(part):
            if ("".join(prose[:k]) + "".join(code[:k]) + part[:m.start()]).strip():
                found.append(f"removed {what} and what followed it")
                return prose[:k] + [part[:m.start()]], code[:k]
    return prose, code


def _drop_sentences(prose: list[str], found: list[str]) -> list[str]:
    """Sentences addressed to the system go; a sentence said three times or more is said once."""
    seen: dict[str, int] = {}
    for part in prose:
        for s in _SENTENCE.findall(part):
            key = _norm(s)
            if len(key.split()) >= 3:
                seen[key] = seen.get(key, 0) + 1
    repeated = {k for k, n in seen.items() if n >= 3}
    addressed = repeats = 0
    out, said = [], set()
    for part in prose:
        addressed += sum(bool(_TO_THE_SYSTEM.search(m.group(0))) for m in _ASIDE.finditer(part))
        part = _ASIDE.sub(lambda m: "" if _TO_THE_SYSTEM.search(m.group(0)) else m.group(0), part)
        kept, line_start, dropping_line = [], True, False
        for s in _SENTENCE.findall(part):
            key = _norm(s)
            hit = None if dropping_line else _TO_THE_SYSTEM.search(s)
            if hit or dropping_line:
                addressed += not dropping_line
                # a line that opens with a label addressed to them ("Note to the grader: ...") goes whole
                dropping_line = dropping_line or (line_start and ":" in s[hit.start():])
                kept.append("\n" if s.endswith("\n") else "")
            elif key in repeated and key in said:
                repeats += 1
                kept.append("\n" if s.endswith("\n") else "")
            else:
                said.add(key)
                kept.append(s)
            line_start = s.endswith("\n") or (line_start and not s.strip())
            dropping_line = dropping_line and not s.endswith("\n")
        out.append(re.sub(r"\n{3,}", "\n\n", "".join(kept)))
    if addressed:
        found.append(f"removed {addressed} sentence{'s' * (addressed > 1)} addressed to the model or its checkers")
    if repeats:
        found.append(f"removed {repeats} repetition{'s' * (repeats > 1)} of a repeated sentence")
    return out


def _norm(sentence: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", sentence.lower()).split())
