"""The Serve app: a FastAPI ingress that runs the squad algorithm over deployment handles.

``serve run squad.yaml`` calls ``build_app(args)`` with the typed ``SquadAppArgs``.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.middleware.base import BaseHTTPMiddleware
from ray import serve
from ray.serve.handle import DeploymentHandle

from squad.core.algorithm import run_squad
from squad.models.bundle import read_manifest, resolve_bundle
from squad.errors import SquadError
from squad.serve.config import RuntimeConfig, SquadAppArgs
from squad.serve.deployments import AlignerServer, InspectorServer, UpstreamServer
from squad.serve.schemas import ChatRequest, CorrectRequest, InspectRequest
from squad.sdk.local import squad_policy

logger = logging.getLogger("ray.serve")


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind


def _error(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
    return JSONResponse({"error": {"message": message, "type": kind, "param": param}}, status_code=status)


async def _invalid(request: Request, exc: RequestValidationError):
    errs = exc.errors()
    first = errs[0] if errs else {"loc": (), "msg": "invalid request"}
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    if first.get("type") == "json_invalid":
        return _error(400, f"malformed JSON: {first.get('ctx', {}).get('error', first['msg'])}")
    field = ".".join(loc) or "body"
    return _error(400, f"field '{field}': {first['msg']}", field)


async def _api_error(request: Request, exc: ApiError):
    return _error(exc.status, exc.message, exc.param, exc.kind)


class SquadIngress:
    """Router and HTTP front: validation, auth, limits, the squad loop, the OpenAI proxy."""

    def __init__(self, inspectors: dict[str, DeploymentHandle], aligners: dict[str, DeploymentHandle],
                 upstream: DeploymentHandle | None, args: dict):
        from ray.serve.metrics import Counter

        self.args = SquadAppArgs.model_validate(args)
        self.manifest = read_manifest(resolve_bundle(self.args.bundle))
        # criterion -> handle: the same shared/multiplexed deployment for every criterion, or one each.
        self.inspectors, self.aligners, self.upstream = inspectors, aligners, upstream
        self.runtime = self.args.runtime
        self.token = os.environ.get(self.args.auth.token_env) if self.args.auth.token_env else None
        if self.args.auth.token_env and not self.token:
            raise RuntimeError(f"auth.token_env is {self.args.auth.token_env!r} but that variable is not set")
        tags = ("criterion",)
        self.flagged = Counter("squad_flagged_total", "Pairs a criterion's inspector flagged", tag_keys=tags)
        self.corrected = Counter("squad_corrected_total", "Aligner steps applied", tag_keys=tags)
        self.errors = Counter("squad_aligner_errors_total", "Aligner steps that failed", tag_keys=tags)
        self.rejected = Counter("squad_rejected_total", "Rewrites not kept (do no harm)", tag_keys=tags)
        self.sanitised = Counter("squad_sanitised_total", "Answers carrying untrusted structure, removed before scoring")

    def __serve_build_asgi_app__(self) -> FastAPI:
        """Serve calls this in the replica after __init__: the HTTP app, bound to this router."""
        return create_api(self)

    def reconfigure(self, user_config: dict) -> None:
        """Live update from squad.yaml's user_config: thresholds, max_steps, criteria, fail mode."""
        cfg = RuntimeConfig.model_validate(user_config or {})
        squad_policy(self.manifest, cfg.criteria, cfg.thresholds, cfg.max_steps)  # validates names
        self.runtime = cfg
        logger.info("squad runtime config updated: %s", cfg.model_dump())

    # ---- plumbing -------------------------------------------------------------------------
    def _policy(self, criteria, thresholds):
        rt = self.runtime
        merged = {**rt.thresholds, **(thresholds or {})}
        try:
            return squad_policy(self.manifest, criteria or rt.criteria, merged, rt.max_steps, rt.fail_closed)
        except SquadError as e:
            raise ApiError(400, str(e), "criteria" if "criterion" in str(e) else "thresholds") from None

    def _score_calls(self, pairs: list[tuple[str, str]], crits: list[str]):
        """One score call per inspector deployment, for the criteria it serves."""
        by_deployment: dict[str, tuple[DeploymentHandle, list[str]]] = {}
        for c in crits:
            h = self.inspectors[c]
            by_deployment.setdefault(h.deployment_name, (h, []))[1].append(c)
        return [h.score.remote(pairs, cs) for h, cs in by_deployment.values()]

    @staticmethod
    def _merge(parts: list[list[dict[str, float]]]) -> list[dict[str, float]]:
        return [{k: v for part in per_pair for k, v in part.items()} for per_pair in zip(*parts)]

    def _check_sizes(self, texts: dict[str, str]) -> None:
        limit = self.args.limits.max_text_chars
        for field, text in texts.items():
            if text is not None and len(text) > limit:
                raise ApiError(413, f"field '{field}' is {len(text)} characters; the limit is {limit}", field)

    async def _correct_pairs(self, pairs: list[tuple[str, str]], criteria, thresholds, rid: str):
        policy = self._policy(criteria, thresholds)
        timeout = self.runtime.aligner_timeout_s

        def inspect(ps, crits):
            return self._merge([r.result(timeout_s=timeout) for r in self._score_calls(ps, crits)])

        def align(crit, ps):
            resp = self.aligners[crit].correct.remote(crit, ps)
            try:
                return resp.result(timeout_s=timeout)
            except Exception:
                resp.cancel()  # a timed-out aligner call must not keep the replica busy
                raise

        results = await asyncio.to_thread(run_squad, pairs, inspect, align, policy)
        for c in results:
            if c.sanitised:
                self.sanitised.inc()
                logger.info("[%s] sanitised: %s", rid, "; ".join(c.sanitised))
            for k, s in c.initial_scores.items():
                if s < policy.thresholds[k]:
                    self.flagged.inc(tags={"criterion": k})
            for st in c.steps:
                counter = self.corrected if st.applied else self.rejected if st.rejected else self.errors
                counter.inc(tags={"criterion": st.criterion})
                if st.error:
                    logger.warning("[%s] aligner %s failed: %s", rid, st.criterion, st.error)
        logger.info("[%s] corrected %d pair(s): %s", rid, len(results),
                    [[s.criterion for s in c.steps] for c in results])
        return results

    # ---- endpoints ------------------------------------------------------------------------
    async def correct(self, body: CorrectRequest, request: Request):
        rid = request.state.rid
        try:
            pairs = body.all_pairs()
        except ValueError as e:
            raise ApiError(400, str(e), "pairs") from None
        if len(pairs) > self.args.limits.max_pairs:
            raise ApiError(413, f"field 'pairs' has {len(pairs)} items; the limit is {self.args.limits.max_pairs}", "pairs")
        for i, (q, a) in enumerate(pairs):
            self._check_sizes({"question" if body.pairs is None else f"pairs.{i}.question": q,
                               "answer" if body.pairs is None else f"pairs.{i}.answer": a})
        results = await self._correct_pairs(pairs, body.criteria, body.thresholds, rid)
        if body.pairs is None:
            return results[0].model_dump()
        return {"results": [r.model_dump() for r in results]}

    async def inspect(self, body: InspectRequest, request: Request):
        self._check_sizes({"question": body.question, "answer": body.answer})
        policy = self._policy(body.criteria, None)
        scores = self._merge(await asyncio.gather(*self._score_calls([(body.question, body.answer)],
                                                                      list(policy.thresholds))))
        return {"scores": scores[0], "thresholds": policy.thresholds,
                "flagged": sorted(c for c, s in scores[0].items() if s < policy.thresholds[c])}

    async def models(self):
        return {"object": "list", "data": [{"id": "aligner-squad", "object": "model", "created": 0,
                                            "owned_by": "aligner-squad", "upstream": self.args.upstream.model,
                                            "criteria": list(self.manifest.criteria)}]}

    async def healthz(self):
        checks = {}
        if len({h.deployment_name for h in self.inspectors.values()}) == 1:
            checks["inspector"] = next(iter(self.inspectors.values()))
        else:
            checks.update({f"inspector-{c}": h for c, h in self.inspectors.items()})
        if len({h.deployment_name for h in self.aligners.values()}) == 1:
            checks["aligner"] = next(iter(self.aligners.values()))
        else:
            checks.update({f"aligner-{c}": h for c, h in self.aligners.items()})
        if self.upstream is not None:
            checks["upstream"] = self.upstream
        status: dict[str, str] = {"ingress": "ok"}
        for name, h in checks.items():
            try:
                status[name] = await asyncio.wait_for(h.ping.remote(), timeout=10)
            except Exception as e:  # report, never raise: this is the health endpoint
                status[name] = f"error: {type(e).__name__}"
        ok = all(v == "ok" for v in status.values())
        replica = serve.get_replica_context().replica_id.unique_id
        return JSONResponse({"status": "ok" if ok else "degraded", "deployments": status, "replica": replica,
                             "runtime": self.runtime.model_dump()},
                            status_code=200 if ok else 503)

    async def chat(self, body: ChatRequest, request: Request):
        rid = request.state.rid
        lim = self.args.limits
        if len(body.messages) > lim.max_messages:
            raise ApiError(413, f"field 'messages' has {len(body.messages)} items; the limit is {lim.max_messages}", "messages")
        self._check_sizes({f"messages.{i}.content": m.content for i, m in enumerate(body.messages)})
        users = [m.content for m in body.messages if m.role == "user"]
        if not users:
            raise ApiError(400, "field 'messages': needs at least one message with role 'user'", "messages")
        opts = body.squad
        self._policy(opts.criteria if opts else None, opts.thresholds if opts else None)  # 400 early
        max_tokens = min(body.max_completion_tokens or body.max_tokens or self.args.upstream.max_tokens,
                         self.args.upstream.max_tokens)
        t0 = time.perf_counter()
        upstream_answer = await self._ask_upstream([m.model_dump(include={"role", "content"}) for m in body.messages],
                                                   max_tokens, rid)
        upstream_ms = (time.perf_counter() - t0) * 1000.0
        result = (await self._correct_pairs([(users[-1], upstream_answer)], opts.criteria if opts else None,
                                            opts.thresholds if opts else None, rid))[0]
        trace = {**result.model_dump(), "upstream_latency_ms": upstream_ms}
        cid, created, model = f"chatcmpl-{rid}", int(time.time()), body.model or "aligner-squad"
        if not body.stream:
            return {"id": cid, "object": "chat.completion", "created": created, "model": model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": result.answer},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}, "squad": trace}
        return StreamingResponse(_sse(cid, created, model, result.answer, trace), media_type="text/event-stream")

    async def _ask_upstream(self, messages: list[dict], max_tokens: int, rid: str) -> str:
        up = self.args.upstream
        try:
            if up.base_url is None:
                return await self.upstream.chat.remote(messages, max_tokens)
            from openai import AsyncOpenAI

            client = AsyncOpenAI(base_url=up.base_url, api_key=os.environ.get(up.api_key_env, "none"),
                                 timeout=up.timeout_s, max_retries=1)
            resp = await client.chat.completions.create(model=up.model, messages=messages, max_tokens=max_tokens)
            return resp.choices[0].message.content or ""
        except Exception as e:
            logger.error("[%s] upstream failed: %s", rid, e)
            raise ApiError(502, f"upstream model failed: {type(e).__name__}: {e}", None, "upstream_error") from None


def _sse(cid: str, created: int, model: str, text: str, trace: dict):
    """The corrected answer as OpenAI chat.completion.chunk events (correction needs the whole
    upstream answer first, so streaming starts once the squad is done)."""
    def event(delta: dict, finish=None, extra=None):
        obj = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        if extra:
            obj.update(extra)
        return f"data: {json.dumps(obj)}\n\n"

    yield event({"role": "assistant", "content": ""})
    words = text.split(" ")
    for i in range(0, len(words), 4):
        piece = " ".join(words[i:i + 4])
        yield event({"content": piece if i == 0 else " " + piece})
    yield event({}, "stop", {"squad": trace})
    yield "data: [DONE]\n\n"


async def _front_middleware(request: Request, call_next):
    """Request ids, body-size limit and bearer auth, ahead of every route."""
    rid = request.headers.get("x-request-id") or uuid.uuid4().hex[:16]
    request.state.rid = rid
    ingress: SquadIngress = request.app.state.ingress
    cfg = ingress.args
    if request.url.path != "/healthz":
        if ingress.token is not None:
            got = request.headers.get("authorization", "")
            if not (got.startswith("Bearer ") and hmac.compare_digest(got[7:].encode(), ingress.token.encode())):
                resp = _error(401, "missing or invalid bearer token (Authorization: Bearer <token>)", None,
                              "authentication_error")
                resp.headers["x-request-id"] = rid
                return resp
        size = request.headers.get("content-length")
        if size and size.isdigit() and int(size) > cfg.limits.max_body_bytes:
            resp = _error(413, f"request body is {size} bytes; the limit is {cfg.limits.max_body_bytes}")
            resp.headers["x-request-id"] = rid
            return resp
    resp = await call_next(request)
    resp.headers["x-request-id"] = rid
    logger.info("[%s] %s %s -> %d", rid, request.method, request.url.path, resp.status_code)
    return resp


def create_api(ingress: SquadIngress) -> FastAPI:
    """The FastAPI app of one ingress replica: routes call the router's methods."""
    app = FastAPI(title="Aligner Squad", version="0.1.0")
    app.state.ingress = ingress
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(ApiError, _api_error)
    app.add_middleware(BaseHTTPMiddleware, dispatch=_front_middleware)

    @app.post("/v1/correct")
    async def correct(body: CorrectRequest, request: Request):
        return await ingress.correct(body, request)

    @app.post("/v1/inspect")
    async def inspect(body: InspectRequest, request: Request):
        return await ingress.inspect(body, request)

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request):
        return await ingress.chat(body, request)

    @app.get("/v1/models")
    async def models():
        return await ingress.models()

    @app.get("/healthz")
    async def healthz():
        return await ingress.healthz()

    return app


