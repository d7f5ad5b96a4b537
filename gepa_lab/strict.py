"""The base of every config model: unknown keys are errors (a typo in a config is refused, not ignored), so are nan
and infinite numbers (no setting means them: a nan score or temperature breaks comparisons far from the config); and a
model's defaults as plain data (what conf/ YAML is composed over)."""
from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic_core import to_jsonable_python


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def defaults_of(model: type[BaseModel]) -> dict[str, Any]:
    """A model's defaults as plain data: each field that has one, and the defaults inside a required nested model."""
    out: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        if not field.is_required():
            out[name] = to_jsonable_python(field.get_default(call_default_factory=True))
        elif isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            out[name] = defaults_of(field.annotation)
    return out
