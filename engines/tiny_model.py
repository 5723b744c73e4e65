"""A tiny random-weight Llama that vLLM's CPU build can serve, built locally and deterministically.

It exists so the whole stack (gateway, vLLM engine, metering) runs end to end on a laptop without
downloading weights. Everything comes from fixed seeds: an embedded English corpus trains a small
byte-level BPE tokenizer, and seeded Gaussian weights fill a 2-layer Llama (head_dim 64, the smallest
CPU attention accepts). Rebuilding gives byte-identical files. The output says nothing sensible.
A larger ``small`` shape (4 layers, hidden 512) serves benchmarks in which prefill must cost time.

Builds are cached: a directory holding the ``.complete`` marker of the current ``BUILD_VERSION`` is
returned as is. A build happens in a temporary sibling directory that is renamed into place, so an
interrupted or concurrent build never leaves a half model behind.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from safetensors.numpy import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

# Bump when anything below changes what is written: cached builds of another version are rebuilt.
BUILD_VERSION = "tiny-llama/2"
MARKER = ".complete"
SEED = 20240601

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = (BOS, EOS, PAD, *ROLE_TOKENS)
TARGET_VOCAB = 3072

HEAD_DIM = 64  # the smallest head vLLM's CPU attention accepts


@dataclass(frozen=True)
class Shape:
    """The transformer's size; every shape shares the tokenizer and the chat template."""

    name: str
    hidden: int
    layers: int
    heads: int
    intermediate: int


# ``tiny`` serves the tests and the demo (loads in seconds, prefill costs next to nothing).
# ``small`` is for benchmarks where prefill must cost something, as it does with real weights:
# about 30x tiny's prefill FLOPs per token, still 13 MB of weights per layer.
TINY = Shape("tiny", hidden=128, layers=2, heads=2, intermediate=256)
SMALL = Shape("small", hidden=512, layers=4, heads=8, intermediate=1536)
SHAPES = {shape.name: shape for shape in (TINY, SMALL)}
# Long enough that a test can ask for more tokens than the engine could make before a client
# leaves (RoPE has no weights, so this costs nothing).
MAX_POSITIONS = 16384

# Zephyr-style turns; each ends with EOS, so a generated EOS ends the assistant's turn.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + (message['content'] or '') + eos_token + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

