"""A run you can look at: the files [`ReportCallback`] writes into `<output_dir>/report/`, and the end-of-run summary.

- `log_history.json`: `trainer.state.log_history` as it is;
- `<metric>.png`: loss, learning rate, gradient norm and the trainer's key metrics against the optimiser step (the
  evaluation values of a metric on the same axes); needs matplotlib (`pip install trl[report]`), without it
  `plots_missing.txt` says so and the rest is written;
- `completions.html`: for online trainers, the last sampled completions with their rewards and advantages.

Every function here is pure apart from the files it writes: it takes the log history (a list of dicts) or a table
(a dict of equal-length columns), never a trainer.

Example:
    ```python
    >>> from trl.report import write_report, run_summary
    >>> files = write_report("out", trainer.state.log_history)
    >>> print(run_summary(trainer.state.log_history, trainer.state.global_step, "out/report"))
    ```
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Iterable

REPORT_DIR = "report"
MISSING_MATPLOTLIB = "No plots: matplotlib is not installed (pip install trl[report], or pip install matplotlib)."

# Metrics plotted when a run logs them, in this order. The first three are every trainer's; then, per method:
# online (GRPO, RLOO), preference (DPO), KTO, reward modelling, SFT.
KEY_METRICS = (
    "loss", "learning_rate", "grad_norm",
    "reward", "reward_std", "kl", "entropy", "completions/mean_length", "completions/clipped_ratio",
    "rewards/margins", "rewards/accuracies", "rewards/chosen", "rewards/rejected",
    "accuracy", "margin",
    "mean_token_accuracy",
)
# Shown in the end-of-run summary when logged (a subset of KEY_METRICS).
SUMMARY_METRICS = ("loss", "reward", "kl", "rewards/margins", "rewards/accuracies", "accuracy", "mean_token_accuracy")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def metric_series(log_history: list[dict], key: str) -> tuple[list[int], list[float]]:
    """`(steps, values)` of `key` over the log entries that hold a finite number for it.

    Example:
        ```python
        >>> metric_series([{"step": 1, "loss": 2.0}, {"step": 2, "eval_loss": 1.5}, {"step": 2, "loss": 1.0}], "loss")
        ([1, 2], [2.0, 1.0])
        ```
    """
    steps, values = [], []
    for entry in log_history:
        value = entry.get(key)
        if _is_number(value):
            steps.append(int(entry.get("step", len(steps))))
            values.append(float(value))
    return steps, values


def plotted_metrics(log_history: list[dict]) -> list[str]:
    """The [`KEY_METRICS`] a run logged (in training, or in evaluation as `eval_<name>`), in `KEY_METRICS` order;
    then each reward function's mean (`rewards/<name>/mean`) of online trainers."""
    keys = {key for entry in log_history for key, value in entry.items() if _is_number(value)}
    chosen = [k for k in KEY_METRICS if k in keys or f"eval_{k}" in keys]
    per_function = sorted(k for k in keys if k.startswith("rewards/") and k.endswith("/mean"))
    return chosen + per_function


def _file_name(key: str) -> str:
    return key.replace("/", "_") + ".png"


def plot_metrics(log_history: list[dict], folder: str) -> list[str]:
    """One PNG per metric of [`plotted_metrics`] in `folder`: the training values, and the evaluation values
    (`eval_<metric>`) on the same axes.

    Returns:
        `list[str]`: the paths written.

    Raises:
        `ImportError`: when matplotlib is not installed.
    """
    from matplotlib.figure import Figure  # no pyplot: no global state and no GUI backend

    paths = []
    for key in plotted_metrics(log_history):
        figure = Figure(figsize=(5, 3.2), dpi=100, layout="constrained")
        axes = figure.subplots()
        for name, style in ((key, "-"), (f"eval_{key}", "o--")):
            steps, values = metric_series(log_history, name)
            if steps:
                axes.plot(steps, values, style, markersize=3, label="eval" if name != key else "train")
        axes.set_title(key)
        axes.set_xlabel("step")
        axes.grid(alpha=0.3)
        if len(axes.get_lines()) > 1:
            axes.legend()
        path = os.path.join(folder, _file_name(key))
        figure.savefig(path)
        paths.append(path)
    return paths


