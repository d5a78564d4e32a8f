"""The bundled tiny task dataset ("reverse"/"sort" a few letters), in the dataset formats the trainers accept.

Export every format to JSON-lines files (for `trl <command> --dataset_name ...` and the YAML files in `examples/`):

```bash
python -m trl.data.tiny --export outputs/data   # writes outputs/data/<form>_{train,test}.jsonl
```
"""

from __future__ import annotations

import argparse
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

    return Dataset.from_list(tiny_task_rows(form, split, num_rows))


def tiny_task_rows(form: str = "conversational", split: str = "train", num_rows: int | None = None) -> list[dict]:
    """The rows of [`tiny_task_dataset`] as plain dicts (no `datasets` import).

    Example:
        ```python
        >>> tiny_task_rows("unpaired_preference", "test", num_rows=1)[0]["label"]
        True
        ```
    """
    if form not in FORMATS:
        raise ValueError(f"Unknown tiny dataset form {form!r}; expected one of {FORMATS}.")
    rows = _rows(split)[:num_rows]
    if form == "unpaired_preference":
        return _unpaired(rows)
    return [_convert(row, form) for row in rows]


def export_tiny_task(output_dir: str | Path, forms: tuple[str, ...] = FORMATS) -> list[Path]:
    """Write each form of the tiny task to `<output_dir>/<form>_train.jsonl` and `<form>_test.jsonl`.

    Args:
        output_dir (`str` or `Path`): the folder (created if needed).
        forms (`tuple[str, ...]`, *optional*, defaults to every form): which forms to write.

    Returns:
        `list[Path]`: the files written.

    Example:
        ```python
        >>> from trl.data.tiny import export_tiny_task
        >>> [path.name for path in export_tiny_task("outputs/data", forms=("preference",))]
        ['preference_train.jsonl', 'preference_test.jsonl']
        ```
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for form in forms:
        for split in ("train", "test"):
            path = output_dir / f"{form}_{split}.jsonl"
            lines = (json.dumps(row, ensure_ascii=False) for row in tiny_task_rows(form, split))
            path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    """`python -m trl.data.tiny --export DIR [--forms FORM ...]`: export the tiny task as JSON-lines files."""
    parser = argparse.ArgumentParser(prog="python -m trl.data.tiny", description=main.__doc__.split(": ", 1)[1])
    parser.add_argument("--export", required=True, metavar="DIR", help="Folder to write <form>_{train,test}.jsonl to.")
    parser.add_argument("--forms", nargs="+", choices=FORMATS, default=list(FORMATS), help="Forms to export.")
    args = parser.parse_args(argv)
    for path in export_tiny_task(args.export, tuple(args.forms)):
        print(path)


if __name__ == "__main__":
    main()