_PARAGRAPHS = (
    "The gateway sits in front of the engines. Every request carries a key, and the key belongs to a "
    "tenant. The gateway checks the key, counts the tokens, and forwards the request to an engine that "
    "has room for it. When the engine answers, the gateway streams the answer back, one piece at a time.",
    "Hello! How can I help you today? I would like to know the weather in Paris. It is sunny and warm, "
    "with a light wind from the west. Thank you very much. You are welcome; have a nice day.",
    "Once upon a time there was a small village near a quiet river. The people who lived there grew "
    "apples and wheat, and in the evening they told stories about the mountains to the north.",
    "Question: What is the capital of France? Answer: The capital of France is Paris. Question: How many "
    "days are in a week? Answer: There are seven days in a week, and twelve months in a year.",
    "def add(a, b):\n    return a + b\n\nfor i in range(10):\n    print(i, add(i, 1))\n",
    '{"model": "tiny-llama", "messages": [{"role": "user", "content": "Say hello."}], "stream": true}',
)
_NOUNS = (
    "time year people way day man thing woman life child world school state family student group country "
    "problem hand part place case week company system program question work government number night point "
    "home water room mother area money story fact month lot right study book eye job word business issue "
    "side kind head house service friend father power hour game line end member law car city community "
    "name president team minute idea kid body information parent face level office door health person art "
    "war history party result change morning reason research girl guy moment air teacher force education "
    "foot boy age policy music market sense nation plan college interest death experience effect class "
    "control care field development role effort rate heart drug show leader light voice wife police mind "
    "price report decision son view relationship town road arm difference value building action model "
    "season society tax director position player record paper space ground form event official matter "
    "center couple site project activity star table need court oil situation cost industry figure street "
    "image phone data picture practice piece land product doctor wall patient worker news test movie north "
    "love support technology step baby computer type attention film tree source organization hair window "
    "evidence population site river mountain garden island forest engine token request server network "
    "message answer letter bird horse ship train bridge village apple bread coffee cloud rain snow wind"
)
_VERBS = (
    "be:was have:had do:did say:said go:went get:got make:made know:knew think:thought take:took "
    "see:saw come:came want look use find:found give:gave tell:told work call try ask need feel:felt "
    "become:became leave:left put:put mean:meant keep:kept let:let begin:began seem help talk turn "
    "start show hear:heard play run:ran move like live believe hold:held bring:brought happen write:wrote "
    "provide sit:sat stand:stood lose:lost pay:paid meet:met include continue set:set learn change lead:led "
    "understand:understood watch follow stop:stopped create speak:spoke read:read allow add "
    "spend:spent grow:grew "
    "open walk win:won offer remember love consider appear buy:bought wait serve rest send:sent expect "
    "build:built stay fall:fell cut:cut reach kill remain suggest raise pass sell:sold require report "
    "decide pull explain hope develop carry break:broke receive agree support hit:hit produce eat:ate "
    "cover catch:caught draw:drew choose:chose count stream route measure answer travel listen jump"
)
_ADJECTIVES = (
    "other new good high old great big small large national young different long little important "
    "political bad white real best right social only public sure low early able human local late hard "
    "major better economic strong possible whole free military true federal international full special "
    "easy clear recent certain personal open red difficult available likely short single medical current "
    "wrong private past foreign fine common poor natural significant similar hot dead central happy "
    "serious ready simple left physical general environmental financial blue democratic dark various "
    "entire close legal religious cold final main green nice huge popular traditional cultural quick "
    "brown lazy quiet bright warm gentle tiny random careful"
)
_ADVERBS = (
    "quickly slowly carefully quietly really always never often sometimes already still soon together "
    "nearly almost finally simply clearly certainly usually probably recently suddenly early later again"
)
_NAMES = "Alice Bob Carol David Emma Frank Grace Henry Irene Jack Laura Maria Noah Olivia Paul Sarah"
_PLACES = "Paris London Tokyo Berlin Madrid Rome Cairo Lima Oslo Delhi Sydney Toronto Chicago Boston"
# Verbs whose final consonant doubles before -ing (run → running).
_DOUBLING = frozenset("run sit put cut let set hit win stop begin get".split())
_PREPOSITIONS = "in on at near under over behind beside with without across through after before"


