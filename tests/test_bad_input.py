"""Bad input anywhere is refused cleanly (issue 13, item 7): overrides drawn from the config schema (wrong types,
out-of-range values, unknown keys and options) and malformed sweep files are one line (a GepaLabError) in process,
never another exception; on the command line they are one `error:` line, exit 2, and nothing written: the check runs
before Hydra creates the run directory. An output_dir that cannot be written is refused the same way."""
from __future__ import annotations

import types
import typing

import annotated_types
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from gepa_lab.compose import compose
from gepa_lab.config.load import check_before_start, check_output_dir, load_config
from gepa_lab.config.schema import RunConfig
from gepa_lab.errors import GepaLabError
from gepa_lab.paths import CONF_DIR, OUTPUTS_DIR, SWEEPS_DIR
from gepa_lab.run import load_run_config
from gepa_lab.sweep.config import SweepConfig
from tests.conftest import run_cli

OUT = "/nonexistent-gepa-lab-probe/out"  # never created: these checks write nothing
GROUPS = ["task", "lm", "lm@reflection_lm", "optimizer", "cache", "tracking", "corpus"]
SAMPLES = {"int": 7, "float": 1.5, "bool": True, "str": "abc", "list": [1, 2], "dict": {"a": 1}, "none": None}
FAST = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def refusal(config_name: str, overrides: list[str]) -> str:
    """The one line a command with these overrides is refused with (as the entry points check it before Hydra's run
    directory, short of preparing the corpus). Fails on acceptance and on any exception but a GepaLabError."""
    try:
        cfg = compose(config_name, [f"output_dir={OUT}", *overrides])
        if config_name == "run":
            load_run_config(cfg)
        else:
            from gepa_lab.sweep.driver import check

            check(load_config(cfg, SweepConfig))
    except GepaLabError as e:
        message = str(e)
        assert message.strip() and "\n" not in message, repr(message)
        return message
    pytest.fail(f"accepted: {overrides}")


# ------------------------------------------------------------------ bad values drawn from the schema's own fields


def kinds(annotation) -> tuple[set[str], tuple]:
    """The kinds of value a field takes (int, float, bool, str, list, dict, none) and its Literal options."""
    accepted: set[str] = set()
    options: tuple = ()
    union = isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union
    for arm in typing.get_args(annotation) if union else (annotation,):
        origin = typing.get_origin(arm) or arm
        if origin is typing.Literal:
            options += typing.get_args(arm)
        elif arm is type(None):
            accepted.add("none")
        elif arm is typing.Any:
            accepted |= set(SAMPLES)
        else:
            accepted.add({int: "int", float: "float", bool: "bool", str: "str", list: "list", dict: "dict"}[origin])
    if "float" in accepted:
        accepted.add("int")  # an int is a float
    return accepted, options


def leaves(model: type[BaseModel], prefix: str = "") -> list[tuple[str, object]]:
    out = []
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            out += leaves(field.annotation, f"{prefix}{name}.")
        else:
            out.append((f"{prefix}{name}", field))
    return out


def sections(model: type[BaseModel], prefix: str = "") -> list[str]:
    return [prefix.rstrip(".")] + [s for name, f in model.model_fields.items()
                                   if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)
                                   for s in sections(f.annotation, f"{prefix}{name}.")]


