"""Loading a model and its processing class from a hub id, a local folder or an object."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32, "auto": "auto"}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | str:
    """`"bfloat16"`/`"float16"`/`"float32"`/`"auto"`/a torch dtype -> what `from_pretrained` takes; None -> float32.

    Example:
        ```python
        >>> resolve_dtype("bfloat16")
        torch.bfloat16
        ```
    """
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"Unknown dtype {dtype!r}; expected one of {sorted(_DTYPES)} or a torch.dtype.")
    return _DTYPES[dtype]



def _is_path_like(name: str | os.PathLike, extensions: tuple[str, ...] = ()) -> bool:
    """Whether `name` can only be a local path, never a Hub id (`org/name` or `name`)."""
    if isinstance(name, os.PathLike):
        return True
    return (
        name.startswith(("/", "./", "../", "~"))
        or name in (".", "..")
        or "\\" in name
        or name.count("/") > 1
        or name.lower().endswith(extensions)
    )


def _looked_for(name: str | os.PathLike) -> str:
    """The absolute path looked for and the current directory, in words, for error messages."""
    cwd = os.getcwd()
    absolute = os.path.normpath(os.path.join(cwd, os.path.expanduser(os.fspath(name))))
    return f"looked for {absolute}; the current directory is {cwd}"


def check_local_path(name: str | os.PathLike, what: str, extensions: tuple[str, ...] = ()) -> None:
    """Fail at once, without a Hub lookup, when `name` can only be a local path and nothing exists there.

    `name` can only be a path when it is a `PathLike`, starts with `/`, `./`, `../` or `~`, holds a backslash or more
    than one `/`, or ends with one of `extensions` (e.g. data-file extensions). A Hub id (`org/name` or `name`) passes:
    see [`explain_hub_failure`] for those.

    Raises:
        `FileNotFoundError`: naming `name`, the absolute path looked for and the current directory.

    Example:
        ```python
        >>> check_local_path("./checkpoints/step-100", "Model")
        Traceback (most recent call last):
        FileNotFoundError: Model './checkpoints/step-100' does not exist (looked for /home/me/checkpoints/step-100; ...
        ```
    """
    if _is_path_like(name, extensions) and not os.path.exists(os.path.expanduser(os.fspath(name))):
        raise FileNotFoundError(f"{what} {os.fspath(name)!r} does not exist ({_looked_for(name)}).")


def _builtin_class(error: BaseException) -> type[OSError]:
    # The libraries raise their own subclasses (e.g. datasets' `DatasetNotFoundError`), some of which need more than
    # a message to build; the nearest builtin class keeps `except ConnectionError/FileNotFoundError/OSError` working.
    return next(cls for cls in type(error).__mro__ if cls.__module__ == "builtins" and issubclass(cls, OSError))


@contextmanager
def explain_hub_failure(name: str | os.PathLike, what: str, local_kind: str = "folder") -> Iterator[None]:
    """Around a load that falls back to the Hub: when it fails with an `OSError` (offline, repository not found,
    ...) and nothing named `name` exists locally, add to the error that no local `local_kind` was found, and where.

    Raises:
        `OSError`: of the nearest builtin class of the original error (`ConnectionError`, `FileNotFoundError`,
        `OSError`), its message followed by `no local {local_kind} {name!r} either (looked for ...)`.

    Example:
        ```python
        >>> with explain_hub_failure("org/model", "Model"):
        ...     AutoConfig.from_pretrained("org/model")
        ```
    """
    try:
        yield
    except OSError as error:
        if os.path.exists(os.path.expanduser(os.fspath(name))):
            raise
        raise _builtin_class(error)(
            f"{what} {os.fspath(name)!r} could not be loaded from the Hub, and there is no local {local_kind} "
            f"{os.fspath(name)!r} either ({_looked_for(name)}). Hub error: {error}"
        ) from error


def create_model_from_path(model_id: str, model_class: type | None = None, **kwargs: Any):
    """Load a model (a causal LM unless `model_class` says otherwise) from a hub id or a local folder.

    The class is `model_class` when given (e.g. `AutoModelForSequenceClassification` for a reward model), else
    `config.architectures[0]` when transformers has it, else `AutoModelForCausalLM`. `dtype` defaults to float32;
    `device_map` defaults to "auto" on a single accelerator and None on CPU or under a distributed launcher.

    Raises:
        `FileNotFoundError`: `model_id` can only be a local path (see [`check_local_path`]) and does not exist.
        `OSError`: the Hub load failed and no local folder `model_id` exists; the message says both.

    Example:
        ```python
        >>> model = create_model_from_path("path/to/tiny-qwen3", dtype="float32")
        ```
    """
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM

    kwargs = dict(kwargs)
    kwargs["dtype"] = resolve_dtype(kwargs.pop("dtype", kwargs.pop("torch_dtype", None)))
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if "device_map" not in kwargs:
        kwargs["device_map"] = "auto" if torch.cuda.is_available() and not distributed else None
    elif distributed:
        kwargs["device_map"] = None
    check_local_path(model_id, "Model")
    with explain_hub_failure(model_id, "Model"):
        if model_class is None:
            config_kwargs = {k: kwargs[k] for k in ("revision", "trust_remote_code") if k in kwargs}
            config = AutoConfig.from_pretrained(model_id, **config_kwargs)
            architecture = (getattr(config, "architectures", None) or [None])[0]
            model_class = getattr(transformers, architecture, None) if architecture else None
        if model_class is None:
            model_class = AutoModelForCausalLM
        return model_class.from_pretrained(model_id, **kwargs)


class _HoldLoadReports(logging.Filter):
    """Hold back transformers' state-dict load report (one warning record) so that it can be judged afterwards."""

    def __init__(self):
        super().__init__()
        self.held: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if "LOAD REPORT" in str(record.msg):
            self.held.append(record)
            return False
        return True