def _plural(noun: str) -> str:
    if noun.endswith(("s", "x", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def _inflect(entry: str) -> tuple[str, str, str, str]:
    """``base`` or ``base:past`` → (base, third person, past, present participle)."""
    base, _, past = entry.partition(":")
    stem = base[:-1] if base.endswith("e") and base not in ("be", "see", "agree") else base
    stem = stem + stem[-1] if base in _DOUBLING else stem
    third = (
        _plural(base)
        if base not in ("be", "have", "do", "go")
        else {"be": "is", "have": "has", "do": "does", "go": "goes"}[base]
    )
    if not past:
        past = (
            base + "d"
            if base.endswith("e")
            else (base[:-1] + "ied" if base.endswith("y") and base[-2] not in "aeiou" else base + "ed")
        )
    return base, third, past, stem + "ing"


def _sentence(rng: random.Random, words: dict[str, list[str]], verbs: list[tuple[str, str, str, str]]) -> str:
    """One sentence from a small grammar; the seeded ``rng`` makes the corpus reproducible."""
    noun, adj, adv = rng.choice(words["noun"]), rng.choice(words["adj"]), rng.choice(words["adv"])
    other, prep, name = rng.choice(words["noun"]), rng.choice(words["prep"]), rng.choice(words["name"])
    base, third, past, ing = rng.choice(verbs)
    templates = (
        f"The {adj} {noun} {past} the {other} {prep} the {rng.choice(words['adj'])} {_plural(other)}.",
        f"{name} {third} {adv} because the {_plural(noun)} are {adj}.",
        f"Why did {name} {base} the {noun} in {rng.choice(words['place'])}?",
        f"We were {ing} {prep} {rng.randint(2, 999)} {_plural(noun)} in {rng.randint(1900, 2030)}.",
        f"{adv.capitalize()}, the {noun} and the {other} {past} {prep} a {adj} {rng.choice(words['noun'])}.",
        f'"I {base} {_plural(noun)}," said {name}. "Do you {base} them too?"',
        f"It costs {rng.randint(1, 99)}.{rng.randint(10, 99)} dollars, "
        f"{rng.randint(3, 40)}% less than {name}'s.",
    )
    return rng.choice(templates)


def build_corpus(seed: int = SEED, sentences: int = 6000) -> list[str]:
    """The deterministic English training text: fixed paragraphs plus generated sentences."""
    rng = random.Random(seed)
    words = {
        "noun": _NOUNS.split(),
        "adj": _ADJECTIVES.split(),
        "adv": _ADVERBS.split(),
        "name": _NAMES.split(),
        "place": _PLACES.split(),
        "prep": _PREPOSITIONS.split(),
    }
    verbs = [_inflect(entry) for entry in _VERBS.split()]
    lines = list(_PARAGRAPHS)
    paragraph: list[str] = []
    for _ in range(sentences):
        paragraph.append(_sentence(rng, words, verbs))
        if len(paragraph) >= rng.randint(3, 8):
            lines.append(" ".join(paragraph))
            paragraph = []
    lines.append(" ".join(paragraph))
    return lines


def train_tokenizer(corpus: Sequence[str]) -> Tokenizer:
    """A byte-level BPE tokenizer (GPT-2 style) whose sequences start with BOS."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TARGET_VOCAB,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer)
    bos_id = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return tokenizer


def model_config(tokenizer: Tokenizer, shape: Shape = TINY) -> dict[str, Any]:
    """``config.json`` for the Llama of ``shape``; the vocabulary is exactly the tokenizer's."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": tokenizer.get_vocab_size(),
        "hidden_size": shape.hidden,
        "intermediate_size": shape.intermediate,
        "num_hidden_layers": shape.layers,
        "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.heads,
        "head_dim": HEAD_DIM,
        "max_position_embeddings": MAX_POSITIONS,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": True,
        "initializer_range": 0.02,
        "bos_token_id": tokenizer.token_to_id(BOS),
        "eos_token_id": tokenizer.token_to_id(EOS),
        "pad_token_id": tokenizer.token_to_id(PAD),
        "torch_dtype": "float32",
        "use_cache": True,
    }


def random_weights(config: dict[str, Any], seed: int = SEED) -> dict[str, npt.NDArray[np.float32]]:
    """Seeded N(0, 0.02) projections and unit norms, named as ``LlamaForCausalLM`` names them."""
    rng = np.random.default_rng(seed)
    std = float(config["initializer_range"])

    def normal(*shape: int) -> npt.NDArray[np.float32]:
        return (rng.standard_normal(shape) * std).astype(np.float32)

    hidden, inner = int(config["hidden_size"]), int(config["intermediate_size"])
    q_dim = int(config["num_attention_heads"]) * HEAD_DIM
    kv_dim = int(config["num_key_value_heads"]) * HEAD_DIM
    weights = {"model.embed_tokens.weight": normal(config["vocab_size"], hidden)}
    for layer in range(int(config["num_hidden_layers"])):
        prefix = f"model.layers.{layer}"
        weights |= {
            f"{prefix}.self_attn.q_proj.weight": normal(q_dim, hidden),
            f"{prefix}.self_attn.k_proj.weight": normal(kv_dim, hidden),
            f"{prefix}.self_attn.v_proj.weight": normal(kv_dim, hidden),
            f"{prefix}.self_attn.o_proj.weight": normal(hidden, q_dim),
            f"{prefix}.mlp.gate_proj.weight": normal(inner, hidden),
            f"{prefix}.mlp.up_proj.weight": normal(inner, hidden),
            f"{prefix}.mlp.down_proj.weight": normal(hidden, inner),
            f"{prefix}.input_layernorm.weight": np.ones(hidden, dtype=np.float32),
            f"{prefix}.post_attention_layernorm.weight": np.ones(hidden, dtype=np.float32),
        }
    weights["model.norm.weight"] = np.ones(hidden, dtype=np.float32)
    return weights


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_model(directory: Path, shape: Shape = TINY) -> None:
    """Write every file of the model into ``directory`` (which must exist); the marker comes last."""
    tokenizer = train_tokenizer(build_corpus())
    config = model_config(tokenizer, shape)
    tokenizer.save(str(directory / "tokenizer.json"))
    _write_json(
        directory / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": BOS,
            "eos_token": EOS,
            "pad_token": PAD,
            "additional_special_tokens": list(ROLE_TOKENS),
            "add_bos_token": True,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
            "model_max_length": MAX_POSITIONS,
            "chat_template": CHAT_TEMPLATE,
        },
    )
    _write_json(
        directory / "special_tokens_map.json",
        {
            "bos_token": BOS,
            "eos_token": EOS,
            "pad_token": PAD,
            "additional_special_tokens": list(ROLE_TOKENS),
        },
    )
    _write_json(directory / "config.json", config)
    _write_json(
        directory / "generation_config.json",
        {
            "bos_token_id": config["bos_token_id"],
            "eos_token_id": config["eos_token_id"],
            "pad_token_id": config["pad_token_id"],
        },
    )
    save_file(random_weights(config), str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / MARKER).write_text(marker_text(shape))


