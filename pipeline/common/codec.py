"""Records to plain JSON values and back, by pydantic, for every file and artifact the pipeline stores.

`dump` turns a dataclass into the dicts, lists, strings and numbers that `json.dumps` then writes (tuples as lists,
enums as their values, field order kept); `load` validates such values back into the dataclass, ignoring unknown
keys and running its `__post_init__` checks. Callers keep writing with `json.dumps`, so the files' layout (indent,
key order) is theirs and stays what it was.

JSON has no NaN: `dump` writes a non-finite float as null (pydantic's rule for JSON), and a `Figure` reads a null back
as NaN. A record whose stored files have always carried NaN literally, as `json.dumps` writes it, says so with
`__pydantic_config__ = KEEP_NON_FINITE`.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, TypeVar

from pydantic import BeforeValidator, ConfigDict, TypeAdapter

T = TypeVar("T")

KEEP_NON_FINITE = ConfigDict(ser_json_inf_nan="constants")


def _null_as_nan(value: Any) -> Any:
    return math.nan if value is None else value


# A measured float that may be undefined (an RMSE ratio over zero, a test on non-finite forecasts): written as null.
Figure = Annotated[float, BeforeValidator(_null_as_nan)]


# Building an adapter walks the whole type; every record type gets one, once (a race only builds one twice).
_ADAPTERS: dict[type, TypeAdapter[Any]] = {}


def _adapter(cls: type) -> TypeAdapter[Any]:
    if cls not in _ADAPTERS:
        _ADAPTERS[cls] = TypeAdapter(cls)
    return _ADAPTERS[cls]


def dump(value: Any) -> Any:
    """`value` as plain JSON values."""
    # Through pydantic's JSON, not its Python mode: only the JSON serialiser applies the non-finite rule.
    return json.loads(_adapter(type(value)).dump_json(value, by_alias=True))


def load(cls: type[T], data: Any) -> T:
    """A `cls` from `dump`'s output (or an older file); pydantic's ValidationError, a ValueError, when it is not one."""
    result: T = _adapter(cls).validate_python(data)
    return result
