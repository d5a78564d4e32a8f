"""The bundled tiny task dataset ("reverse"/"sort" a few letters), in the dataset formats the trainers accept."""

from __future__ import annotations

import json
from pathlib import Path


TASK_DIR = Path(__file__).resolve().parents[1] / "assets" / "tiny_task"
FORMATS = (
    "conversational",
    "prompt_completion",
    "conversational_prompt_completion",
    "text",
    "prompt_only",
    "preference",
    "standard_preference",
    "unpaired_preference",
)


def _rows(split: str) -> list[dict]:
    if split not in ("train", "test"):
        raise ValueError(f"Unknown split {split!r}; expected 'train' or 'test'.")
    return [json.loads(line) for line in (TASK_DIR / f"{split}.jsonl").read_text().splitlines()]


def _wrong_answer(question: str, answer: str) -> str:
    """A plausible wrong answer: the letters as given, else rotated by one, else with the last letter changed."""
    letters = question.split(": ", 1)[1].split()
    for candidate in (letters, letters[1:] + letters[:1]):
        if " ".join(candidate) != answer:
            return " ".join(candidate)
    last = letters[-1]
    return " ".join(letters[:-1] + [chr(ord("a") + (ord(last) - ord("a") + 1) % 26)])


def _convert(row: dict, form: str) -> dict:
    question, answer = row["question"], row["answer"]
    if form == "preference":
        return {
            "prompt": [{"role": "user", "content": question}],
            "chosen": [{"role": "assistant", "content": answer}],
            "rejected": [{"role": "assistant", "content": _wrong_answer(question, answer)}],
        }
    if form == "standard_preference":
        return {"prompt": f"{question}\nanswer:", "chosen": f" {answer}", "rejected": f" {_wrong_answer(question, answer)}"}
    if form == "conversational":
        return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}
    if form == "conversational_prompt_completion":
        return {
            "prompt": [{"role": "user", "content": question}],
            "completion": [{"role": "assistant", "content": answer}],
        }
    if form == "prompt_completion":
        return {"prompt": f"{question}\nanswer:", "completion": f" {answer}"}
    if form == "prompt_only":
        return {"prompt": [{"role": "user", "content": question}], "answer": answer}
    return {"text": f"{question}\nanswer: {answer}"}


def _unpaired(rows: list[dict]) -> list[dict]:
    """Alternate desirable (the right answer) and undesirable (a wrong answer) rows."""
    out = []
    for i, row in enumerate(rows):
        good = i % 2 == 0
        answer = row["answer"] if good else _wrong_answer(row["question"], row["answer"])
        out.append({"prompt": [{"role": "user", "content": row["question"]}],
                    "completion": [{"role": "assistant", "content": answer}], "label": good})
    return out


def tiny_task_dataset(form: str = "conversational", split: str = "train", num_rows: int | None = None):
    """Load the bundled task as a `datasets.Dataset`.

    Args:
        form (`str`, *optional*, defaults to `"conversational"`): one of `"conversational"` (`messages`),
            `"prompt_completion"` (standard strings), `"conversational_prompt_completion"`, `"text"`, `"prompt_only"`.
        split (`str`, *optional*, defaults to `"train"`): `"train"` (4,000 rows) or `"test"` (200 held-out rows).
        num_rows (`int`, *optional*): keep only the first rows.

    Example:
        ```python
        >>> from trl.data.tiny import tiny_task_dataset
        >>> tiny_task_dataset("prompt_completion", "test", num_rows=1)[0]
        {'prompt': 'reverse: b i c i a\\nanswer:', 'completion': ' a i c i b'}
        ```
    """
    from datasets import Dataset

    if form not in FORMATS:
        raise ValueError(f"Unknown tiny dataset form {form!r}; expected one of {FORMATS}.")
    rows = _rows(split)[:num_rows]
    if form == "unpaired_preference":
        return Dataset.from_list(_unpaired(rows))
    return Dataset.from_list([_convert(row, form) for row in rows])
