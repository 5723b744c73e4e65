"""The limits file (``configs/limits.yaml``): the defaults of every tenant without limits of its own.

    defaults:
      rpm: 600
      tpm: 200000
      max_concurrent: 32
      monthly_cost: "25.00"     # a quoted decimal amount in the price table's currency

The limits are written as everywhere else (``LimitSpec.from_written``: the admin API and the CLI
take the same fields with the same checks). No file, no ``defaults`` or no limit in it leaves such
tenants unlimited.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, PlainValidator
from pydantic_core import PydanticCustomError

from gateway.config.loader import load_model
from gateway.limit_spec import WRITTEN_NAMES, LimitSpec, LimitValueError


def _written_limits(value: object) -> LimitSpec | None:
    """A mapping of limits as written; an error names the bad limit as ``ctx["key"]`` (the loader
    adds it to the key path: ``defaults.rpm``)."""
    if value is None or isinstance(value, LimitSpec):
        return value
    if not isinstance(value, dict):
        raise PydanticCustomError(
            "limits_mapping", "must be a mapping of limits ({names})", {"names": ", ".join(WRITTEN_NAMES)}
        )
    try:
        return LimitSpec.from_written({str(name): limit for name, limit in value.items()})
    except LimitValueError as exc:
        raise PydanticCustomError("limit", "{detail}", {"key": exc.field, "detail": exc.detail}) from None


class LimitsFile(BaseModel):
    """The whole file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    defaults: Annotated[LimitSpec | None, PlainValidator(_written_limits)] = None


def load_default_limits(path: Path | None) -> LimitSpec | None:
    """The defaults in the limits file at ``path``; no path, no file or no limit: None (unlimited)."""
    if path is None or not path.exists():
        return None
    defaults = load_model(path, LimitsFile).defaults
    return defaults if defaults is not None and not defaults.unlimited else None
