"""The Serve app on tiny models in the shared test cluster, over real HTTP."""
from __future__ import annotations

import json
import socket

import httpx
import pytest

from conftest import SERVE_TOKEN

pytestmark = pytest.mark.ray
CRITS = ["ethics", "helpfulness", "honesty"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FaultyAligner:
    """Stands in for the Aligner deployment; shipped to replicas by value (see fixture)."""

    def __init__(self, bundle: str, *args):
        pass

    async def correct(self, criterion, pairs):
        if criterion == "helpfulness":  # passes the router's aligner timeout
            import asyncio

            await asyncio.sleep(30)
        raise RuntimeError(f"aligner {criterion} exploded")

    def ping(self):
        return "ok"


def _args(bundle, **runtime):
    return {"bundle": str(bundle), "upstream": {"model": "tiny-causal-lm", "max_tokens": 8},
            "auth": {"token_env": "SQUAD_TEST_TOKEN"}, "limits": {"max_text_chars": 300, "max_body_bytes": 20000},
            "runtime": runtime}


@pytest.fixture(scope="module")
def server(ray_cluster, tiny_bundle):
    import sys

    import ray.cloudpickle
    from ray import serve

    from squad.serve.app import build_app

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # replicas cannot import tests/
    port = _free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
    except ray.exceptions.RayError:  # the HTTP proxy gets 60 s to start; a loaded machine may need a retry
        serve.shutdown()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(_args(tiny_bundle)), name="squad", route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {SERVE_TOKEN}"}, timeout=120)
    yield url, client, tiny_bundle
    client.close()
    serve.shutdown()


def test_healthz_is_open_and_reports_each_deployment(server):
    url, _, _ = server
    r = httpx.get(url + "/healthz", timeout=60)
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok"
    assert set(body["deployments"]) == {"ingress", "inspector", "aligner", "upstream"}
    assert r.headers.get("x-request-id")


def test_auth_required(server):
    url, _, _ = server
    body = {"question": "q", "answer": "a"}
    assert httpx.post(url + "/v1/correct", json=body).status_code == 401
    assert httpx.post(url + "/v1/correct", json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_inspect_and_models(server):
    _, c, _ = server
    r = c.post("/v1/inspect", json={"question": "What is 2+2?", "answer": "4"})
    assert r.status_code == 200 and set(r.json()["scores"]) == set(CRITS)
    r = c.post("/v1/inspect", json={"question": "What is 2+2?", "answer": "4", "criteria": ["honesty"]})
    assert list(r.json()["scores"]) == ["honesty"]
    assert c.get("/v1/models").json()["data"][0]["id"] == "aligner-squad"


def test_correct_order_and_same_result_as_local_sdk(server):
    from squad import Squad

    url, c, bundle = server
    forced = {k: 1.0 for k in CRITS}
    r = c.post("/v1/correct", json={"question": "What is 2+2?", "answer": "5", "thresholds": forced})
    assert r.status_code == 200
    out = r.json()
    assert len(out["steps"]) == 3 and out["steps"][0]["score_before"] == pytest.approx(min(out["initial_scores"].values()))
    local = Squad.load(bundle).correct("What is 2+2?", "5", thresholds=forced)
    assert [s["criterion"] for s in out["steps"]] == [s.criterion for s in local.steps]
    assert out["answer"] == local.answer
    remote = Squad.connect(url, token=SERVE_TOKEN)
    rc = remote.correct("What is 2+2?", "5", thresholds=forced)
    assert rc.answer == local.answer and [s.criterion for s in rc.steps] == [s.criterion for s in local.steps]
    assert remote.inspect("What is 2+2?", "4") == pytest.approx(Squad.load(bundle).inspect("What is 2+2?", "4"), abs=1e-5)
    batch = remote.correct_batch([("What is 2+2?", "5"), ("Name a colour.", "Blue.")], thresholds=forced)
    assert batch[0].answer == local.answer and len(batch) == 2
    untouched = remote.correct("What is 2+2?", "4", thresholds={k: 0.0 for k in CRITS})
    assert not untouched.changed and untouched.steps == []


def test_concurrent_requests_share_aligner_batches_with_same_results(server):
    from concurrent.futures import ThreadPoolExecutor

    url, c, bundle = server
    forced = {k: 1.0 for k in CRITS}
    pairs = [("What is 2+2?", "5"), ("Name a colour.", "Blue."), ("How do I boil an egg?", "Heat it."),
             ("Who wrote Hamlet?", "Dickens.")]
    alone = [c.post("/v1/correct", json={"question": q, "answer": a, "thresholds": forced}).json() for q, a in pairs]

    def send(p):
        return httpx.post(url + "/v1/correct", json={"question": p[0], "answer": p[1], "thresholds": forced},
                          headers={"Authorization": f"Bearer {SERVE_TOKEN}"}, timeout=120).json()

    with ThreadPoolExecutor(len(pairs)) as pool:
        together = list(pool.map(send, pairs))
    assert [t["answer"] for t in together] == [a["answer"] for a in alone]
    assert all(len(t["steps"]) == 3 and not any(s["error"] for s in t["steps"]) for t in together)


@pytest.mark.parametrize("body,status,needle", [
    ({"answer": "a"}, 400, "question"),
    ({"question": "q", "answer": "   "}, 400, "answer"),
    ({"question": 5, "answer": "a"}, 400, "question"),
    ({"question": "q" * 301, "answer": "a"}, 413, "question"),
    ({"question": "q", "answer": "a", "criteria": ["toxicity"]}, 400, "toxicity"),
    ({"question": "q", "answer": "a", "thresholds": {"ethics": 1.5}}, 400, "thresholds"),
    ({"question": "q", "answer": "a", "surprise": 1}, 400, "surprise"),
])
def test_bad_input_names_the_field(server, body, status, needle):
    _, c, _ = server
    r = c.post("/v1/correct", json=body)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]["message"]


def test_malformed_json_and_oversized_body(server):
    _, c, _ = server
    r = c.post("/v1/correct", content=b'{"question": "q", "answer": ', headers={"content-type": "application/json"})
    assert r.status_code == 400 and "malformed JSON" in r.json()["error"]["message"]
    r = c.post("/v1/correct", content=json.dumps({"question": "q", "answer": "a" * 30000}).encode(),
               headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_openai_client_non_streaming_and_streaming(server):
    from openai import OpenAI

    url, _, _ = server
    client = OpenAI(base_url=url + "/v1", api_key=SERVE_TOKEN)
    resp = client.chat.completions.create(model="aligner-squad", messages=[{"role": "user", "content": "Say hi."}],
                                          extra_body={"squad": {"thresholds": {k: 1.0 for k in CRITS}}})
    trace = resp.model_extra["squad"]
    assert resp.choices[0].message.content == trace["answer"]
    assert len(trace["steps"]) == 3 and trace["question"] == "Say hi."
    stream = client.chat.completions.create(model="aligner-squad", stream=True,
                                            messages=[{"role": "user", "content": "Say hi."}],
                                            extra_body={"squad": {"thresholds": {k: 1.0 for k in CRITS}}})
    chunks = list(stream)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks)
    assert text == trace["answer"]  # same upstream answer, same squad: same corrected text
    assert chunks[-1].choices[0].finish_reason == "stop" and "squad" in chunks[-1].model_extra
    import openai

    with pytest.raises(openai.BadRequestError, match="field 'messages': needs at least one message with role 'user'") as e:
        client.chat.completions.create(model="x", messages=[{"role": "system", "content": "no user turn"}])
    assert e.value.status_code == 400


def test_aligner_server_continuous_batch_matches_the_sdk_and_survives_a_failure(tiny_bundle):
    """The Aligner deployment's class in-process: pairs sent at different times, under several
    criteria, come back as ``Aligner.correct`` gives them; an engine failure reaches the pairs in
    flight, and the decode thread serves the next request."""
    import asyncio

    from squad import Squad
    from squad.serve.deployments import AlignerServer

    srv = AlignerServer(str(tiny_bundle), batch_size=4, batch_wait_s=0.0)
    pairs = [(f"Question {i}?", f"Answer number {i}.") for i in range(6)]
    crits = ["ethics", "ethics", "honesty", "helpfulness", "honesty", "ethics"]

    async def send():
        first = asyncio.create_task(srv.correct("ethics", pairs[:2]))
        await asyncio.sleep(0.01)
        later = await asyncio.gather(*(srv.correct(c, [p]) for c, p in zip(crits[2:], pairs[2:])))
        return await first + [t for out in later for t in out]

    got = asyncio.run(send())
    aligner = Squad.load(tiny_bundle).aligner
    assert got == [aligner.correct(c, [p])[0] for c, p in zip(crits, pairs)]

    def broken(jobs, done):
        raise RuntimeError("engine down")

    stream, srv.aligner.correct_stream = srv.aligner.correct_stream, broken
    with pytest.raises(RuntimeError, match="engine down"):
        asyncio.run(srv.correct("ethics", pairs[:2]))
    srv.aligner.correct_stream = stream
    assert asyncio.run(srv.correct("honesty", pairs[2:3])) == got[2:3]

    # a caller whose event loop closed before its answer came (as when a gather fails early and
    # asyncio.run returns) must not stop the decode thread
    gone = asyncio.new_event_loop()
    orphan = gone.create_future()
    gone.close()
    srv._queue.put((next(srv._keys), "ethics", *pairs[0], gone, orphan))
    assert asyncio.run(srv.correct("honesty", pairs[2:3])) == got[2:3]
    with pytest.raises(KeyError, match="toxicity"):
        asyncio.run(srv.correct("toxicity", pairs[:1]))

# ---------------------------------------------------------------------------------------------
# These redeploy the shared app and leave it changed: they stay last in this module, so that no
# test needs the app restored (a redeploy takes half a minute on 2 cores).


def test_per_criterion_inspector_deployments(server):
    """inspector_layout=per_criterion (auto for fine-tuned bundles without a judge): one deployment each, same scores."""
    from ray import serve

    from squad.serve.app import build_app

    url, c, bundle = server
    pair = {"question": "Is the sky green?", "answer": "Yes, always."}
    shared = c.post("/v1/inspect", json=pair).json()["scores"]
    serve.run(build_app({**_args(bundle), "inspector_layout": "per_criterion"}), name="squad", route_prefix="/")
    health = httpx.get(url + "/healthz", timeout=60).json()
    assert {f"inspector-{k}" for k in CRITS} <= set(health["deployments"]) and health["status"] == "ok"
    split = c.post("/v1/inspect", json=pair).json()["scores"]
    assert split == pytest.approx(shared, abs=1e-5)
    r = c.post("/v1/inspect", json={**pair, "criteria": ["honesty", "ethics"]}).json()["scores"]
    assert set(r) == {"honesty", "ethics"} and r["honesty"] == pytest.approx(shared["honesty"], abs=1e-5)
    out = c.post("/v1/correct", json={**pair, "thresholds": {k: 1.0 for k in CRITS}}).json()
    assert out["initial_scores"] == pytest.approx(shared, abs=1e-5) and len(out["steps"]) == 3


def test_user_config_change_takes_effect(server):
    # Imperative serve.run redeploys replicas; the no-restart path (squad.yaml + serve deploy)
    # is covered end to end in test_docs_examples.py (test_served_squad_reconfigures_in_place).
    from ray import serve

    from squad.serve.app import build_app

    url, c, bundle = server
    before = c.post("/v1/correct", json={"question": "What is 2+2?", "answer": "5"}).json()
    serve.run(build_app(_args(bundle, thresholds={k: 1.0 for k in CRITS}, max_steps=1)), name="squad", route_prefix="/")
    after = c.post("/v1/correct", json={"question": "What is 2+2?", "answer": "5"}).json()
    assert len(after["steps"]) == 1 and after["steps"][0]["threshold"] == 1.0
    assert before["initial_scores"] == pytest.approx(after["initial_scores"], abs=1e-5)
    assert httpx.get(url + "/healthz", timeout=60).json()["runtime"]["max_steps"] == 1


def test_aligner_fault_fails_open_and_closed(server):
    from ray import serve

    from squad.serve.app import build_graph

    _, c, bundle = server
    forced = {k: 1.0 for k in CRITS}
    serve.run(build_graph(_args(bundle, aligner_timeout_s=3), aligner_cls=FaultyAligner), name="squad",
              route_prefix="/")
    r = c.post("/v1/correct", json={"question": "What is 2+2?", "answer": "5", "thresholds": forced})
    assert r.status_code == 200
    out = r.json()
    assert out["answer"] == "5" and not out["changed"] and len(out["steps"]) == 3
    errors = {s["criterion"]: s["error"] for s in out["steps"]}
    assert not any(s["applied"] for s in out["steps"])
    assert "exploded" in errors["ethics"] and "exploded" in errors["honesty"]
    assert "Timeout" in errors["helpfulness"], errors["helpfulness"]
    serve.run(build_graph(_args(bundle, fail_closed=True, aligner_timeout_s=3), aligner_cls=FaultyAligner),
              name="squad", route_prefix="/")
    out = c.post("/v1/correct", json={"question": "What is 2+2?", "answer": "5", "thresholds": forced}).json()
    from squad.models.bundle import read_manifest

    refusals = {e.policy.refusal for e in read_manifest(bundle).criteria.values()}
    assert out["answer"] in refusals and out["changed"]
