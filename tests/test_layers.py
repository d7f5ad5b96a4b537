"""The package reads as the pipeline: each part imports only from the parts below it, and nothing imports in a cycle.

Every import counts, also those inside functions (they are how a lower layer would reach up without showing it)."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "gepa_lab"

# Lowest first. A module may import from its own part and from the parts before it, never from one after it.
LAYERS = [
    {"errors", "paths", "atomic", "strict", "events", "cli", "progress", "compose", "api_keys"},  # foundations every part uses
    {"sim"},  # the LM simulator: a server program of its own
    {"corpus"},
    {"tasks"},
    {"lm"},  # the client side a trial uses to talk to an LM
    {"servers"},  # what a run or sweep starts: LM servers, router, replicas, Redis, a Ray head
    {"config"},  # a run's whole config: corpus + task + lm + optimizer + tracking
    {"tracking"},
    {"results"},
    {"trial", "harness"},  # one GEPA compile, and the one way every entry sets it up
    {"run", "sweep", "promote"},  # promote: the guard a sweep's registration uses, and its own CLI
    {"serve"},
    {"bench"},  # python -m gepa_lab.bench: measures all of the above
]
RANK = {part: i for i, layer in enumerate(LAYERS) for part in layer}


def part_of(module: str) -> str:
    return module.split(".")[1]


def imports() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        targets = found.setdefault(module, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names if a.name.startswith("gepa_lab."))
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("gepa_lab."):
                targets.add(node.module)
    return found


def test_every_part_has_a_layer():
    parts = {part_of(m) for m in imports() if "." in m}
    assert parts <= set(RANK), f"add these to LAYERS: {sorted(parts - set(RANK))}"


def test_nothing_imports_from_a_layer_above():
    upward = [f"{module} imports {target}" for module, targets in imports().items() if "." in module
              for target in targets if RANK[part_of(target)] > RANK[part_of(module)]]
    assert not upward, "\n".join(sorted(upward))


def test_the_simulator_is_reached_only_through_its_options():
    """The rest of gepa_lab starts the simulator as a process (gepa_lab.servers.simulator); what it may import from
    gepa_lab.sim is the options model LM configs embed, never the server's workings."""
    reaching_in = [f"{m} imports {t}" for m, targets in imports().items() if not m.startswith("gepa_lab.sim")
                   for t in targets if t.startswith("gepa_lab.sim") and t != "gepa_lab.sim.config"]
    assert not reaching_in, reaching_in


def test_no_module_import_cycle():
    graph = {m: {t for t in targets if t in imports_ and t != m} for imports_ in [imports()] for m, targets in imports_.items()}
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
