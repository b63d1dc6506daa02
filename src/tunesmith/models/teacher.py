"""A teacher: a model that writes text for training rows, behind an OpenAI-compatible API or loaded
locally. Synthetic data (`data synth`, `data augment`) and off-policy distillation ask it.

Every reply is cached on disk as soon as it arrives, keyed by the teacher's identity, its sampling
settings, the conversation and the sample number. A run that is killed and started again asks the
teacher only for what it had not answered yet, and a run with stricter filters reuses every reply.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tunesmith.config import TeacherConfig
from tunesmith.models.generate import AnswerCache, cache_path
from tunesmith.progress import progress_bar


class TeacherError(RuntimeError):
    """A teacher that cannot be used at all: unreachable, refused, or not found."""


@dataclass(frozen=True)
class Request:
    """One prompt to the teacher; `sample` tells apart several sampled replies to the same prompt."""

    prompt: str
    sample: int = 0
    context: tuple[tuple[str, str], ...] = ()  # (role, content) of the turns before the prompt

    @property
    def key(self) -> str:
        if not self.context:
            return f"{self.sample}\x00{self.prompt}"
        return f"{self.sample}\x00{json.dumps([*self.context, ['user', self.prompt]])}"

    @property
    def messages(self) -> list[dict[str, str]]:
        """The conversation to answer: the earlier turns, then the prompt as the user's."""
        turns = [*self.context, ("user", self.prompt)]
        return [{"role": role, "content": content} for role, content in turns]


class Backend(Protocol):
    identity: str

    def generate(
        self, requests: list[Request], settings: TeacherConfig, deliver: Callable[[Request, str], None]
    ) -> None:
        """Answer every request, handing each reply to `deliver` as soon as it is written."""


class EndpointBackend:
    """A teacher behind an OpenAI-compatible chat completions API, several requests in flight."""

    def __init__(self, base_url: str, model: str, api_key: str | None, field: str = "synth.teacher") -> None:
        from openai import OpenAI

        self.client = OpenAI(base_url=base_url, api_key=api_key or "not-needed", max_retries=3, timeout=300)
        self.base_url, self.model = base_url, model
        self.field = field  # where the settings are, for the errors
        self.identity = f"endpoint:{base_url}:{model}"

    def _one(self, request: Request, settings: TeacherConfig) -> str:
        response = self.client.chat.completions.create(
            model=self.model,
            messages=request.messages,  # type: ignore[arg-type]
            temperature=settings.temperature,
            top_p=settings.top_p,
            max_tokens=settings.max_tokens,
            seed=settings.seed + request.sample,
        )
        return response.choices[0].message.content or ""

    def generate(
        self, requests: list[Request], settings: TeacherConfig, deliver: Callable[[Request, str], None]
    ) -> None:
        import openai

        with ThreadPoolExecutor(max_workers=settings.concurrency) as pool:
            futures = {pool.submit(self._one, request, settings): request for request in requests}
            try:
                for future in as_completed(futures):
                    try:
                        reply = future.result()
                    except openai.APIStatusError as exc:
                        if exc.status_code in (401, 403, 404):
                            raise
                        reply = f"\x00teacher error {exc.status_code}: {exc.message}"  # one bad request
                    deliver(futures[future], reply)
            except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
                raise TeacherError(
                    f"the teacher endpoint {self.base_url} refused the key ({exc.status_code}); set the "
                    f"environment variable named by {self.field}.api_key_env"
                ) from None
            except openai.NotFoundError:
                raise TeacherError(
                    f"the teacher endpoint {self.base_url} has no model {self.model!r} "
                    f"({self.field}.model); its /models lists what it serves"
                ) from None
            except openai.APIConnectionError:
                raise TeacherError(
                    f"cannot reach the teacher endpoint {self.base_url} ({self.field}.endpoint); "
                    "is it running, and is the URL the API's base (…/v1)?"
                ) from None
            finally:
                for future in futures:  # on an error, nothing more is sent
                    future.cancel()


class LocalBackend:
    """A teacher that is a local causal LM (the base model or a registered version), prompts batched."""

    def __init__(self, model: Any, tokenizer: Any, identity: str) -> None:
        self.model, self.tokenizer, self.identity = model, tokenizer, f"local:{identity}"

    def generate(
        self, requests: list[Request], settings: TeacherConfig, deliver: Callable[[Request, str], None]
    ) -> None:
        import torch

        from tunesmith.models.generate import inference, stop_token_ids

        stops = stop_token_ids(self.tokenizer, self.model)
        texts = [
            str(self.tokenizer.apply_chat_template(r.messages, add_generation_prompt=True, tokenize=False))
            for r in requests
        ]
        order = sorted(range(len(requests)), key=lambda i: len(texts[i]))  # little padding per batch
        sampling = (
            {"do_sample": True, "temperature": settings.temperature, "top_p": settings.top_p}
            if settings.temperature > 0
            else {"do_sample": False}
        )
        with inference(self.model, self.tokenizer):
            for start in range(0, len(order), settings.batch_size):
                batch = order[start : start + settings.batch_size]
                torch.manual_seed(settings.seed + start)
                encoded = self.tokenizer(
                    [texts[i] for i in batch], return_tensors="pt", padding=True, add_special_tokens=False
                ).to(self.model.device)
                output = self.model.generate(
                    **encoded,
                    max_new_tokens=settings.max_tokens,
                    eos_token_id=stops or None,
                    pad_token_id=self.tokenizer.pad_token_id,
                    **sampling,
                )
                for i, tokens in zip(batch, output[:, encoded["input_ids"].shape[1] :], strict=True):
                    deliver(requests[i], str(self.tokenizer.decode(tokens, skip_special_tokens=True)).strip())


class Teacher:
    """A backend with its settings and its reply cache."""

    def __init__(self, backend: Backend, settings: TeacherConfig, cache_dir: Path) -> None:
        self.backend, self.settings = backend, settings
        sampling = settings.model_dump(include={"temperature", "top_p", "max_tokens", "seed"})
        self.cache = AnswerCache(cache_path(cache_dir, backend.identity, {"synth": 1, **sampling}))

    @property
    def identity(self) -> str:
        return self.backend.identity

    def generate(self, requests: list[Request], label: str = "Teacher writing") -> list[str]:
        """Replies in request order; cached ones are not asked again. An error reply starts with NUL."""
        replies = {r.key: self.cache.get(r.key) for r in requests}
        todo = [r for r in dict.fromkeys(requests) if replies[r.key] is None]
        if todo:
            saved = 0.0
            with progress_bar(label, total=len(todo)) as advance:

                def deliver(request: Request, reply: str) -> None:
                    nonlocal saved
                    replies[request.key] = reply
                    if not reply.startswith("\x00"):  # errors are asked again next time
                        self.cache.put(request.key, reply)
                    if time.monotonic() - saved > 1:  # a killed run loses at most the last second
                        self.cache.save()
                        saved = time.monotonic()
                    advance(1)

                try:
                    self.backend.generate(todo, self.settings, deliver)
                finally:
                    self.cache.save()
        return [replies[r.key] or "" for r in requests]
