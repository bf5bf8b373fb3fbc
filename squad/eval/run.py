"""The squad over a suite: corrections saved beside a fingerprint, so a report can be recomputed
(after labelling, say) without running the models again, and never from a stale run."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from squad.core.correction import Correction
from squad.errors import DataError
from squad.eval.suites import SuiteRow


def fingerprint(squad, thresholds: dict[str, float], max_steps: int) -> dict:
    """What a run's results depend on besides the rows: the bundle (manifest less its metrics), the
    settings and the engine that decoded the rewrites (engines differ in floating-point detail)."""
    manifest = squad.manifest.model_dump(mode="json", exclude={"metrics"})
    h = hashlib.sha256(json.dumps(manifest, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]
    eng = getattr(squad.aligner, "engine", None)  # custom aligners may have none
    engine = getattr(eng, "name", type(eng).__name__)
    return {"bundle": h, "thresholds": thresholds, "max_steps": max_steps, "engine": engine}


def run_suite(squad, rows: list[SuiteRow], batch_size: int = 32, progress: bool = True,
              desc: str = "squad") -> list[Correction]:
    """``Squad.correct_batch`` over every row, in chunks, with a progress bar."""
    from squad.progress import terminal_bar

    out: list[Correction] = []
    with terminal_bar(total=len(rows), desc=desc, unit="pair", enabled=progress) as bar:
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


def load_run(path: Path, fp: dict) -> dict[tuple[str, str, str], Correction]:
    """A saved run's results by (id, question, answer), only if the same bundle and settings made it."""
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as f:
        head = json.loads(f.readline())
        saved = [json.loads(line) for line in f if line.strip()]
    old = {k: v for k, v in head.get("fingerprint", {}).items() if k in fp}
    if old != fp:
        diff = sorted(k for k in fp if old.get(k) != fp[k])
        raise DataError(f"{path}: saved by another bundle or with other settings (differs in {diff}); "
                        f"run without --reuse")
    return {(s["id"], s["question"], s["original"]): Correction.model_validate({k: v for k, v in s.items() if k != "id"})
            for s in saved}


def reuse_or_run(squad, rows: list[SuiteRow], path: Path, fp: dict, reuse: bool, progress: bool,
                 desc: str) -> tuple[list[Correction], int]:
    """Results for every row: with ``reuse``, saved ones for rows unchanged since the saved run and a
    fresh run for the rest; the whole run is then saved. Returns the results and how many rows ran."""
    saved = load_run(path, fp) if reuse else {}
    todo = [r for r in rows if (r.id, r.question, r.answer) not in saved]
    fresh = dict(zip([r.id for r in todo], run_suite(squad, todo, progress=progress, desc=desc))) if todo else {}
    results = [fresh[r.id] if r.id in fresh else saved[(r.id, r.question, r.answer)] for r in rows]
    if todo or not path.is_file():
        save_run(path, fp, rows, results)
    return results, len(todo)
