"""``Squad.connect(url)``: the SDK over HTTP against a served squad (``serve run squad.yaml``)."""
from __future__ import annotations

import os

import httpx

from squad.core.correction import Correction
from squad.errors import SquadError


class RemoteSquad:
    """Same methods and results as a local ``Squad``, over the HTTP API."""

    def __init__(self, url: str = "http://127.0.0.1:8000", token: str | None = None, timeout: float = 300.0):
        token = token or os.environ.get("SQUAD_API_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def _post(self, path: str, body: dict) -> dict:
        r = self._http.post(path, json=body)
        if r.status_code >= 400:
            try:
                msg = r.json()["error"]["message"]
            except Exception:
                msg = r.text
            raise SquadError(f"{self.url}{path}: HTTP {r.status_code}: {msg}")
        return r.json()

    @staticmethod
    def _opts(criteria, thresholds) -> dict:
        out = {}
        if criteria:
            out["criteria"] = list(criteria)
        if thresholds:
            out["thresholds"] = dict(thresholds)
        return out

    def correct(self, question: str, answer: str, criteria: list[str] | None = None,
                thresholds: dict[str, float] | None = None) -> Correction:
        body = {"question": question, "answer": answer, **self._opts(criteria, thresholds)}
        return Correction.model_validate(self._post("/v1/correct", body))

    def correct_batch(self, pairs, criteria: list[str] | None = None,
                      thresholds: dict[str, float] | None = None) -> list[Correction]:
        items = [p if isinstance(p, dict) else {"question": p[0], "answer": p[1]} for p in pairs]
        out = self._post("/v1/correct", {"pairs": items, **self._opts(criteria, thresholds)})
        return [Correction.model_validate(r) for r in out["results"]]

    def inspect(self, question: str, answer: str, criteria: list[str] | None = None) -> dict[str, float]:
        return self._post("/v1/inspect", {"question": question, "answer": answer, **self._opts(criteria, None)})["scores"]

    def health(self) -> dict:
        return self._http.get("/healthz").json()

    def close(self) -> None:
        self._http.close()
