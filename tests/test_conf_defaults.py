"""conf/ and sweeps/ state only what differs from the models' defaults: the models are the one definition of every
option and its default (conf/run.yaml and conf/sweep.yaml compose over them, see gepa_lab.config.schema.store_defaults).

Every `key: value` of every conf/**/*.yaml and sweeps/*.yaml file is mapped to its field through the nesting (and the
file's package: conf/GROUP/*.yaml sits at GROUP, or where its `# @package` line says; sweeps/*.yaml is the `sweep`
group); a value equal to the field's default fails, unless a comment on that line says why it is spelled out: the
comment contains "spelled out", e.g. `search: grid   # spelled out: the demo is a grid of seeds x batch sizes`.
A key that is no field of the model fails too (the mapping would be wrong)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from gepa_lab.paths import CONF_DIR, SWEEPS_DIR
from gepa_lab.sweep.config import SweepConfig

MARKER = "spelled out"
FILES = sorted(CONF_DIR.rglob("*.yaml")) + sorted(SWEEPS_DIR.glob("*.yaml"))
HYDRA_KEYS = {"defaults", "hydra"}  # Hydra's own, at the top of a primary config or a _global_ one


def package_of(path: Path, text: str) -> tuple[str, ...]:
    for line in text.splitlines():
        if line.startswith("# @package "):
            package = line.removeprefix("# @package ").strip()
            return () if package == "_global_" else tuple(package.split("."))
    if path.parent == CONF_DIR:
        return ()  # a primary config (run.yaml, sweep.yaml)
    return ("sweep",) if path.parent == SWEEPS_DIR else (path.parent.name,)


def nested_model(annotation) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def model_at(path: tuple[str, ...]) -> type[BaseModel]:
    model: type[BaseModel] = SweepConfig
    for key in path:
        model = nested_model(model.model_fields[key].annotation)
    return model


def repeated_defaults(path: Path) -> list[str]:
    text = path.read_text()
    lines = text.splitlines()
    problems: list[str] = []

    def comment_after(node) -> str:
        rest = lines[node.end_mark.line][node.end_mark.column:] if node.end_mark.line < len(lines) else ""
        return rest[rest.index("#"):] if "#" in rest else ""

    def visit(mapping: yaml.MappingNode, model: type[BaseModel], where: str) -> None:
        for key_node, value_node in mapping.value:
            key = key_node.value
            if not where and key in HYDRA_KEYS:
                continue
            place = f"{path.relative_to(CONF_DIR.parent)}:{key_node.start_mark.line + 1} {where}{key}"
            field = model.model_fields.get(key)
            if field is None:
                problems.append(f"{place}: no such field of {model.__name__}")
                continue
            sub = nested_model(field.annotation)
            if sub is not None and isinstance(value_node, yaml.MappingNode):
                visit(value_node, sub, f"{where}{key}.")
                continue
            if field.is_required() or isinstance(value_node, yaml.MappingNode) and value_node.flow_style is False:
                continue  # no default to repeat; or a free-form block mapping (a dict field)
            value = yaml.safe_load(text[value_node.start_mark.index:value_node.end_mark.index])
            default = to_jsonable_python(field.get_default(call_default_factory=True))
            same = value == default and isinstance(value, bool) == isinstance(default, bool)
            if same and MARKER not in comment_after(value_node):
                problems.append(f"{place}: {value!r} is the default")

    root = yaml.compose(text)
    if root is not None:
        package = package_of(path, text)
        visit(root, model_at(package), "".join(f"{key}." for key in package))
    return problems


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(CONF_DIR.parent)))
def test_conf_states_only_what_differs_from_the_defaults(path):
    problems = repeated_defaults(path)
    assert not problems, "remove these lines (the model's default applies) or say why they are spelled out:\n" + "\n".join(problems)


def test_a_repeated_default_is_found_and_a_spelled_out_one_is_allowed(tmp_path, monkeypatch):
    lm = tmp_path / "conf" / "lm"
    lm.mkdir(parents=True)
    (lm / "x.yaml").write_text("kind: sim\nmodel: m\ntemperature: 0.0\nmax_tokens: 1024   # spelled out: why\n"
                               "router:\n  affinity_slack: 4\n  enabled: always\nsim: {hang_s: 600, seed: 3}\n")
    monkeypatch.setattr(sys.modules[__name__], "CONF_DIR", tmp_path / "conf")
    problems = repeated_defaults(lm / "x.yaml")
    assert [p.split(" ", 1)[1] for p in problems] == [
        "lm.temperature: 0.0 is the default", "lm.router.affinity_slack: 4 is the default", "lm.sim.hang_s: 600 is the default"]
