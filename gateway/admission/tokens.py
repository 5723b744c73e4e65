"""Prompt token counts for rate-limit reservations, with each model's own tokenizer.

At admission the gateway reserves a request's prompt tokens plus its ``max_tokens``; the engine's own
usage settles the bill afterwards. A pool's :class:`TokenCounter` is chosen by ``PoolSpec.tokenizer``
or, when that is unset, found from the pool's model (:func:`build_counters`):

- :class:`HfTokenCounter`: a ``tokenizer.json`` read by HF ``tokenizers`` (never ``transformers``), and
  for chat the model's chat template rendered as vLLM renders it (:mod:`gateway.admission.chat_template`).
  Counts equal vLLM's ``usage.prompt_tokens`` (tested against a real engine in
  ``tests/e2e/test_token_counts.py``).
- :class:`TiktokenCounter`: a local ``.tiktoken`` ranks file and a split pattern; nothing is
  downloaded. Chat adds OpenAI's published overhead: 3 tokens per message, 1 per ``name``, 3 to
  prime the reply.
- :class:`HeuristicCounter`: when neither is available (a hub id, a model not built yet). Its ratios
  were measured with ``python -m benchmarks.tokens`` on three English samples (a chat message, this
  repository's README with its Markdown and code, Python's LICENSE), in characters per token, and on
  one paragraph in four other languages, in UTF-8 bytes per token:

  ============================  ====  ======  =======  ====  ====  ====  ====
  tokenizer                     chat  README  LICENSE  zh    ru    fr    de
  ============================  ====  ======  =======  ====  ====  ====  ====
  cl100k_base (tiktoken)        4.55  3.51    4.29     2.52  4.19  3.78  3.98
  all-MiniLM-L6-v2 (WordPiece)  4.39  2.99    4.26     3.00  2.17  2.95  3.08
  tiny-llama (3k-token BPE)     2.72  1.76    1.73     1.00  1.00  1.97  1.65
  ============================  ====  ======  =======  ====  ====  ====  ====

  It takes 2.9 characters per token for ASCII (under every real vocabulary measured, so it
  over-estimates English by 21-57 % against cl100k, 3-51 % against MiniLM) and 2.5 bytes per token
  for the rest (Chinese on cl100k, the densest measured). tiny-llama's toy vocabulary, trained on
  30 kB, is far denser, but its own tokenizer is always there when it is served. Chat adds 4 tokens
  per message (Llama 3's template costs 4 plus the role) and 3 for the reply; a completion or
  embedding input adds 2 (BERT's CLS and SEP).

Counting is on the request path. Measured with ``python -m benchmarks.tokens`` on the 2-vCPU AMD EPYC
dev machine (±15 % between runs), a 3-message chat costs:

  ======================  ======================  =====================  ===========
  counter                 40 words (≈250 chars)   200 words (≈1.1 kB)    2,000 words
  ======================  ======================  =====================  ===========
  HF, tiny-llama          66-74 µs                240-280 µs             440-520 µs
  HF, all-MiniLM-L6-v2    72-80 µs                250-320 µs             580-610 µs
  tiktoken, cl100k_base   12-16 µs                40-50 µs               90-110 µs
  heuristic               2.5 µs                  2.5 µs                 2.5 µs
  ======================  ======================  =====================  ===========

Of HF's cost, rendering the chat template is 7 µs; ``tokenizers`` itself costs about 0.2 µs per
character (0.12 µs even without its pre-tokenizer), so exact counts of long prompts would cost
milliseconds (a 64 kB prompt: 22-28 ms). Prompts are therefore counted exactly up to
``EXACT_LIMIT_CHARS`` (2,048: the typical chat above stays exact, and no count costs much more than
0.5 ms); past that, ``SAMPLE_WINDOWS`` evenly spread windows adding up to the limit are counted
exactly and scaled to the whole length, plus ``LONG_PROMPT_MARGIN`` (10 %). Measured without the
margin on the samples above and on source code, 16 windows land within -5 % to +13 % of the exact
count for all three tokenizers (the first 2,048 characters alone: -21 % to +24 %).
"""

from __future__ import annotations

import base64
import json
import logging
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import orjson
import tiktoken
from jinja2 import Template
from tokenizers import Tokenizer

from gateway.admission.chat_template import (
    ChatTemplateError,
    compile_template,
    render_chat,
    special_token_variables,
)
from gateway.config.models import local_model_dir
from gateway.config.pools import DeploymentSpec, PoolSpec
from gateway.inference import ChatPrompt, InferenceRequest, TextInput

LOG = logging.getLogger(__name__)

# Above this many characters of prompt text, encode SAMPLE_WINDOWS evenly spread windows that add up
# to it, and scale their count to the whole length with a margin.
EXACT_LIMIT_CHARS = 2048
SAMPLE_WINDOWS = 16
LONG_PROMPT_MARGIN = 1.1
# HeuristicCounter's measured ratios (see the module docstring).
CHARS_PER_TOKEN = 2.9
NON_ASCII_BYTES_PER_TOKEN = 2.5
_ASCII_BYTES = bytes(range(128))