def marker_text(shape: Shape) -> str:
    """The marker's content: the build version, and the shape unless it is the tiny default."""
    suffix = "" if shape == TINY else " " + json.dumps(asdict(shape), sort_keys=True)
    return BUILD_VERSION + suffix + "\n"


def is_complete(directory: Path, shape: Shape = TINY) -> bool:
    """Whether ``directory`` holds a finished build of the current version and of ``shape``."""
    try:
        return (directory / MARKER).read_text() == marker_text(shape)
    except OSError:
        return False


def build_tiny_model(out_dir: Path, shape: Shape = TINY) -> Path:
    """Build the model of ``shape`` into ``out_dir`` unless a complete build is there; return it."""
    out_dir = Path(out_dir)
    if is_complete(out_dir, shape):
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.build-", dir=out_dir.parent))
    try:
        write_model(staging, shape)
        _move_into_place(staging, out_dir, shape)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def _move_into_place(staging: Path, out_dir: Path, shape: Shape) -> None:
    """Rename ``staging`` to ``out_dir``, replacing a stale or partial directory there."""
    if out_dir.exists() and not is_complete(out_dir, shape):
        # Set the stale copy aside first so the final rename stays a single atomic step.
        stale = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.stale-", dir=out_dir.parent))
        try:
            os.replace(out_dir, stale / "old")
        except FileNotFoundError:
            pass  # a concurrent builder moved it already
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.rename(staging, out_dir)
    except OSError:
        # Another builder won the race; its build is as good as ours.
        if not is_complete(out_dir, shape):
            raise


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m engines.tiny_model --out DIR``: build (or find) the model and print its path."""
    parser = argparse.ArgumentParser(prog="python -m engines.tiny_model", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="directory to hold the model")
    parser.add_argument("--shape", choices=sorted(SHAPES), default=TINY.name, help="model size")
    args = parser.parse_args(argv)
    print(build_tiny_model(args.out, SHAPES[args.shape]).resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
