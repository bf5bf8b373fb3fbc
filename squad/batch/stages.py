"""``squad batch`` pipeline stages: the squad algorithm's steps as Ray Data ``map_batches`` actor pools.

Each row carries one pair's state (``squad.core.algorithm.PairState`` as JSON). The staged layout is an
inspector stage, which scores every row and picks its next criterion, then one stage per round:
the round's aligners over the rows grouped by the criterion they picked (all groups decoded as one
mixed LoRA batch, ``apply_round``), then the re-scoring of the rows that changed, in the same actor
(``score_pending``). Rows with nothing to do pass through. With ``preload`` an actor starts loading
its models in a background thread as soon as it starts, so later rounds' loads overlap earlier
rounds' work; without it, an actor loads on its first batch with work.
"""
from __future__ import annotations

import contextlib
import json
import threading
import time
import warnings
from pathlib import Path

from squad.core.algorithm import PairState, SquadPolicy, advance_streaming, apply_round, apply_step, group_by_next, score_pending


class _Stage:
    def __init__(self, bundle: str, policy: SquadPolicy, threads: int = 1, device: str = "cpu", engine_batch: int = 32,
                 preload: bool = False, engine: str = "auto"):
        self.bundle, self.policy, self.threads, self.device, self.engine_batch = bundle, policy, threads, device, engine_batch
        self.engine = engine  # squad.aligner.engine.load_engine's choice for the aligners
        self._model = None
        self._lock = threading.Lock()
        self.preloading = threading.Thread(target=self.model, name="squad-preload", daemon=True) if preload else None
        if self.preloading:
            self.preloading.start()

    def model(self):
        with self._lock:  # a preload in flight finishes first
            if self._model is None:
                import torch

                torch.set_num_threads(self.threads)
                self._model = self.load(*self.bundle_files())
        return self._model

    def bundle_files(self):
        from squad.models.bundle import read_manifest, resolve_bundle

        path = resolve_bundle(self.bundle)
        return path, read_manifest(path)

    def load_inspector(self, path, manifest):
        from squad.sdk.local import load_inspector

        return load_inspector(path, manifest, self.device, list(self.policy.thresholds))

    def load_aligner(self, path, manifest):
        from squad.sdk.local import load_aligner

        aligner = load_aligner(path, manifest, self.device, criteria=list(self.policy.thresholds), engine=self.engine)
        aligner.engine.batch_size = self.engine_batch
        return aligner

    def load(self, path: Path, manifest):
        raise NotImplementedError

    def step(self, states: list[PairState]) -> None:
        raise NotImplementedError

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        states = [PairState.from_json(s) for s in batch["state"]]
        self.step(states)
        return {"idx": batch["idx"], "state": np.array([st.to_json() for st in states], dtype=object)}


class InspectStage(_Stage):
    """Scores every row waiting for scores (all criteria in play, one batched call)."""

    def load(self, path, manifest):
        return self.load_inspector(path, manifest)

    def step(self, states):
        if any(st.needs_scores for st in states):
            score_pending(states, self.model().score, self.policy, time.time)


class RoundStage(_Stage):
    """One round: each criterion's aligner over the rows that picked it (all groups in one mixed
    LoRA batch), then those rows re-scored on every criterion."""

    def load(self, path, manifest):
        return self.load_inspector(path, manifest), self.load_aligner(path, manifest)

    def step(self, states):
        groups = group_by_next(states)
        if groups:
            inspector, aligner = self.model()
            apply_round(groups, aligner.correct, self.policy, time.time, aligner.correct_many)
            score_pending(states, inspector.score, self.policy, time.time)


class SquadStage(_Stage):
    """``layout: fused``: the whole squad in one actor (inspectors and aligners loaded once, the
    aligners only when a row first needs one), without rounds: a row's next aligner step joins the
    running decode as soon as its re-scoring asks for it (``advance_streaming``)."""

    _aligner = None

    def load(self, path, manifest):
        return self.load_inspector(path, manifest)

    def aligner(self):
        if self._aligner is None:
            self._aligner = self.load_aligner(*self.bundle_files())
        return self._aligner

    def step(self, states):
        if not any(st.needs_scores for st in states):
            return
        advance_streaming(states, self.model().score, lambda jobs, done: self.aligner().correct_stream(jobs, done),
                          self.policy, time.time)