def hydra_value(value) -> str:
    """A value as a command-line override spells it (Hydra's grammar)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, list):
        return "[" + ",".join(map(hydra_value, value)) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    return repr(value)


def bad_values(field) -> list:
    """Values the field must refuse: every kind it does not take, an option it does not offer, and each side of
    its range (plus nan and inf for a bounded or unbounded float)."""
    accepted, options = kinds(field.annotation)
    bad = [value for kind, value in SAMPLES.items() if kind not in accepted and not (options and value in options)]
    if options:
        bad.append("no_such_option")
    for rule in field.metadata:
        for attr, step in (("ge", -1), ("gt", 0), ("le", 1), ("lt", 0)):
            bound = getattr(rule, attr, None) if isinstance(rule, getattr(annotated_types, attr.capitalize())) else None
            if bound is not None:
                bad.append(bound + step)
        if isinstance(rule, annotated_types.MinLen) and "str" in accepted:
            bad.append("")
    if "float" in accepted:
        bad += [float("nan"), float("inf")]
    return bad


def bad_override(model: type[BaseModel], skip: tuple[str, ...] = ()):
    fields = [(path, field) for path, field in leaves(model) if not path.startswith(skip) and bad_values(field)]
    return st.sampled_from(fields).flatmap(
        lambda pf: st.sampled_from(bad_values(pf[1])).map(lambda v: f"{pf[0]}={hydra_value(v)}"))


def unknown_key(model: type[BaseModel]):
    name = st.from_regex(r"[a-z][a-z_]{2,12}", fullmatch=True).filter(lambda n: n not in {"defaults", "hydra"})
    return st.tuples(st.sampled_from(sections(model)), name, st.booleans()).filter(
        lambda t: t[1] not in _fields_of(model, t[0])).map(
        lambda t: f"{'+' if t[2] else ''}{t[0] + '.' if t[0] else ''}{t[1]}=1")


def _fields_of(model: type[BaseModel], section: str) -> set[str]:
    for part in filter(None, section.split(".")):
        model = model.model_fields[part].annotation
    return set(model.model_fields)


unknown_option = st.tuples(st.sampled_from(GROUPS), st.from_regex(r"[a-z][a-z0-9_]{2,12}", fullmatch=True)).filter(
    lambda t: not (CONF_DIR / t[0].split("@")[0] / f"{t[1]}.yaml").exists()).map(lambda t: f"{t[0]}={t[1]}")


@FAST
@given(st.lists(st.one_of(bad_override(RunConfig), unknown_key(RunConfig), unknown_option), min_size=1, max_size=3))
def test_bad_run_overrides_are_one_line(overrides):
    refusal("run", overrides)


@FAST
@given(st.lists(st.one_of(bad_override(SweepConfig, skip=tuple(RunConfig.model_fields)), unknown_key(SweepConfig)),
                min_size=1, max_size=2))
def test_bad_sweep_overrides_are_one_line(overrides):
    refusal("sweep", ["sweep=demo", *overrides])


# a range over a key that takes integers or booleans (uniform and loguniform sample fractions): refused before Ray
# starts, not by each trial's config
RANGE_MISFITS = [path for path, field in leaves(RunConfig) if not path.startswith(("corpus.", "optimizer.auto"))
                 and kinds(field.annotation)[0] & {"int", "bool"} and "float" not in kinds(field.annotation)[0]]


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(RANGE_MISFITS), st.sampled_from(["uniform", "loguniform"]))
def test_a_fractional_range_over_an_integer_or_boolean_key_is_refused(path, kind):
    refusal("sweep", ["sweep=demo", f"++sweep.space.{path}={{{kind}:[1,100]}}"])


def test_the_generators_reach_every_kind_of_mistake():
    """The schema yields bad values for the fields that matter (else the properties above prove little)."""
    by_path = {path: bad_values(field) for path, field in leaves(RunConfig)}
    assert True in by_path["optimizer.max_metric_calls"] and 0 in by_path["optimizer.max_metric_calls"]
    assert "no_such_option" in by_path["optimizer.candidate_selection_strategy"]
    assert any(v != v for v in by_path["optimizer.failure_score"]) and "" in by_path["lm.model"]
    assert {"optimizer.use_merge", "optimizer.seed", "lm.max_tokens"} <= set(RANGE_MISFITS)


@pytest.mark.parametrize("override, message", [
    ("optimizer.max_metric_calls=true", "optimizer.max_metric_calls"),  # a bool is no number (pydantic reads 1)
    ("optimizer.failure_score=nan", "optimizer.failure_score"),
    ("optimizer.component_selector=bogus", "optimizer.component_selector"),
    ("output_dir=${nope}", "output_dir"),  # an interpolation that does not resolve
    ("optimizer.seed=${oc.env:GEPA_LAB_UNSET_VARIABLE}", "optimizer.seed"),
    ("lm.router.workers=9", "router.workers (9) exceeds max_in_flight (8)"),
])
def test_mistakes_once_accepted_or_raised_are_refused(override, message):
    assert message in refusal("run", [override])


def test_an_unknown_group_option_lists_the_options_not_hydras_search_path():
    message = refusal("run", ["task=nope"])
    assert "Could not find 'task/nope' Available options in 'task': banking77 classify gsm8k" in message
    assert "search path" not in message and "provider=" not in message, message


# ------------------------------------------------------------------ sweep files that are not what they should be

VALID_SWEEP = (SWEEPS_DIR / "demo.yaml").read_bytes()


def mangled(data: st.DataObject) -> bytes:
    how = data.draw(st.sampled_from(["cut", "insert", "replace_line", "latin-1", "list", "tab"]))
    text = VALID_SWEEP
    at = data.draw(st.integers(0, len(text)))
    if how == "cut":
        return text[:at]
    if how == "insert":
        inserted = data.draw(st.sampled_from([b"{", b"}", b"[", b":", b"- ", b"'", b'"', b"\n  x", b"&a *b", b"\xff"]))
        return text[:at] + inserted + text[at:]
    if how == "replace_line":
        lines = text.splitlines(keepends=True)
        i = data.draw(st.integers(0, len(lines) - 1))
        return b"".join(lines[:i] + [data.draw(st.binary(max_size=40)) + b"\n"] + lines[i + 1:])
    if how == "latin-1":
        return text.replace(b"demo", "d\u00e9mo".encode("latin-1"), 1)
    if how == "list":
        return b"- " + text
    return text.replace(b"  ", b"\t", 1)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.data())
def test_malformed_sweep_files_are_refused_in_one_line_or_valid(tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("searchpath")
    (folder / "sweep").mkdir()
    (folder / "sweep" / "mangled.yaml").write_bytes(mangled(data))
    try:
        from gepa_lab.sweep.driver import check

        check(load_config(compose("sweep", ["sweep=mangled", f"hydra.searchpath=[file://{folder}]", f"output_dir={OUT}"]),
                          SweepConfig))
    except GepaLabError as e:
        assert str(e).strip() and "\n" not in str(e), repr(str(e))


@pytest.mark.parametrize("header", [b"# @package - _global_\n", b"# @package\n"])
def test_a_sweep_file_whose_package_header_hydra_cannot_read_is_one_line(tmp_path, header):
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "headed.yaml").write_bytes(header + VALID_SWEEP.split(b"\n", 1)[1])
    with pytest.raises(GepaLabError, match="bad config file .*headed.yaml: .*package"):
        compose("sweep", ["sweep=headed", f"hydra.searchpath=[file://{tmp_path}]", f"output_dir={OUT}"])


# ------------------------------------------------------------------ output_dir


def test_an_output_dir_that_cannot_be_written_is_refused(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for bad, why in [(a_file, "is not a folder"), (a_file / "sub", "is not a folder"), ("", "empty"),
                     ("/proc/gepa_lab_out", "cannot be written")]:  # /proc refuses new folders, also to root
        with pytest.raises(GepaLabError, match=why):
            check_output_dir(str(bad))
    check_output_dir(str(tmp_path / "new" / "folder"))
    assert not (tmp_path / "new").exists()  # the probe leaves nothing


def test_check_before_start_refuses_a_corpus_whose_raw_file_is_missing(tmp_path):
    config = load_run_config(compose("run", [f"output_dir={tmp_path / 'out'}", "corpus.name=gl_missing_raw",
                                             f"corpus.source.files={tmp_path / 'missing.csv'}"]))
    with pytest.raises(GepaLabError, match="raw file not found"):
        check_before_start(config)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ the command line: one line, exit 2, nothing written


def one_error_line(result) -> str:
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.mark.parametrize("entry, args, message", [
    ("gepa_lab.run", ["corpus.name=gl_missing_raw", "corpus.source.files=/nonexistent/raw.csv"], "raw file not found"),
    ("gepa_lab.sweep", ["sweep=mangled"], "malformed YAML"),
])
def test_a_refused_command_is_one_line_and_writes_nothing(tmp_path, entry, args, message):
    (tmp_path / "searchpath" / "sweep").mkdir(parents=True)
    (tmp_path / "searchpath" / "sweep" / "mangled.yaml").write_bytes(VALID_SWEEP + b"\nsweep: {name: [\n")
    out = tmp_path / "out"
    result = run_cli(entry, f"output_dir={out}", f"hydra.searchpath=[file://{tmp_path / 'searchpath'}]", *args,
                     timeout=300)
    assert message in one_error_line(result)
    assert not out.exists()


@pytest.mark.parametrize("entry, args", [("gepa_lab.run", []), ("gepa_lab.sweep", ["sweep=demo"])])
def test_an_output_dir_under_a_file_is_refused_before_anything_starts(tmp_path, entry, args):
    (tmp_path / "a_file").write_text("x")
    result = run_cli(entry, f"output_dir={tmp_path / 'a_file' / 'out'}", *args, timeout=300)
    assert "is not a folder" in one_error_line(result)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_no_output_dir_given_writes_nothing_under_outputs_when_refused():
    """The default output_dir, outputs/run-<time>, is not created either."""
    runs = lambda: set(OUTPUTS_DIR.glob("run-*"))  # noqa: E731
    before = runs()
    assert "optimizer.max_metric_calls" in one_error_line(run_cli("gepa_lab.run", "optimizer.max_metric_calls=abc",
                                                                  timeout=300))
    assert runs() == before
