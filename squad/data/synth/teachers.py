"""Teachers: ``OpenAITeacher`` (any OpenAI-compatible server) and ``LocalTeacher`` (an HF model, greedy)."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Protocol
from urllib.parse import urlparse

from squad.core.prompt import TEMPLATE_MARKERS, neutralise, special_strings
from squad.errors import SquadError

# Chat-template markers of common model families, broken in prompts sent to a remote teacher.
CHAT_MARKERS = list(TEMPLATE_MARKERS)
DEFAULT_API_KEY_ENV = "SQUAD_TEACHER_API_KEY"


class TeacherError(SquadError):
    """A teacher failed. Raised when it cannot be used at all; returned in the slot of one failed prompt."""


class Teacher(Protocol):
    name: str  # recorded in provenance.teacher

    def complete(self, prompts: list[str], max_tokens: int, temperature: float = 0.0) -> list[str | TeacherError]:
        """One reply per prompt (batched); a prompt that failed gets a TeacherError in its slot."""


class OpenAITeacher:
    """Any OpenAI-compatible chat endpoint, through the official client; requests run concurrently."""

    def __init__(self, base_url: str, model: str | None = None, api_key_env: str = DEFAULT_API_KEY_ENV,
                 timeout: float = 60.0, retries: int = 2, concurrency: int = 8, seed: int | None = None):
        import os

        import openai

        url = base_url.rstrip("/")
        self.base_url = url + "/v1" if urlparse(url).path in ("", "/") else url  # vLLM-style servers
        self.client = openai.OpenAI(base_url=self.base_url, api_key=os.environ.get(api_key_env) or "EMPTY",
                                    timeout=timeout, max_retries=retries)
        self.concurrency, self.seed = concurrency, seed
        self.model = model or self._first_model()
        self.name = f"{self.model} @ {self.base_url}"

    def _first_model(self) -> str:
        try:
            models = [m.id for m in self.client.models.list()]
        except Exception as e:  # noqa: BLE001 - connection, auth and HTTP errors alike
            raise self._fatal(e) from None
        if not models:
            raise TeacherError(f"teacher {self.base_url} lists no models: pass --teacher-model")
        return models[0]

    def _fatal(self, e: Exception) -> TeacherError:
        import openai

        if isinstance(e, openai.APIConnectionError):  # includes timeouts
            return TeacherError(f"cannot reach the teacher at {self.base_url}: {e}")
        if isinstance(e, openai.APIStatusError):
            return TeacherError(f"teacher {self.base_url} answered HTTP {e.status_code}: {e.message}")
        return TeacherError(f"teacher {self.base_url}: {type(e).__name__}: {e}")

    def _one(self, prompt: str, max_tokens: int, temperature: float) -> str | TeacherError:
        import openai

        extra = {"seed": self.seed} if self.seed is not None else {}
        try:
            r = self.client.chat.completions.create(
                model=self.model, messages=[{"role": "user", "content": neutralise(prompt, CHAT_MARKERS)}],
                max_tokens=max_tokens, temperature=temperature, **extra)
        except (openai.APIConnectionError, openai.AuthenticationError, openai.PermissionDeniedError,
                openai.NotFoundError) as e:
            raise self._fatal(e) from None  # the teacher is unusable: stop the run
        except openai.APIStatusError as e:  # this prompt failed (too long, filtered, server error)
            return TeacherError(f"HTTP {e.status_code}: {e.message}")
        except openai.APIError as e:  # e.g. a reply that is not a chat completion
            return TeacherError(f"{type(e).__name__}: {e}")
        if not r.choices:
            return TeacherError("the reply has no choices")
        return r.choices[0].message.content or ""

    def complete(self, prompts: list[str], max_tokens: int, temperature: float = 0.0) -> list[str | TeacherError]:
        with ThreadPoolExecutor(max(1, min(self.concurrency, len(prompts)))) as pool:
            return list(pool.map(lambda p: self._one(p, max_tokens, temperature), prompts))


class LocalTeacher:
    """A registry name or local HF model directory on the default engine (CTranslate2 on CPU, see
    ``squad.aligner.engine.load_engine``); greedy: ``temperature`` is unused.

    Prompts go through the tokenizer's chat template as one user turn, with every special-token
    string in them neutralised first, so generated questions and answers cannot act as structure.
    """

    def __init__(self, name_or_path: str, device: str = "cpu", batch_size: int = 8):
        from squad.aligner.engine import load_engine
        from squad.models.registry import resolve

        self.name = name_or_path
        self.engine = load_engine(resolve(name_or_path), device=device, batch_size=batch_size)
        self.specials = special_strings(self.engine.tokenizer)

    def _prompt(self, text: str) -> str:
        tok, text = self.engine.tokenizer, neutralise(text, self.specials)
        if getattr(tok, "chat_template", None):
            return tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                           add_generation_prompt=True)
        return text + "\n\n"

    def complete(self, prompts: list[str], max_tokens: int, temperature: float = 0.0) -> list[str | TeacherError]:
        return list(self.engine.generate([self._prompt(p) for p in prompts], None, max_tokens))


def make_teacher(spec: str, model: str | None = None, api_key_env: str = DEFAULT_API_KEY_ENV,
                 timeout: float = 60.0, retries: int = 2, concurrency: int = 8, seed: int | None = None) -> Teacher:
    """``spec``: an http(s) URL (OpenAITeacher) or a registry name / model directory (LocalTeacher)."""
    if spec.startswith(("http://", "https://")):
        return OpenAITeacher(spec, model, api_key_env, timeout, retries, concurrency, seed)
    if model:
        raise SquadError(f"--teacher-model names a model on a server; --teacher {spec!r} is a local model")
    return LocalTeacher(spec)