# cl100k_base's split pattern (tiktoken_ext.openai_public): what ``tiktoken:<ranks file>`` uses.
CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)


class TokenizerConfigError(ValueError):
    """A pool's ``tokenizer`` names an unknown kind, or a file that cannot be loaded."""


class TokenCounter(Protocol):
    """How many prompt tokens a request will cost on its model; never raises on odd input."""

    @property
    def source(self) -> str:
        """What the counts come from, for logs (``hf:<file>``, ``tiktoken:<file>``, ``heuristic``)."""
        ...

    def count_prompt(self, request: InferenceRequest) -> int: ...


@dataclass(frozen=True, slots=True)
class ChatOverhead:
    """Tokens a chat costs beyond its texts when no chat template is rendered."""

    per_message: int
    per_name: int
    reply: int


OPENAI_CHAT_OVERHEAD = ChatOverhead(per_message=3, per_name=1, reply=3)


class PromptCounter:
    """The request shapes of every API, over one way to count the tokens of a text.

    Subclasses give ``encode_len`` (tokens of a text, no special tokens) and may render chats their
    own way; ``special_tokens`` is what the tokenizer adds around each completion or embedding input.
    """

    source: str = "?"
    special_tokens: int = 0
    chat_overhead: ClassVar[ChatOverhead] = OPENAI_CHAT_OVERHEAD
    exact_limit_chars: int = EXACT_LIMIT_CHARS

    def encode_len(self, text: str) -> int:
        raise NotImplementedError

    def count_prompt(self, request: InferenceRequest) -> int:
        if request.chat is not None:
            return self.count_chat(request.chat)
        given = request.prompt or request.input or TextInput()
        return given.token_ids + self.count_texts(given.texts) + self.special_tokens * len(given.texts)

    def count_chat(self, chat: ChatPrompt) -> int:
        """Texts plus a fixed overhead per message (OpenAI's rule); tools count as their JSON."""
        overhead = self.chat_overhead
        tokens = overhead.reply
        texts: list[str] = []
        for message in chat.messages:
            tokens += overhead.per_message
            texts += (message.role, message.text)
            if message.name is not None:
                tokens += overhead.per_name
                texts.append(message.name)
        if chat.tools:
            texts.append(orjson.dumps(chat.tools).decode())
        return tokens + self.count_texts(texts)

    def count_texts(self, texts: Sequence[str]) -> int:
        """Exact up to ``exact_limit_chars`` in all; past that, estimated from evenly spread samples."""
        if sum(map(len, texts)) <= self.exact_limit_chars:
            return sum(self.encode_len(text) for text in texts if text)
        joined = "\n".join(texts)
        window = self.exact_limit_chars // SAMPLE_WINDOWS
        step = (len(joined) - window) / (SAMPLE_WINDOWS - 1)
        starts = [round(i * step) for i in range(SAMPLE_WINDOWS)]
        sampled = sum(self.encode_len(joined[start : start + window]) for start in starts)
        return math.ceil(sampled * len(joined) / (window * SAMPLE_WINDOWS) * LONG_PROMPT_MARGIN)


def estimate_tokens(text: str) -> int:
    """Tokens of ``text`` by the measured ratios: a little more than real vocabularies give."""
    if text.isascii():
        return math.ceil(len(text) / CHARS_PER_TOKEN)
    # Other scripts take more tokens per character; their UTF-8 bytes track that (CJK: 3 a character).
    encoded = text.encode("utf-8", "surrogatepass")
    non_ascii = len(encoded.translate(None, _ASCII_BYTES))
    return math.ceil((len(encoded) - non_ascii) / CHARS_PER_TOKEN + non_ascii / NON_ASCII_BYTES_PER_TOKEN)


class HeuristicCounter(PromptCounter):
    """Characters per token, measured (module docstring): for models whose tokenizer is not here."""

    source = "heuristic"
    special_tokens = 2  # BERT's [CLS] [SEP]; Llama's BOS is 1
    # Chat templates cost more than OpenAI's 3 per message: Llama 3's header and end tokens are 4.
    chat_overhead = ChatOverhead(per_message=4, per_name=1, reply=3)
    exact_limit_chars = sys.maxsize  # already linear and cheap

    def encode_len(self, text: str) -> int:
        return estimate_tokens(text)


def read_ranks(path: Path) -> dict[bytes, int]:
    """A ``.tiktoken`` file: one ``base64-token rank`` per line (what tiktoken would download)."""
    ranks: dict[bytes, int] = {}
    for number, line in enumerate(path.read_bytes().splitlines(), 1):
        if line.strip():
            try:
                token, rank = line.split()
                ranks[base64.b64decode(token, validate=True)] = int(rank)
            except ValueError as exc:
                raise TokenizerConfigError(f"{path}:{number}: expected 'base64-token rank'") from exc
    return ranks


