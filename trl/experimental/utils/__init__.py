"""Helpers that moved out of the stable namespace and that users still import from `trl.experimental.utils`:
`create_reference_model`, `truncate_dataset`, `DataCollatorForChatML`, `DPODataCollatorWithPadding`,
`prepare_peft_model`, `get_reward`. Each wraps our own machinery where we have it (`trl.models.reference`,
`trl.data`, `trl.models.loading`)."""

from .collators import DataCollatorForChatML, DPODataCollatorWithPadding
from .helpers import create_reference_model, get_reward, prepare_peft_model, truncate_dataset

__all__ = [
    "DPODataCollatorWithPadding",
    "DataCollatorForChatML",
    "create_reference_model",
    "get_reward",
    "prepare_peft_model",
    "truncate_dataset",
]
