"""The corpus config (conf/corpus/NAME.yaml): pydantic schema, and loading it through Hydra with overrides."""
from __future__ import annotations

import codecs
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from gepa_lab.compose import compose, hydra_message
from gepa_lab.errors import ConfigError
from gepa_lab.paths import CONF_DIR, PROJECT_ROOT
from gepa_lab.strict import StrictModel

from .errors import CorpusError, did_you_mean, display_path

CORPUS_CONF_DIR = CONF_DIR / "corpus"
SPLITS = ("train", "val", "test")
FILE_ROLES = ("train", "val", "test", "all")
_ROLE_ALIASES = {"validation": "val", "dev": "val"}
FORMATS = ("csv", "json", "jsonl", "parquet")
EXTENSION_FORMATS = {
    ".csv": "csv",
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
# columns every prepared split has besides the declared ones
RESERVED_COLUMNS = ("id", "row_index")
_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
_RESERVED_NAMES = {"raw"}  # corpora/raw holds the raw data


class _Frozen(StrictModel):
    model_config = ConfigDict(frozen=True)


def _stringify(value: Any) -> Any:
    """YAML turns `0: negative` into int keys; labels and answers are compared as strings."""
    if isinstance(value, Mapping):
        return {str(k): (str(v) if v is not None else v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return value


class SourceConfig(_Frozen):
    """Where the raw rows come from."""

    # split role ("train", "val", "test" or "all") -> path(s) relative to the project root; or one path / list
    # of paths, meaning "all". Splits with their own file are drawn from it; the others from train+all.
    files: str | list[str] | dict[str, str | list[str]] | None = None
    # csv | json | jsonl | parquet; inferred from each file's extension when absent
    format: Literal["csv", "json", "jsonl", "parquet"] | None = None
    # text encoding of csv/json files (any Python codec name)
    encoding: str = "utf-8"
    # Hugging Face Hub dataset name (or a local dataset folder); tried first when given, local files otherwise
    hub: str | None = None
    hub_config: str | None = None
    hub_revision: str | None = None

    @field_validator("files", mode="before")
    @classmethod
    def _files_roles(cls, v: Any) -> Any:
        if isinstance(v, Mapping):
            out: dict[str, Any] = {}
            for key, val in v.items():
                role = _ROLE_ALIASES.get(str(key), str(key))
                if role not in FILE_ROLES:
                    raise ValueError(
                        f"unknown split '{key}'{did_you_mean(str(key), FILE_ROLES)}; use one of {', '.join(FILE_ROLES)}"
                    )
                if role in out:
                    raise ValueError(f"split '{role}' given twice")
                out[role] = val
            if not out:
                raise ValueError("no files given")
            return out
        return v

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, v: str) -> str:
        try:
            codecs.lookup(v)
        except LookupError:
            raise ValueError(f"unknown encoding '{v}'") from None
        return v

    @model_validator(mode="after")
    def _something_to_load(self) -> "SourceConfig":
        if self.files is None and self.hub is None:
            raise ValueError("give source.files (local files) or source.hub (a Hugging Face dataset), or both")
        return self

    def file_map(self) -> dict[str, list[str]]:
        """files as role -> list of paths ({} when only a hub dataset is given)."""
        if self.files is None:
            return {}
        if isinstance(self.files, str):
            return {"all": [self.files]}
        if isinstance(self.files, list):
            return {"all": list(self.files)}
        # in FILE_ROLES order whatever the mapping's order: a config that went through sorted JSON (a sweep's
        # trials get theirs that way) must fingerprint the same, or each side rebuilds the other's corpus
        return {role: [p] if isinstance(p, str) else list(p) for role in FILE_ROLES if (p := self.files.get(role)) is not None}


class SplitSizes(_Frozen):
    """Rows per prepared split. Asking for more rows than the raw data has after cleaning is an error."""

    train: int = Field(ge=1)
    val: int = Field(ge=1)
    test: int = Field(ge=1)


class CorpusConfig(_Frozen):
    """One corpus: raw source, the columns kept, how the answer is cleaned, and the split sizes."""

    name: str = Field(pattern=_NAME_RE)
    description: str = ""
    source: SourceConfig
    # prepared column name -> raw column name, e.g. {query: text}
    inputs: dict[str, str]
    # prepared answer column -> raw column, one or more, e.g. {intent: category} or {area: area, urgency: urgency}
    answer: dict[str, str]
    # regex (Rust/Polars syntax) run on each raw answer; group 1 (or the whole match) becomes the answer;
    # rows where it does not match are dropped and counted in the manifest
    answer_pattern: str | None = None
    # substrings deleted from each answer after answer_pattern (e.g. thousands separators: [","])
    answer_remove: list[str] = Field(default_factory=list)
    # raw answer value -> label, for every answer (values not in the map are kept as they are)
    label_map: dict[str, str] | None = None
    # the label set: a list, or a path to a JSON list (relative to the project root); with several answers a
    # mapping answer -> list or path. Derived from the data for each answer without one (kind classification)
    labels: list[str] | str | dict[str, list[str] | str] | None = None
    # classification (categorical answers, stratified splits, labels in the manifest) or open, for every answer;
    # default: classification when labels or label_map are given, else open
    kind: Literal["classification", "open"] | None = None
    # more columns to carry along untouched except for trimming (prepared name -> raw name)
    extras: dict[str, str] = Field(default_factory=dict)
    splits: SplitSizes
    seed: int = 0
    # stratify splits by label; default: true for classification, and only allowed there
    stratify: bool | None = None
    license: str = "unspecified"
    license_file: str | None = None
    attribution: str = ""

    _base_dir: Path = PrivateAttr(default=PROJECT_ROOT)
    _config_path: Path | None = PrivateAttr(default=None)

    @field_validator("label_map", "answer_remove", mode="before")
    @classmethod
    def _coerce(cls, v: Any) -> Any:
        return _stringify(v)

    @field_validator("labels", mode="before")
    @classmethod
    def _coerce_labels(cls, v: Any) -> Any:
        if isinstance(v, Mapping):  # one label set per answer
            return {str(k): _stringify(sets) for k, sets in v.items()}
        return _stringify(v)

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, v: str) -> str:
        if v in _RESERVED_NAMES:
            raise ValueError(f"'{v}' is reserved (corpora/{v} holds the raw data)")
        return v

    @field_validator("inputs")
    @classmethod
    def _some_inputs(cls, v: dict[str, str]) -> dict[str, str]:
        if not v:
            raise ValueError("declare at least one input column, e.g. {question: question}")
        return v

    @field_validator("answer")
    @classmethod
    def _some_answers(cls, v: dict[str, str]) -> dict[str, str]:
        if not v:
            raise ValueError("declare at least one answer column, e.g. {label: label}")
        return v

    @field_validator("answer_pattern")
    @classmethod
    def _valid_pattern(cls, v: str | None) -> str | None:
        if v is not None:
            _pattern_group(v)
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "CorpusConfig":
        names = [*self.inputs, *self.answer, *self.extras]
        for n in names:
            if n in RESERVED_COLUMNS:
                raise ValueError(f"column name '{n}' is reserved (prepared splits add {', '.join(RESERVED_COLUMNS)})")
            if not n or not n.strip():
                raise ValueError("empty column name")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"prepared column '{dupes[0]}' declared twice across inputs/answer/extras")
        if self.kind == "open" and self.labels is not None:
            raise ValueError("labels given but kind is open; set kind: classification")
        if self.stratify and self.resolved_kind != "classification":
            raise ValueError("stratify needs a categorical answer (kind: classification, labels or label_map)")
        if isinstance(self.labels, dict):
            unknown = [a for a in self.labels if a not in self.answer]
            if unknown:
                raise ValueError(
                    f"labels names '{unknown[0]}', which is not an answer{did_you_mean(unknown[0], self.answer)}"
                    f" (answers: {', '.join(self.answer)})"
                )
        elif self.labels is not None and len(self.answer) > 1:
            raise ValueError("with several answers give one label set per answer, e.g. {area: [billing, shipping], urgency: path.json}")
        for answer in self.answer:
            declared = self.answer_labels(answer)
            if isinstance(declared, list) and len(set(declared)) != len(declared):
                raise ValueError("labels lists a label twice")
        return self

    # ---- derived values -------------------------------------------------------------------------------
    @property
    def answer_columns(self) -> list[str]:
        return list(self.answer)

    def answer_labels(self, answer: str) -> list[str] | str | None:
        """The `labels` entry of one answer: a list, a path to a JSON list, or None (derived from the data)."""
        return self.labels.get(answer) if isinstance(self.labels, dict) else self.labels

    @property
    def resolved_kind(self) -> str:
        if self.kind:
            return self.kind
        return "classification" if (self.labels is not None or self.label_map is not None) else "open"

    @property
    def resolved_stratify(self) -> bool:
        return self.resolved_kind == "classification" if self.stratify is None else self.stratify

    @property
    def base_dir(self) -> Path:
        """Folder that relative raw paths are resolved against (the project root unless told otherwise)."""
        return self._base_dir

    @property
    def config_path(self) -> Path | None:
        return self._config_path

    def resolve(self, path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else self._base_dir / p

    def config_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def config_sha256(self) -> str:
        return hashlib.sha256(canonical_json(self.config_dict()).encode()).hexdigest()

    def with_base_dir(self, base_dir: str | Path) -> "CorpusConfig":
        self._base_dir = Path(base_dir)
        return self


def canonical_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _pattern_group(pattern: str) -> int:
    """1 when the (Polars/Rust) regex has a capture group, else 0; ValueError when it does not compile."""
    import polars as pl

    try:
        dtype = pl.Series("a", ["x"]).str.extract_groups(pattern).dtype
    except Exception as exc:  # polars raises ComputeError for bad regexes
        raise ValueError(f"not a valid regex: {' '.join(str(exc).split())}") from None
    return 1 if len(dtype.fields) else 0  # type: ignore[attr-defined]


pattern_group = _pattern_group


# ---- loading ------------------------------------------------------------------------------------------------

def _format_validation_error(where: str, exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"])
        if err["type"] == "extra_forbidden":
            parent: type[BaseModel] = CorpusConfig
            for key in err["loc"][:-1]:
                field = parent.model_fields.get(str(key))
                ann = getattr(field, "annotation", None)
                parent = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else parent
            leaf = str(err["loc"][-1])
            parts.append(f"unknown field '{loc}'{did_you_mean(leaf, parent.model_fields)}")
        elif err["type"] == "missing":
            parts.append(f"missing field '{loc}'")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            parts.append(f"{loc}: {msg}" if loc else msg)
    return f"{where}: " + "; ".join(parts)


def validate_config(data: Mapping[str, Any], where: str = "corpus config", base_dir: str | Path | None = None) -> CorpusConfig:
    """A CorpusConfig from a plain mapping (e.g. the `corpus` node of a composed sweep config)."""
    if hasattr(data, "_metadata"):  # an OmegaConf DictConfig
        from omegaconf import OmegaConf

        data = OmegaConf.to_container(data, resolve=True)  # type: ignore[assignment]
    if not isinstance(data, Mapping):
        raise CorpusError(f"{where}: expected a mapping of fields, got {type(data).__name__}")
    try:
        cfg = CorpusConfig.model_validate(dict(data))
    except ValidationError as exc:
        raise CorpusError(_format_validation_error(where, exc)) from None
    return cfg.with_base_dir(base_dir if base_dir is not None else PROJECT_ROOT)


def _schema_defaults(model: type[BaseModel], present: Any) -> dict[str, Any]:
    """Defaults of a model's optional fields (recursing into nested models present in `present`)."""
    out: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            if present is not None and name in present and hasattr(present[name], "keys"):
                out[name] = _schema_defaults(ann, present[name])
        elif not field.is_required():
            out[name] = field.get_default(call_default_factory=True)
    return out


def _compose(yaml_path: Path, overrides: Sequence[str]) -> dict[str, Any]:
    """conf/corpus/NAME.yaml with Hydra command-line overrides (``splits.train=50``, ``+key=v``, ``~key``), composed as a
    config of its own folder over the schema's defaults, so that every field with a default is overridable as key=value."""
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    where = display_path(yaml_path)
    try:
        conf = OmegaConf.load(yaml_path)
    except Exception as exc:
        raise CorpusError(f"{where}: not a readable YAML mapping ({hydra_message(exc)})") from None
    if not isinstance(conf, DictConfig):
        raise CorpusError(f"{where}: expected a mapping of fields, got {type(conf).__name__}")
    try:
        defaults = _schema_defaults(CorpusConfig, conf)
        if yaml_path.suffix == ".yaml":
            composed = compose(yaml_path.stem, overrides, config_dir=yaml_path.parent, under=defaults)
        else:  # Hydra reads .yaml files only: a .yml corpus config is composed from its content
            composed = compose(None, overrides, config_dir=yaml_path.parent, under=OmegaConf.merge(defaults, conf))
        data = OmegaConf.to_container(composed, resolve=True)
    except ConfigError as exc:
        raise CorpusError(f"{where}: {exc}") from None
    except OmegaConfBaseException as exc:  # an interpolation that does not resolve
        raise CorpusError(f"{where}: {hydra_message(exc)}") from None
    assert isinstance(data, dict)
    return data  # type: ignore[return-value]


def _declared_names(conf_dir: Path) -> dict[str, list[Path]]:
    """name -> YAML files declaring it (a file without `name` declares its stem); unparsable files are skipped."""
    names: dict[str, list[Path]] = {}
    for f in sorted(conf_dir.glob("*.yaml")) + sorted(conf_dir.glob("*.yml")):
        try:
            data = yaml.safe_load(f.read_text(encoding="utf-8"))
        except Exception:
            continue
        name = data.get("name", f.stem) if isinstance(data, dict) else f.stem
        names.setdefault(str(name), []).append(f)
    return names


def available_corpora(conf_dir: str | Path | None = None) -> list[str]:
    conf_dir = Path(conf_dir) if conf_dir is not None else CORPUS_CONF_DIR
    return sorted({f.stem for f in conf_dir.glob("*.yaml")} | {f.stem for f in conf_dir.glob("*.yml")})


def check_names(yaml_path: Path, name: str, conf_dir: Path) -> None:
    """A corpus name must equal its file name and be declared by one file only."""
    where = display_path(yaml_path)
    if name != yaml_path.stem:
        raise CorpusError(f"{where}: name '{name}' differs from the file name '{yaml_path.stem}'; they must match")
    if not conf_dir.is_dir():
        return
    files = {p.resolve() for p in _declared_names(conf_dir).get(name, [])}
    files |= {p.resolve() for p in (conf_dir / f"{name}.yaml", conf_dir / f"{name}.yml") if p.exists()}
    files.add(yaml_path.resolve())
    if len(files) > 1:
        shown = ", ".join(display_path(p) for p in sorted(files))
        raise CorpusError(f"duplicate corpus name '{name}': declared by {shown}; each corpus needs its own name")


def load_corpus_config(
    name_or_path: str | Path | Mapping[str, Any],
    overrides: Sequence[str] = (),
    *,
    conf_dir: str | Path | None = None,
    base_dir: str | Path | None = None,
) -> CorpusConfig:
    """Load conf/corpus/NAME.yaml (or a YAML path, or a mapping) with Hydra overrides like ``splits.train=50``.

    conf_dir: where NAME.yaml files live (default conf/corpus); base_dir: what relative raw paths are relative
    to (default the project root). Raises CorpusError with a one-line message on any problem.
    """
    conf_dir = Path(conf_dir) if conf_dir is not None else CORPUS_CONF_DIR
    if isinstance(name_or_path, Mapping):
        if overrides:
            raise CorpusError("overrides apply to YAML configs only; edit the mapping instead")
        return validate_config(name_or_path, base_dir=base_dir)
    text = str(name_or_path)
    if text.endswith((".yaml", ".yml")) or "/" in text or isinstance(name_or_path, Path):
        yaml_path = Path(text).expanduser()
        if not yaml_path.is_file():
            raise CorpusError(f"{display_path(yaml_path)}: corpus config file not found")
    else:
        if not re.match(_NAME_RE, text):
            raise CorpusError(f"'{text}' is not a corpus name (letters, digits, '_', '-', '.')")
        yaml_path = conf_dir / f"{text}.yaml"
        if not yaml_path.is_file() and (conf_dir / f"{text}.yml").is_file():
            yaml_path = conf_dir / f"{text}.yml"
        if not yaml_path.is_file():
            known = available_corpora(conf_dir)
            raise CorpusError(
                f"{display_path(yaml_path)}: no such corpus config{did_you_mean(text, known)}"
                f" (available: {', '.join(known) or 'none'})"
            )
    data = _compose(yaml_path, overrides)
    data.setdefault("name", yaml_path.stem)
    cfg = validate_config(data, where=display_path(yaml_path), base_dir=base_dir)
    check_names(yaml_path, cfg.name, conf_dir)
    cfg._config_path = yaml_path
    return cfg