def create_reward_model_from_path(model_id: str, **kwargs: Any):
    """Load a reward model: `AutoModelForSequenceClassification` with `num_labels=1`, from a hub id or a local folder.

    Starting a reward model from a causal LM (the usual case) adds a randomly initialised `score` head and drops the
    LM head, and transformers reports both. That report is dropped when this is all it says; any other missing,
    unexpected or mismatched weight is reported in full. Other arguments as in `create_model_from_path`.

    Example:
        ```python
        >>> model = create_reward_model_from_path("path/to/sft-model")
        >>> model.config.num_labels
        1
        ```
    """
    from transformers import AutoModelForSequenceClassification

    kwargs.setdefault("num_labels", 1)
    logger = logging.getLogger("transformers.modeling_utils")
    hold, info = _HoldLoadReports(), None
    logger.addFilter(hold)
    try:
        model, info = create_model_from_path(
            model_id, AutoModelForSequenceClassification, output_loading_info=True, **kwargs
        )
    finally:
        logger.removeFilter(hold)
        head_swap_only = info is not None and (
            all(key.split(".")[0] == "score" for key in info.get("missing_keys", ()))
            and all(key.split(".")[0] == "lm_head" for key in info.get("unexpected_keys", ()))
            and not info.get("mismatched_keys")
        )
        if not head_swap_only:  # including a failed load, whose error points at the report
            for record in hold.held:
                logger.handle(record)
    return model


def load_processing_class(model_id: str, revision: str | None = None, trust_remote_code: bool = False):
    """Load the tokenizer (or the inner tokenizer of a processor) that belongs to a model.

    A missing local folder is reported as in [`create_model_from_path`].
    """
    from transformers import AutoProcessor, AutoTokenizer, ProcessorMixin

    kwargs = {"trust_remote_code": trust_remote_code, **({"revision": revision} if revision else {})}
    check_local_path(model_id, "Model")
    with explain_hub_failure(model_id, "Model"):
        try:
            processor = AutoProcessor.from_pretrained(model_id, **kwargs)
        except (OSError, ValueError, KeyError, TypeError):
            processor = AutoTokenizer.from_pretrained(model_id, **kwargs)
    if isinstance(processor, ProcessorMixin):
        raise NotImplementedError(
            f"{model_id!r} loads a multimodal processor ({type(processor).__name__}); vision-language training is not "
            "supported yet. Pass `processing_class=` a text tokenizer to train on text."
        )
    return processor


