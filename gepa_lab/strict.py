"""The base of every config model: unknown keys are errors (a typo in a config is refused, not ignored)."""
from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
