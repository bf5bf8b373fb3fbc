"""PKU-Alignment/PKU-SafeRLHF records as correction triples."""
from __future__ import annotations

from squad.data.importers.records import ImportOptions, RecordError, Triple, make_triple, require_text


def convert_pku_saferlhf(rec: dict, opts: ImportOptions) -> Triple:
    """PKU-Alignment/PKU-SafeRLHF: ``prompt`` and two responses; an id (0 or 1) names the preferred one.

    ``opts.preference`` picks the id: ``safer`` (``safer_response_id``, the default, since this is a
    safety dataset) or ``better`` (``better_response_id``, the helpfulness preference). The
    preferred response is the correction and the other the answer. Unless ``opts.allow_unsafe``,
    a record whose preferred response is itself labelled unsafe (``is_response_N_safe`` false, as
    when both responses are unsafe) is rejected: it would teach the aligner an unsafe correction.
    """
    key = f"{opts.validate().preference}_response_id"
    question = require_text(rec, "prompt")
    if key not in rec or rec[key] is None:
        raise RecordError(key, "missing")
    pick = rec[key]
    if isinstance(pick, bool) or not isinstance(pick, int) or pick not in (0, 1):
        raise RecordError(key, f"must be 0 or 1, got {pick!r}")
    good, bad = f"response_{pick}", f"response_{1 - pick}"
    correction, answer = require_text(rec, good), require_text(rec, bad)
    safe_key = f"is_response_{pick}_safe"
    if not opts.allow_unsafe and rec.get(safe_key) is False:
        raise RecordError(safe_key, f"the preferred response ({good}) is labelled unsafe "
                                    "(use --allow-unsafe to keep such rows)")
    return make_triple(question, answer, correction, bad, good)
