"""Regenerate the bundled tiny default: task dataset, byte-level BPE tokenizer and model configs.

Run from the repository root: `python tools/make_tiny_assets.py`. The output is deterministic (fixed seeds), and is
committed under `trl/assets/` so that a fresh install can train offline.

The task ("reverse" and "sort" short letter sequences) is one a 4-layer model picks up in a few minutes on a CPU,
so the demo can show exact-match before and after training.
"""

import json
import random
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers


ASSETS = Path(__file__).resolve().parents[1] / "trl" / "assets"
LETTERS = "abcdefghij"
SYSTEM = "You are a careful assistant."
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]


def _make_example(rng: random.Random) -> dict:
    op = rng.choice(["reverse", "sort"])
    letters = rng.choices(LETTERS, k=rng.randint(3, 6))
    answer = letters[::-1] if op == "reverse" else sorted(letters)
    return {"question": f"{op}: {' '.join(letters)}", "answer": " ".join(answer)}


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def make_dataset(n_train: int = 4000, n_test: int = 200, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    seen, rows = set(), []
    while len(rows) < n_train + n_test:
        example = _make_example(rng)
        if example["question"] not in seen:  # held-out questions never appear in training
            seen.add(example["question"])
            rows.append(example)
    out = ASSETS / "tiny_task"
    out.mkdir(parents=True, exist_ok=True)
    for split, part in (("train", rows[:n_train]), ("test", rows[n_train:])):
        _write_jsonl(out / f"{split}.jsonl", part)
    return rows


def make_tokenizer(rows: list[dict], vocab_size: int = 512) -> None:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    # A little general English beside the task text, so that the tokenizer is usable on other small datasets.
    corpus = [f"{r['question']}\n{r['answer']}" for r in rows] + [
        SYSTEM,
        "The quick brown fox jumps over the lazy dog. What is the capital of France? Paris is the capital.",
        "Hello, how are you today? I am fine, thank you. Please answer the question step by step.",
        "user assistant system tool The answer is 0 1 2 3 4 5 6 7 8 9 + - * / = ( ) [ ] { } : ; , . ! ?",
    ]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    out = ASSETS / "tokenizer"
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|pad|>",
        "unk_token": None,
        "model_max_length": 2048,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHATML_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(
        json.dumps({"eos_token": "<|im_end|>", "pad_token": "<|pad|>"}, indent=2) + "\n"
    )


def make_model_configs(vocab_size: int) -> None:
    common = {
        "vocab_size": vocab_size,
        "hidden_size": 256,
        "intermediate_size": 768,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": True,
        "bos_token_id": None,
        "eos_token_id": SPECIAL_TOKENS.index("<|im_end|>"),
        "pad_token_id": SPECIAL_TOKENS.index("<|pad|>"),
    }
    configs = {
        "qwen3": {"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"], "head_dim": 64, **common},
        "qwen2": {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], **common},
        "llama": {"model_type": "llama", "architectures": ["LlamaForCausalLM"], **common},
    }
    out = ASSETS / "model_configs"
    out.mkdir(parents=True, exist_ok=True)
    for name, config in configs.items():
        (out / f"{name}.json").write_text(json.dumps(config, indent=2) + "\n")


if __name__ == "__main__":
    rows = make_dataset()
    make_tokenizer(rows)
    vocab = Tokenizer.from_file(str(ASSETS / "tokenizer" / "tokenizer.json")).get_vocab_size()
    make_model_configs(vocab_size=((vocab + 63) // 64) * 64)
    print(f"wrote {ASSETS} (tokenizer vocab {vocab})")
