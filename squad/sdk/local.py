"""The Python SDK: ``Squad.load(...)`` then ``correct`` / ``correct_batch`` / ``inspect``."""
from __future__ import annotations

import threading
from pathlib import Path

from squad.aligner.rewriter import Aligner
from squad.core.algorithm import SquadPolicy, run_squad
from squad.models.bundle import Manifest, read_manifest, resolve_bundle
from squad.core.correction import Correction
from squad.errors import SquadError
from squad.inspector.classifier import Inspector, load_heads


def load_inspector(bundle: Path, manifest: Manifest, device: str = "cpu", criteria: list[str] | None = None,
                   probe: bool = True) -> Inspector:
    """The bundle's inspectors (or a subset: a fine-tuned one loads only those encoders), with its
    hidden-state judge blended in if it has one (``probe=False``: without, faster)."""
    from squad.inspector.probe import HiddenStateProbe, load_probe_heads
    from squad.models.registry import resolve

    spec = manifest.inspector
    keep = set(criteria or manifest.criteria)
    heads = {c: h for c, h in load_heads(bundle / spec.heads, spec.dim, spec.hidden).items() if c in keep}
    adapters = ({c: bundle / e.inspector_adapter for c, e in manifest.criteria.items() if e.inspector_adapter and c in keep}
                if spec.kind == "finetuned" else None)
    judge, ps = None, spec.probe
    if probe and ps is not None:
        judge_heads = {c: h for c, h in load_probe_heads(bundle / ps.heads).items() if c in keep}
        judge = HiddenStateProbe(resolve(ps.base), ps.layer, judge_heads, ps.max_question_tokens,
                                 ps.max_answer_tokens, device=device)
    return Inspector(resolve(spec.base), heads, kind=spec.kind, adapters=adapters, max_length=spec.max_length,
                     device=device, features=spec.features, quantize=spec.quantize, probe=judge,
                     probe_weight=ps.weight if ps else 0.5, probe_cap=ps.inspector_cap if ps else None)


def load_aligner(bundle: Path, manifest: Manifest, device: str = "cpu", criteria: list[str] | None = None,
                 engine: str = "auto") -> Aligner:
    """The bundle's aligners (or a subset) on one base model; ``engine`` as in ``squad.aligner.engine.load_engine``."""
    from squad.aligner.engine import load_engine
    from squad.models.registry import resolve

    arts = {c: bundle / e.aligner for c, e in manifest.criteria.items() if criteria is None or c in criteria}
    kind = "adapters" if manifest.aligner.mode == "lora" else "full_models"
    eng = load_engine(resolve(manifest.aligner.base), device=device, engine=engine, **{kind: arts})
    return Aligner(eng, {c: e.policy for c, e in manifest.criteria.items()}, manifest.aligner.max_new_tokens)


def squad_policy(manifest: Manifest, criteria: list[str] | None = None, thresholds: dict[str, float] | None = None,
                 max_steps: int | None = None, fail_closed: bool = False) -> SquadPolicy:
    """Bundle defaults merged with per-call criteria, thresholds and max_steps, validated."""
    known = list(manifest.criteria)
    crits = list(criteria) if criteria else known
    for c in [*crits, *(thresholds or {})]:
        if c not in known:
            raise SquadError(f"unknown criterion {c!r}; this squad has {sorted(known)}")
    if max_steps is not None and max_steps < 1:
        raise SquadError(f"max_steps must be at least 1, got {max_steps}")
    th = {c: manifest.criteria[c].policy.threshold for c in crits}
    for c, v in (thresholds or {}).items():
        if not 0.0 <= float(v) <= 1.0:
            raise SquadError(f"threshold for {c!r} must be in [0, 1], got {v}")
        if c in th:
            th[c] = float(v)
    refusals = {c: e.policy.refusal for c, e in manifest.criteria.items()} if fail_closed else None
    return SquadPolicy(thresholds=th, priorities={c: e.policy.priority for c, e in manifest.criteria.items()},
                       max_steps=manifest.max_steps if max_steps is None else max_steps, fail_closed=refusals,
                       grounded=frozenset(c for c in crits if manifest.criteria[c].policy.grounded),
                       flag_only=frozenset(c for c in crits if not manifest.criteria[c].policy.rewrite),
                       may_lower={c: frozenset(manifest.criteria[c].policy.may_lower) for c in crits})