class TiktokenCounter(PromptCounter):
    """An OpenAI-style BPE from a local ranks file (``base64-token rank`` per line)."""

    def __init__(self, encoding: tiktoken.Encoding, source: str) -> None:
        self.encoding = encoding
        self.source = source

    @classmethod
    def from_file(cls, ranks_file: Path, pattern: str = CL100K_PATTERN) -> TiktokenCounter:
        """Load ``ranks_file`` with the split ``pattern`` of its encoding; reads no network."""
        ranks = read_ranks(Path(ranks_file))
        encoding = tiktoken.Encoding(
            Path(ranks_file).stem, pat_str=pattern, mergeable_ranks=ranks, special_tokens={}
        )
        return cls(encoding, f"tiktoken:{ranks_file}")

    def encode_len(self, text: str) -> int:
        # Ordinary: special-token text in a prompt is plain text, as OpenAI's API treats it.
        return len(self.encoding.encode_ordinary(text))


class HfTokenCounter(PromptCounter):
    """A model's ``tokenizer.json`` and chat template: counts equal to vLLM's ``prompt_tokens``."""

    def __init__(
        self, tokenizer: Tokenizer, *, chat_template: str | None, config: Mapping[str, Any], source: str
    ) -> None:
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self.tokenizer = tokenizer
        self.source = source
        # What the post-processor adds to every completion prompt (BOS; [CLS] and [SEP]).
        self.special_tokens = len(tokenizer.encode("", add_special_tokens=True))
        self.template_variables = special_token_variables(config)
        self.template: Template | None = None
        if chat_template:
            try:
                self.template = compile_template(chat_template)
            except ChatTemplateError as exc:
                LOG.warning("%s: %s; chats are counted without it", source, exc)

    @classmethod
    def from_path(cls, path: Path) -> HfTokenCounter:
        """A model directory holding ``tokenizer.json``, or the path of a ``tokenizer.json``."""
        file = (path / "tokenizer.json" if path.is_dir() else path).resolve()
        config = _read_json(file.parent / "tokenizer_config.json")
        template_file = file.parent / "chat_template.jinja"
        template = template_file.read_text() if template_file.is_file() else _config_template(config)
        return cls(Tokenizer.from_file(str(file)), chat_template=template, config=config, source=f"hf:{file}")

    def encode_len(self, text: str) -> int:
        try:
            return len(self.tokenizer.encode(text, add_special_tokens=False))
        except Exception:  # text Rust cannot take (lone surrogates): estimate rather than fail
            return estimate_tokens(text)

    def count_chat(self, chat: ChatPrompt) -> int:
        if self.template is None:
            return super().count_chat(chat)
        try:
            text = render_chat(self.template, chat, self.template_variables)
        except ChatTemplateError as exc:
            # vLLM will reject this chat too; reserve by OpenAI's rule meanwhile.
            LOG.debug("%s: %s", self.source, exc)
            return super().count_chat(chat)
        return self.count_texts([text])  # the template wrote BOS and role tokens itself


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    return data if isinstance(data, dict) else {}


def _config_template(config: Mapping[str, Any]) -> str | None:
    """``chat_template`` of a tokenizer config: one string, or named ones (``default`` is used)."""
    template = config.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) else None


TOKENIZER_KINDS: dict[str, Callable[[str], TokenCounter]] = {
    "hf": lambda argument: HfTokenCounter.from_path(Path(argument)),
    "tiktoken": lambda argument: TiktokenCounter.from_file(Path(argument)),
    "heuristic": lambda _: HeuristicCounter(),
}


def load_counter(tokenizer: str) -> TokenCounter:
    """The counter a ``PoolSpec.tokenizer`` value names; :class:`TokenizerConfigError` if it cannot load."""
    kind, _, argument = tokenizer.partition(":")
    loader = TOKENIZER_KINDS.get(kind)
    if loader is None:
        raise TokenizerConfigError(f"unknown tokenizer {tokenizer!r}; expected hf:, tiktoken: or heuristic")
    try:
        return loader(argument)
    except TokenizerConfigError:
        raise
    except Exception as exc:  # OSError, JSON errors, and whatever tokenizers raises for a bad file
        raise TokenizerConfigError(f"tokenizer {tokenizer!r} cannot be loaded: {exc}") from exc


def counter_for(pool: PoolSpec, data_dir: Path) -> TokenCounter:
    """``pool.tokenizer`` if set; else HF when the model's directory has a tokenizer.json; else heuristic."""
    if pool.tokenizer:
        return load_counter(pool.tokenizer)
    directory = local_model_dir(pool.model, data_dir)
    if directory is None or not (directory / "tokenizer.json").is_file():
        return HeuristicCounter()
    try:
        return HfTokenCounter.from_path(directory)
    except Exception as exc:  # the model's own files: the engine will say more; reserve by estimate
        LOG.warning("pool %s: %s/tokenizer.json cannot be loaded (%s)", pool.served_name, directory, exc)
        return HeuristicCounter()


def build_counters(spec: DeploymentSpec, data_dir: Path) -> dict[str, TokenCounter]:
    """A counter per pool, by served name; logs which one each pool got."""
    counters: dict[str, TokenCounter] = {}
    for pool in spec.pools:
        counters[pool.served_name] = counter = counter_for(pool, data_dir)
        LOG.info("pool %s counts prompt tokens with %s", pool.served_name, counter.source)
    return counters