def prepare_tokenizer(tokenizer, model, eos_token: str | None = None):
    """Make the tokenizer usable for training and keep the model's special ids consistent with it.

    - `eos_token` (if given) replaces the tokenizer's eos and is added to the generation eos ids.
    - A missing pad token falls back to eos (padding only: our collators never mask by pad id, so eos is still
      trained). The pad id is mirrored into the model and generation configs only when it differs from eos: a
      generation config whose pad equals eos is what broke evaluation of models after SFT (transformers#48016).
    """
    if eos_token is not None:
        if eos_token not in tokenizer.get_vocab():
            raise ValueError(f"`eos_token` {eos_token!r} is not in the tokenizer's vocabulary; add it first.")
        tokenizer.eos_token = eos_token
        generation_config = getattr(model, "generation_config", None)  # None/absent on models that do not generate
        if generation_config is not None:
            gen_eos = _eos_ids(generation_config)
            if tokenizer.eos_token_id not in gen_eos:
                generation_config.eos_token_id = gen_eos + [tokenizer.eos_token_id]
    if eos_token is None:
        _stop_at_template_end_of_turn(tokenizer, model)
    if tokenizer.eos_token_id is None:
        raise ValueError(
            f"The tokenizer {type(tokenizer).__name__} has no eos token, so no example would end. Set "
            "`SFTConfig(eos_token=...)` or `tokenizer.eos_token`."
        )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.pad_token_id != tokenizer.eos_token_id:
        model.config.pad_token_id = tokenizer.pad_token_id
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id
    return tokenizer


def _eos_ids(config) -> list:
    """A config's `eos_token_id` (None, an id or a list) as a list."""
    eos = getattr(config, "eos_token_id", None)
    return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)


def _pad_configs(model) -> tuple:
    """`(text config, generation config)` of a model; None where it has none."""
    config = getattr(model, "config", None)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return text_config, getattr(model, "generation_config", None)


def pad_ids(model) -> tuple:
    """`(model config pad id, generation config pad id)`; None where there is no such config or id."""
    return tuple(getattr(config, "pad_token_id", None) for config in _pad_configs(model))


def restore_pad_ids(model, before: tuple) -> None:
    """Put back the pad ids of the model and generation configs where transformers' `Trainer.train()` replaced them
    by an eos id.

    `train()` aligns the model's special ids with the tokenizer's (`align_special_tokens`), so a tokenizer that pads
    with eos (see [`prepare_tokenizer`]) writes pad == eos into both configs, and every checkpoint keeps it: in the
    generation config it breaks evaluation (transformers#48016), in the model config a sequence classifier looks for
    the last non-pad token and would skip a final eos. `before` is [`pad_ids`] before `train()`; a pad == eos the
    model came with is left alone.
    """
    configs = _pad_configs(model)
    eos = [i for config in configs for i in _eos_ids(config)]
    for config, pad_before in zip(configs, before):
        pad = getattr(config, "pad_token_id", None)
        if config is not None and pad != pad_before and pad in eos:
            config.pad_token_id = pad_before