class Squad:
    """A loaded squad: inspectors always in memory, aligners loaded on first need."""

    def __init__(self, bundle: Path, manifest: Manifest, inspector: Inspector, device: str = "cpu",
                 aligner: Aligner | None = None, fail_closed: bool = False, engine: str = "auto"):
        self.bundle, self.manifest, self.inspector, self.device = bundle, manifest, inspector, device
        self.fail_closed, self.engine = fail_closed, engine
        self._aligner = aligner
        self._lock = threading.Lock()

    @classmethod
    def load(cls, bundle: str | Path = "default", device: str = "cpu", fail_closed: bool = False,
             engine: str = "auto", probe: bool = True) -> "Squad":
        """``engine``: how the aligners decode: ``auto`` (CTranslate2 on CPU, else PyTorch), ``ct2`` or ``hf``.
        ``probe=False`` scores with the inspectors alone, without the bundle's hidden-state judge:
        faster, and weaker on text unlike the training data (docs/inspectors.md)."""
        from squad.config.loading import ENGINES

        if engine not in ENGINES:
            raise SquadError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
        path = resolve_bundle(bundle)
        manifest = read_manifest(path)
        return cls(path, manifest, load_inspector(path, manifest, device, probe=probe), device, fail_closed=fail_closed,
                   engine=engine)

    @staticmethod
    def connect(url: str = "http://127.0.0.1:8000", token: str | None = None, timeout: float = 300.0):
        """The same SDK over HTTP against a served squad (``serve run squad.yaml``)."""
        from squad.sdk.remote import RemoteSquad

        return RemoteSquad(url, token=token, timeout=timeout)

    @property
    def criteria(self) -> list[str]:
        return list(self.manifest.criteria)

    @property
    def aligner(self) -> Aligner:
        with self._lock:
            if self._aligner is None:
                self._aligner = load_aligner(self.bundle, self.manifest, self.device, engine=self.engine)
            return self._aligner

    def policy(self, criteria: list[str] | None = None, thresholds: dict[str, float] | None = None,
               max_steps: int | None = None) -> SquadPolicy:
        """The algorithm's settings for one call: defaults from the bundle, overridden per call."""
        return squad_policy(self.manifest, criteria, thresholds, max_steps, self.fail_closed)

    def _inspect(self, pairs, criteria):
        return self.inspector.score(pairs, criteria)

    def _align(self, criterion, pairs):
        return self.aligner.correct(criterion, pairs)

    def _align_many(self, groups):
        many = getattr(self.aligner, "correct_many", None)  # custom aligners may offer only correct()
        if many is None:
            return {c: self.aligner.correct(c, pairs) for c, pairs in groups.items()}
        return many(groups)

    def correct(self, question: str, answer: str, criteria: list[str] | None = None,
                thresholds: dict[str, float] | None = None) -> Correction:
        return self.correct_batch([(question, answer)], criteria, thresholds)[0]

    def correct_batch(self, pairs, criteria: list[str] | None = None,
                      thresholds: dict[str, float] | None = None) -> list[Correction]:
        pairs = [_pair(p) for p in pairs]
        return run_squad(pairs, self._inspect, self._align, self.policy(criteria, thresholds),
                         align_many=self._align_many)

    def inspect(self, question: str, answer: str, criteria: list[str] | None = None) -> dict[str, float]:
        crits = list(self.policy(criteria).thresholds)
        return self.inspector.score([(question, answer)], crits)[0]


def _pair(p) -> tuple[str, str]:
    if isinstance(p, dict):
        return str(p["question"]), str(p["answer"])
    q, a = p
    return str(q), str(a)
