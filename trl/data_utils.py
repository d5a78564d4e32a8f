"""Dataset helpers of TRL's public API: format detection, chat templates, prompt extraction, unpairing and packing.

The implementations live in `trl.data.conversation` (string level) and `trl.data.packing` (token level); this
module gathers them under the name users import from.

Example:

```python
>>> from trl.data_utils import is_conversational, pack_dataset
>>> is_conversational({"messages": [{"role": "user", "content": "Hi"}]})
True
```
"""

from .data.conversation import (
    apply_chat_template,
    common_prefix_length,
    extract_prompt,
    get_dataset_column_names,
    is_conversational,
    is_conversational_from_value,
    maybe_apply_chat_template,
    maybe_convert_to_chatml,
    maybe_extract_prompt,
    maybe_unpair_preference_dataset,
    prepare_multimodal_messages,
    unpair_preference_dataset,
)
from .data.packing import _get_dataset_format, _pack_bfd, _pack_wrapped, _SegmentTree, pack_dataset  # noqa: F401

__all__ = [
    "apply_chat_template",
    "common_prefix_length",
    "extract_prompt",
    "get_dataset_column_names",
    "is_conversational",
    "is_conversational_from_value",
    "maybe_apply_chat_template",
    "maybe_convert_to_chatml",
    "maybe_extract_prompt",
    "maybe_unpair_preference_dataset",
    "pack_dataset",
    "prepare_multimodal_messages",
    "unpair_preference_dataset",
]