def apply_chat_template_path(model, tokenizer, path: str):
    """Give `tokenizer` the chat template of `path`: a `.jinja`/`.j2` file, or another tokenizer (hub id or folder)
    whose template and added tokens are copied with `clone_chat_template` (which resizes the model's embeddings).

    Returns:
        `(model, tokenizer, added_token_ids)`: the ids of tokens added to the vocabulary (empty for a template file).

    Example:
        ```python
        >>> model, tokenizer, added = apply_chat_template_path(model, tokenizer, "templates/chatml.jinja")
        ```
    """
    if path.endswith((".jinja", ".j2")):
        tokenizer.chat_template = Path(path).read_text()
        return model, tokenizer, []
    from ..chat_template_utils import clone_chat_template

    check_local_path(path, "Chat template tokenizer")
    with explain_hub_failure(path, "Chat template tokenizer"):
        return clone_chat_template(model, tokenizer, path)


def train_new_tokens(peft_config, added_token_ids: list[int], tied_embeddings: bool) -> None:
    """Tokens added to the vocabulary start with random embeddings: under PEFT they must be trainable, or the model
    can never learn them. Their embedding rows are trained (`trainable_token_indices`, or the whole embedding on peft
    versions without it), and an untied `lm_head` is trained in full."""
    if not added_token_ids:
        return
    modules = list(getattr(peft_config, "modules_to_save", None) or [])
    if hasattr(peft_config, "trainable_token_indices") and not peft_config.trainable_token_indices:
        peft_config.trainable_token_indices = list(added_token_ids)
    elif "embed_tokens" not in modules:
        modules.append("embed_tokens")
    if not tied_embeddings and "lm_head" not in modules:
        modules.append("lm_head")
    peft_config.modules_to_save = modules or None


def _stop_at_template_end_of_turn(tokenizer, model) -> None:
    """A chat template may end assistant turns with a token other than eos (a base model's tokenizer with a ChatML
    template: eos `<|endoftext|>`, turns end with `<|im_end|>`). The model learns to emit that token, so generation
    must stop at it too: it is added to the generation config's eos ids, and said once."""
    from ..data.tokenize import end_of_turn_ids

    config = getattr(model, "generation_config", None)
    extra = end_of_turn_ids(tokenizer) - {tokenizer.eos_token_id, None}
    if config is None or not extra:
        return
    eos = config.eos_token_id
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    missing = sorted(extra - set(eos))
    if missing:
        config.eos_token_id = eos + missing
        names = tokenizer.convert_ids_to_tokens(missing)
        warnings.warn(
            f"The chat template ends assistant turns with {names}, not the tokenizer's eos {tokenizer.eos_token!r}; "
            f"{names} was added to the generation config's eos_token_id so that generation stops there.",
            stacklevel=4,
        )


def wrap_peft(model, peft_config):
    """Wrap `model` with a fresh PEFT adapter described by `peft_config` (a `peft.PeftConfig`)."""
    try:
        from peft import PeftConfig, PeftModel, get_peft_model
    except ImportError:
        raise ImportError("`peft_config` needs the peft package: `pip install peft` (or `pip install trl[peft]`).") from None
    if not isinstance(peft_config, PeftConfig):
        raise TypeError(f"`peft_config` must be a peft.PeftConfig (e.g. LoraConfig); got {type(peft_config).__name__}.")
    if isinstance(model, PeftModel):
        raise ValueError(
            "`model` is already a PeftModel and `peft_config` was also given. Pass either a PeftModel (to keep training "
            "its adapter) or a base model with `peft_config`, not both."
        )
    targets = getattr(peft_config, "target_modules", None) or []
    if isinstance(targets, str):
        targets = [targets]
    if "lm_head" in targets:
        raise ValueError(
            "An adapter on `lm_head` is not supported: log-probs are computed from `lm_head.weight` directly. Remove "
            "'lm_head' from target_modules (use modules_to_save=['lm_head'] to train it fully)."
        )
    return get_peft_model(model, peft_config)


def is_peft_model(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def warn_if_quantization_ignored(quantization_config, model) -> None:
    if quantization_config is not None and not isinstance(model, str):
        warnings.warn(
            "`quantization_config` is ignored because `model` is already instantiated; quantize it when loading.",
            stacklevel=3,
        )
