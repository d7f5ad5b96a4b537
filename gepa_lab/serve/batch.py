"""Score a file with a registered model, through the same LM edge as the HTTP service.

    python -m gepa_lab.serve batch model=models:/NAME@champion input=FILE.csv|.jsonl|.parquet output=FILE.parquet
        [tracking_uri=URI] [api_base=URL] [api_key_env=NAME] [max_in_flight=16] [cache=false]

Every input row keeps its columns; the program's output fields are added, with `model_version` and `error` (null
when the row was answered; a row that does not fit the model's request, or that the LM did not answer, gets the
reason there). Progress goes to stderr. The output is written whole or not at all. Exit status: 0 every row
answered, 1 some rows have an error, 2 bad input (nothing is started or written).
"""
from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
from pydantic import Field, ValidationError

from gepa_lab import atomic
from gepa_lab.serve.model import ServeError
from gepa_lab.strict import StrictModel

READERS = (".csv", ".jsonl", ".ndjson", ".parquet")


class BatchSettings(StrictModel):
    model: str = Field(min_length=1)
    input: str = Field(min_length=1)
    output: str = Field(min_length=1)
    tracking_uri: str | None = None
    api_base: str | None = None
    api_key_env: str | None = None
    max_in_flight: int = Field(16, ge=1)
    cache: bool = False


def read_table(path: Path) -> pa.Table:
    import pyarrow.csv
    import pyarrow.json
    import pyarrow.parquet

    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pyarrow.csv.read_csv(path)
        if suffix in (".jsonl", ".ndjson"):
            return pyarrow.json.read_json(path)
        return pyarrow.parquet.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise ServeError(f"cannot read {path}: {exc}") from None


def _check_paths(settings: BatchSettings) -> tuple[Path, Path]:
    src, dst = Path(settings.input), Path(settings.output)
    if src.suffix.lower() not in READERS:
        raise ServeError(f"input={src}: give a {', '.join(READERS)} file")
    if not src.is_file():
        raise ServeError(f"input={src}: no such file")
    if dst.suffix.lower() != ".parquet":
        raise ServeError(f"output={dst}: the output is Parquet (.parquet)")
    if not dst.parent.is_dir() or not os.access(dst.parent, os.W_OK):
        raise ServeError(f"output={dst}: its folder does not exist or cannot be written")
    return src, dst


def score_file(settings: BatchSettings) -> int:
    from rich.console import Console
    from rich.progress import Progress

    from gepa_lab.serve.http import HttpSettings, Service

    src, dst = _check_paths(settings)
    table = read_table(src)
    service = Service(HttpSettings(model=settings.model, tracking_uri=settings.tracking_uri, api_base=settings.api_base,
                                   api_key_env=settings.api_key_env, max_in_flight=settings.max_in_flight, cache=settings.cache))
    loaded = service.loaded
    missing = [name for name in loaded.request.model_fields if name not in table.column_names]
    if missing:
        raise ServeError(f"input={src} lacks the model's input column(s) {', '.join(missing)} (it has {', '.join(table.column_names)})")
    rows = table.to_pylist()
    outputs = [name for name in loaded.response.model_fields if name != "model_version"]
    console = Console(stderr=True)
    with Progress(console=console, disable=not console.is_terminal) as progress:
        task = progress.add_task(f"scoring {src.name}", total=len(rows))
        step = max(1, len(rows) // 10)

        def advance(done: int) -> None:
            progress.advance(task)
            if not console.is_terminal and (done % step == 0 or done == len(rows)):  # a log gets a line per tenth
                print(f"scoring {src.name}: {done}/{len(rows)} rows", file=sys.stderr)

        results = asyncio.run(_score_all(service, rows, advance))
    errors = sum(1 for r in results if r["error"])
    out = [{**row, **{k: None if r.get(k) is None else str(r[k]) for k in outputs}, "model_version": loaded.version,
            "error": r["error"]} for row, r in zip(rows, results)]
    schema = table.schema
    for name in outputs:
        schema = schema.append(pa.field(name, pa.string()))
    schema = schema.append(pa.field("model_version", pa.string())).append(pa.field("error", pa.string()))
    import pyarrow.parquet

    with atomic.atomic_path(dst) as tmp:
        pyarrow.parquet.write_table(pa.Table.from_pylist(out, schema=schema), tmp)
    print(f"[gepa_lab] scored {len(rows) - errors} of {len(rows)} rows with {settings.model} (version {loaded.version}) -> {dst}"
          + (f"; {errors} rows have an error (column error)" if errors else ""), file=sys.stderr)
    return 1 if errors else 0


async def _score_all(service, rows: list[dict[str, Any]], advance) -> list[dict[str, Any]]:
    from gepa_lab.serve.http import LMOutage, answer

    loaded = service.loaded
    done = 0

    async def one(row: dict[str, Any]) -> dict[str, Any]:
        try:
            inputs = loaded.request.model_validate({k: row[k] for k in loaded.request.model_fields}).model_dump()
            result = {**await answer(service, loaded, inputs), "error": None}
        except ValidationError as exc:
            err = exc.errors()[0]
            result = {"error": f"{'.'.join(map(str, err['loc']))}: {err['msg']}"}
        except LMOutage as exc:
            result = {"error": f"the LM does not answer: {exc}"}
        except Exception as exc:  # the program or its parsing failed on this row: say so in the row
            result = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        nonlocal done
        done += 1
        advance(done)
        return result

    return await asyncio.gather(*(one(row) for row in rows))
