"""The contract between the HTTP layer and whatever runs the model.

The server only sees an `Engine`: tokenize, then `generate()` an async stream of `Delta`s ending in
one `Finish`. The GGUF (llama.cpp) and ONNX backends sit behind it; which one is used is decided by
the model file (`edge.engine.open_engine`). Sampling parameters are backend-neutral.
"""

from __future__ import annotations

import abc
import codecs
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

from edge.errors import BadRequestError

FinishReason = Literal["stop", "length", "cancelled"]


@dataclass(frozen=True)
class Adapter:
    """A LoRA adapter (GGUF file) applied to a request, and its scale (1.0: as trained)."""

    path: str
    scale: float = 1.0


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
    # lazy grammar: free text until a pattern matches the text (from its first group on) or a token comes
    grammar_triggers: tuple[str, ...] = ()  # regexes, as llama.cpp's lazy grammar takes them
    grammar_trigger_tokens: tuple[int, ...] = ()
    ignore_eos: bool = False
    # Per-token log probabilities (see TokenLogprob); only a request that asks pays for them.
    logprobs: bool = False
    top_logprobs: int = 0  # alternatives per token, best first (with logprobs)
    adapter: Adapter | None = None  # the LoRA this request runs under (None: the base model)
    speculate: bool = True  # may draft from its own prompt and output (when the server speculates at all)


MAX_TOP_LOGPROBS = 20  # as OpenAI and Ollama bound top_logprobs


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

    @property
    def is_encoder(self) -> bool:
        """An embedding-only model (bidirectional attention, e.g. BERT): it refuses chat and completions.
        Told by the GGUF's `<arch>.attention.causal = false` or an encoder architecture."""
        arch = self.metadata.get("general.architecture", self.family)
        return self.metadata.get(f"{arch}.attention.causal") == "false" or arch in ENCODER_ARCHS


# llama.cpp architectures that only encode (no causal language-model head)
ENCODER_ARCHS = frozenset(
    {"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "jina-bert-v3", "modern-bert", "neo-bert"}
)


@dataclass(frozen=True)
class Embeddings:
    """What `Engine.embed` returns: one L2-normalised vector per input, in input order."""

    vectors: list[list[float]]
    n_tokens: list[int]  # tokens embedded per input (after truncation)
    n_tokens_in: list[int]  # tokens sent per input (before truncation)
    eval_ns: int = 0


@dataclass(frozen=True)
class TokenLogprob:
    """A token's log probability at one position of the answer.

    The log-softmax of the model's raw logits row, as llama-server reports by default: taken before
    temperature, top-k/top-p/min-p, repetition penalties and grammars, so a value does not depend on
    the sampling settings (a grammar may therefore pick a token that is not among `top`). A token
    the model gives no chance at all is reported as FLOOR, never -inf (JSON has no infinity).
    """

    token: int  # the token id
    piece: bytes  # its bytes (the chosen token: exactly the bytes it added to the answer)
    logprob: float
    top: tuple[TokenLogprob, ...] = ()  # the most likely tokens at this position, best first
    offset: int = 0  # characters of the answer before this token's text (the chosen token only)

    FLOOR = -9999.0

    @property
    def text(self) -> str:
        """The piece as text; a piece that ends inside a UTF-8 character drops that incomplete tail
        (as llama-server does), its bytes tell the whole story."""
        return codecs.getincrementaldecoder("utf-8")(errors="replace").decode(self.piece)


@dataclass(frozen=True)
class Delta:
    """A piece of generated text. Never splits a UTF-8 character; stop strings are already cut.

    `logprobs`: with SamplingParams.logprobs, one entry per token whose text this piece completes, in
    order (a token cut off by a stop string has none). It may come with empty text: a token that
    adds no text of its own (a control token kept with ignore_eos)."""

    text: str
    n_tokens: int = 1
    logprobs: tuple[TokenLogprob, ...] = ()


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
    """What `Engine.generate` returns: an async iterator of `Delta`s, then one `Finish`; `aclose()`
    before the end cancels the generation and frees its slot."""

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

    async def embed(
        self, inputs: list[list[int]], *, truncate: bool = True, dimensions: int | None = None
    ) -> Embeddings:
        """L2-normalised embeddings of token lists (each non-empty). An input longer than the model embeds
        is cut (`truncate`) or a 400; `dimensions` keeps the first N values, normalised again. Raises
        BadRequestError for ids outside the vocabulary or dimensions outside 1..n_embd."""
        raise BadRequestError(
            f"the {self.info.format} backend does not compute embeddings; serve a GGUF model for /v1/embeddings",
            param="model",
        )

    @abc.abstractmethod
    def stats(self) -> dict:
        """{"slots": n, "busy": n, "queued": n} for /metrics and /api/ps."""

    @abc.abstractmethod
    def close(self) -> None: ...


class AdapterEngine:
    """An engine seen through one LoRA adapter: every generation it starts runs under `adapter`;
    everything else is the base engine's (one model in memory serves the base and all its adapters)."""

    def __init__(self, engine: Engine, adapter: Adapter):
        self.base, self.adapter = engine, adapter

    def generate(self, prompt: list[int], params: SamplingParams, *, stream: bool = True) -> EventStream:
        return self.base.generate(prompt, replace(params, adapter=self.adapter), stream=stream)

    def __getattr__(self, name: str):
        return getattr(self.base, name)