# ---------------------------------------------------------------------------------------------
# GPU clusters: the aligner round through ray.data.llm's vLLM engine (LoRA adapter per criterion)


class VllmPrompts:
    """Adds the engine's inputs: the aligner prompt and adapter for rows with work, a 1-token no-op otherwise."""

    def __init__(self, bundle: str, base: str, max_new_tokens: int):
        from squad.models.bundle import read_manifest, resolve_bundle
        from squad.models.registry import load_tokenizer

        self.path = resolve_bundle(bundle)
        self.manifest, self.base, self.n = read_manifest(self.path), base, max_new_tokens
        self.tokenizer = load_tokenizer(Path(base))

    def __call__(self, row: dict) -> dict:
        from squad.core.prompt import build_prompt

        st = PairState.from_json(row["state"])
        if st.done or st.next is None:
            return {**row, "prompt": ".", "model": self.base, "max_tokens": 1}
        entry = self.manifest.criteria[st.next]
        return {**row, "prompt": build_prompt(self.tokenizer, entry.policy.instruction, st.question, st.answer),
                "model": str(self.path / entry.aligner), "max_tokens": self.n}


class VllmApply:
    """Puts the generated corrections into the states, grouped by criterion like ``RoundStage``."""

    def __init__(self, policy: SquadPolicy):
        self.policy = policy

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        states = [PairState.from_json(s) for s in batch["state"]]
        for st, text, secs in zip(states, batch["generated"], batch["llm_s"]):
            if not st.done and st.next is not None:  # the step's time is the engine's own for this request
                apply_step(st.next, [st], lambda _c, _p, t=str(text).strip(): [t], self.policy, time.time,
                           wall_ms=float(secs) * 1000.0, share_ms=float(secs) * 1000.0)
        return {"idx": batch["idx"], "state": np.array([st.to_json() for st in states], dtype=object)}


def vllm_round(ds, bundle: str, path: Path, manifest, policy: SquadPolicy, stage, restarts: int = 0):
    """One aligner round on vLLM: prompts, the engine (ray.data.llm), then the squad step."""
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    from squad.models.registry import load_tokenizer, resolve

    base = str(resolve(manifest.aligner.base))
    rank = max(json.loads((path / e.aligner / "adapter_config.json").read_text())["r"] for e in manifest.criteria.values())
    tok = load_tokenizer(Path(base))
    stop = sorted({t for t in (tok.eos_token, "<|im_end|>", "<|endoftext|>") if t})  # end of the assistant turn
    conf = vLLMEngineProcessorConfig(
        model_source=base, concurrency=stage.concurrency, batch_size=stage.batch_size,
        engine_kwargs={"enable_lora": True, "max_lora_rank": rank, "max_loras": len(manifest.criteria)},
        chat_template_stage=False, tokenize_stage=False, detokenize_stage=False)
    processor = build_processor(
        conf, preprocess=lambda r: {**r, "sampling_params": {"temperature": 0.0, "max_tokens": int(r["max_tokens"]),
                                                              "stop": stop}},
        postprocess=lambda r: {"idx": r["idx"], "state": r["state"], "generated": r["generated_text"],
                               "llm_s": r["time_taken_llm"]})
    with restarts_option():
        ds = ds.map(VllmPrompts, fn_constructor_kwargs=dict(bundle=bundle, base=base,
                                                            max_new_tokens=manifest.aligner.max_new_tokens),
                    compute=actor_pool(1), num_cpus=0.1, max_restarts=restarts)
        return processor(ds).map_batches(VllmApply, fn_constructor_kwargs=dict(policy=policy),
                                         compute=actor_pool(1), num_cpus=0.1, max_restarts=restarts)


@contextlib.contextmanager
def restarts_option():
    """Ray 2.60's map_batches takes ``max_restarts`` only through ``**ray_remote_args``, which warns
    that the route goes in Ray 2.64 (pyproject keeps Ray below that); that one warning is dropped here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated", category=DeprecationWarning)
        yield


def actor_pool(size: int, max_size: int | None = None):
    import ray

    return ray.data.ActorPoolStrategy(min_size=size, max_size=max_size or size)