def completions_html(rows: list[dict], title: str = "Sampled completions") -> str:
    """An HTML page with one table row per sampled completion (`rows` are dicts of one completion each: step, prompt,
    completion, one column per reward function, advantage). Text is escaped; numbers are shown to 4 digits."""

    def cell(value) -> str:
        if isinstance(value, float):
            return f'<td class="n">{value:.4g}</td>'
        return f"<td><pre>{html.escape(str(value))}</pre></td>"

    columns = list(dict.fromkeys(key for row in rows for key in row))
    header = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "\n".join("<tr>" + "".join(cell(row.get(c, "")) for c in columns) + "</tr>" for row in rows)
    style = (
        "body{font-family:sans-serif;margin:1em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px;vertical-align:top;text-align:left}"
        "pre{white-space:pre-wrap;margin:0;max-width:60em}td.n{text-align:right;font-family:monospace}"
    )
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head>\n<body><h1>{html.escape(title)}</h1>\n<p>{len(rows)} completions, newest first.</p>\n"
        f"<table>\n<tr>{header}</tr>\n{body}\n</table></body></html>\n"
    )


def table_rows(table: dict[str, list]) -> list[dict]:
    """A table of equal-length columns (an online trainer's `_completions_table`) as a list of row dicts.

    Example:
        ```python
        >>> table_rows({"prompt": ["a", "b"], "reward": [1.0, 0.0]})
        [{'prompt': 'a', 'reward': 1.0}, {'prompt': 'b', 'reward': 0.0}]
        ```
    """
    length = min((len(values) for values in table.values()), default=0)
    return [{key: values[i] for key, values in table.items()} for i in range(length)]


def write_report(output_dir: str, log_history: list[dict], completions: Iterable[dict] | None = None) -> dict:
    """Write the report into `<output_dir>/report/` (see the module docstring) and return what was written.

    Args:
        output_dir (`str`): the run's output folder.
        log_history (`list[dict]`): `trainer.state.log_history`.
        completions (`Iterable[dict]`, *optional*): sampled completions, one dict each (online trainers).

    Returns:
        `dict`: `{"folder": str, "log_history": str, "plots": list[str], "completions": str | None,
        "note": str | None}`; `note` is [`MISSING_MATPLOTLIB`] when the plots could not be drawn.
    """
    folder = os.path.join(output_dir, REPORT_DIR)
    os.makedirs(folder, exist_ok=True)
    written = {"folder": folder, "plots": [], "completions": None, "note": None}
    written["log_history"] = os.path.join(folder, "log_history.json")
    with open(written["log_history"], "w") as file:
        json.dump(log_history, file, indent=1, default=str)
    missing = os.path.join(folder, "plots_missing.txt")
    try:
        written["plots"] = plot_metrics(log_history, folder)
        if os.path.exists(missing):
            os.remove(missing)
    except ImportError:
        written["note"] = MISSING_MATPLOTLIB
        with open(missing, "w") as file:
            file.write(MISSING_MATPLOTLIB + "\n")
    rows = list(completions or ())
    if rows:
        written["completions"] = os.path.join(folder, "completions.html")
        with open(written["completions"], "w") as file:
            file.write(completions_html(rows))
    return written


def _format_seconds(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


def run_summary(log_history: list[dict], global_step: int, report_folder: str | None = None) -> str:
    """A few lines to print at the end of a run: steps, time, tokens/s, the last logged values of the main metrics
    (training and evaluation) and where the report is.

    Example:
        ```python
        >>> history = [{"step": 2, "loss": 1.25, "num_tokens": 800.0}, {"step": 2, "train_runtime": 4.0}]
        >>> print(run_summary(history, 2, "out/report"))
        Training finished: 2 steps in 0m04s, 200 tokens/s
          loss 1.25
          report: out/report
        ```
    """
    runtime = next((e["train_runtime"] for e in reversed(log_history) if _is_number(e.get("train_runtime"))), None)
    tokens = next((e["num_tokens"] for e in reversed(log_history) if "loss" in e and _is_number(e.get("num_tokens"))),
                  None)
    head = f"Training finished: {global_step} steps"
    if runtime is not None:
        head += f" in {_format_seconds(runtime)}"
        if tokens and runtime > 0:
            head += f", {tokens / runtime:,.0f} tokens/s"
    lines = [head]
    for prefix in ("", "eval_"):
        last = {}
        for entry in log_history:
            for key in SUMMARY_METRICS:
                if _is_number(entry.get(prefix + key)):
                    last[key] = entry[prefix + key]
        if last:
            values = ", ".join(f"{k} {v:.4g}" for k, v in last.items())
            lines.append(f"  {'eval ' if prefix else ''}{values}")
    if report_folder is not None:
        lines.append(f"  report: {report_folder}")
    return "\n".join(lines)
