"""The squad over a suite: corrections saved beside a fingerprint, so a report can be recomputed
(after labelling, say) without running the models again, and never from a stale run."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from squad.correction import Correction
from squad.errors import DataError
from squad.eval.suites import SuiteRow


def fingerprint(squad, rows: list[SuiteRow], thresholds: dict[str, float], max_steps: int) -> dict:
    """What a run depends on: the bundle (manifest less its metrics), the rows, the settings."""
    manifest = squad.manifest.model_dump(mode="json", exclude={"metrics"})
    items = [(r.id, r.question, r.answer) for r in rows]
    h = lambda obj: hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]
    return {"bundle": h(manifest), "rows": h(items), "thresholds": thresholds, "max_steps": max_steps}


def run_suite(squad, rows: list[SuiteRow], batch_size: int = 32, progress: bool = True,
              desc: str = "squad") -> list[Correction]:
    """``Squad.correct_batch`` over every row, in chunks, with a progress bar."""
    from tqdm import tqdm

    out: list[Correction] = []
    with tqdm(total=len(rows), desc=desc, unit="pair", disable=not progress) as bar:
        for i in range(0, len(rows), batch_size):
            chunk = rows[i:i + batch_size]
            out += squad.correct_batch([(r.question, r.answer) for r in chunk])
            bar.update(len(chunk))
    return out


def save_run(path: Path, fp: dict, rows: list[SuiteRow], results: list[Correction]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps({"fingerprint": fp}) + "\n")
        for r, c in zip(rows, results):
            f.write(json.dumps({"id": r.id, **c.model_dump(mode="json")}, ensure_ascii=False) + "\n")


def load_run(path: Path, fp: dict, rows: list[SuiteRow]) -> list[Correction]:
    """A saved run, only if it was made by this bundle, on these rows, with these settings."""
    if not path.is_file():
        raise DataError(f"{path}: no saved run; run without --reuse first")
    with open(path, encoding="utf-8") as f:
        head = json.loads(f.readline())
        saved = [json.loads(line) for line in f if line.strip()]
    if head.get("fingerprint") != fp:
        diff = sorted(k for k in fp if head.get("fingerprint", {}).get(k) != fp[k])
        raise DataError(f"{path}: saved by another run (differs in {diff}); run without --reuse")
    if [s["id"] for s in saved] != [r.id for r in rows]:
        raise DataError(f"{path}: rows differ from the suite's; run without --reuse")
    return [Correction.model_validate({k: v for k, v in s.items() if k != "id"}) for s in saved]