def build_app(args: dict):
    """The typed app builder: ``serve run squad.yaml`` passes the YAML's ``args`` (one dict)."""
    return build_graph(args)


def inspector_layout(requested: str, manifest) -> str:
    """``auto``: one deployment per criterion only when nothing is shared between the criteria
    (fine-tuned encoders and no hidden-state judge, whose one forward pass serves them all)."""
    if requested != "auto":
        return requested
    shared = manifest.inspector.kind == "shared" or manifest.inspector.probe is not None
    return "shared" if shared else "per_criterion"


def build_graph(args: dict | SquadAppArgs, inspector_cls=InspectorServer, aligner_cls=AlignerServer,
                upstream_cls=UpstreamServer):
    """The deployment graph; the server classes can be swapped (tests inject faulty ones)."""
    a = SquadAppArgs.model_validate(args if isinstance(args, dict) else args.model_dump())
    resolve_bundle(a.bundle)  # fail fast with a clear message on a bad bundle
    manifest = read_manifest(resolve_bundle(a.bundle))
    criteria = list(manifest.criteria)
    layout = inspector_layout(a.inspector_layout, manifest)
    if layout == "shared":
        shared = serve.deployment(inspector_cls, name="Inspector", **a.inspector.serve_options()).bind(
            a.bundle, a.inspector_batch_size, a.inspector_batch_wait_s)
        inspectors = {c: shared for c in criteria}
    else:
        # The inspectors' CPU share is split between the criteria, so the default still fits 2 CPUs.
        each = a.inspector.model_copy(update={"num_cpus": a.inspector.num_cpus / len(criteria)}).serve_options()
        inspectors = {c: serve.deployment(inspector_cls, name=f"Inspector-{c}", **each).bind(
            a.bundle, a.inspector_batch_size, a.inspector_batch_wait_s, [c]) for c in criteria}
    if a.aligner_layout == "multiplexed":
        shared = serve.deployment(aligner_cls, name="Aligner", **a.aligner.serve_options()).bind(
            a.bundle, None, a.aligner_batch_size, a.aligner_batch_wait_s, a.aligner_engine)
        aligners = {c: shared for c in criteria}
    else:
        aligners = {c: serve.deployment(aligner_cls, name=f"Aligner-{c}", **a.aligner.serve_options()).bind(
            a.bundle, [c], a.aligner_batch_size, a.aligner_batch_wait_s, a.aligner_engine) for c in criteria}
    upstream = (serve.deployment(upstream_cls, name="Upstream",
                                 **a.upstream_deployment.serve_options()).bind(a.upstream.model, a.aligner_engine)
                if a.upstream.base_url is None else None)
    ingress = serve.deployment(serve.ingress()(SquadIngress), name="SquadIngress",
                               user_config=a.runtime.model_dump(), **a.ingress.serve_options())
    # The runtime settings travel only in user_config: changing them reconfigures, never restarts.
    return ingress.bind(inspectors, aligners, upstream, a.model_dump(exclude={"runtime"}))
