"""The contract between the HTTP layer and whatever runs the model.

The server only sees an `Engine`: tokenize, then `generate()` an async stream of `Delta`s ending in
one `Finish`. The GGUF (llama.cpp) and ONNX backends sit behind it; which one is used is decided by
the model file (`edge.engine.open_engine`). Sampling parameters are backend-neutral.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Literal, Protocol

FinishReason = Literal["stop", "length", "cancelled"]


@dataclass(frozen=True)
class SamplingParams:
    """What OpenAI and Ollama requests can ask of the sampler (both APIs map onto this)."""

    max_tokens: int | None = None  # None: until end-of-generation or the context is full
    temperature: float = 0.8  # 0 means greedy
    top_k: int = 40  # 0 disables
    top_p: float = 0.95  # 1.0 disables
    min_p: float = 0.05  # 0.0 disables
    repeat_penalty: float = 1.0  # 1.0 disables
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None  # None: random
    stop: tuple[str, ...] = ()  # stop strings; the matched text is not returned
    grammar: str | None = None  # GBNF, e.g. from a JSON schema
    ignore_eos: bool = False


@dataclass(frozen=True)
class ModelInfo:
    """What /v1/models, /api/tags, /api/show and the planner report about a loaded model."""

    name: str  # the name clients use, e.g. "smollm2:135m-q4_1"
    path: str
    format: Literal["gguf", "onnx"]
    family: str  # architecture, e.g. "llama", "gemma3"
    parameter_count: int
    quantization: str  # e.g. "Q4_1"
    size_bytes: int
    n_ctx_train: int
    n_ctx: int  # context per slot as loaded
    chat_template: str | None
    bos_token: str | None
    eos_token: str | None
    add_bos: bool
    metadata: dict = field(default_factory=dict)  # selected GGUF key/values for /api/show


@dataclass(frozen=True)
class Delta:
    """A piece of generated text. Never splits a UTF-8 character; stop strings are already cut."""

    text: str
    n_tokens: int = 1


@dataclass(frozen=True)
class Finish:
    """The last event of every generation."""

    reason: FinishReason
    prompt_tokens: int
    cached_tokens: int  # prompt tokens whose KV came from the slot's cache (not evaluated again)
    completion_tokens: int
    prompt_eval_ns: int
    eval_ns: int
    queued_ns: int = 0


Event = Delta | Finish


class EventStream(Protocol):
    """What `Engine.generate` returns: events to iterate, and `aclose()` to cancel the generation."""

    def __aiter__(self) -> EventStream: ...

    async def __anext__(self) -> Event: ...

    async def aclose(self) -> None: ...


class Engine(abc.ABC):
    """A loaded model with its scheduler. Thread-safe; `generate` is called from the event loop."""

    info: ModelInfo

    @abc.abstractmethod
    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]: ...

    @abc.abstractmethod
    def detokenize(self, tokens: list[int]) -> str: ...

    @abc.abstractmethod
    def generate(self, prompt: list[int], params: SamplingParams, *, stream: bool = True) -> EventStream:
        """Stream `Delta`s then one `Finish` (with stream=False: all the text in one Delta, then the Finish).

        Raises `QueueFullError` at once (before the first event) when no slot and no queue place
        is free, `ContextOverflowError` when the prompt cannot fit. Closing the iterator early
        (client disconnect) cancels the generation and frees its slot.
        """

    @abc.abstractmethod
    def stats(self) -> dict:
        """{"slots": n, "busy": n, "queued": n} for /metrics and /api/ps."""

    @abc.abstractmethod
    def close(self) -> None: ...
