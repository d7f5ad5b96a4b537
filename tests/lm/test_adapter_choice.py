"""The task program's dspy adapter is a per-LM choice (`lm.adapter`): a run with `adapter: json` writes every task
prompt for dspy's JSONAdapter from the first call; the default (chat) writes ChatAdapter prompts. Told apart by the
task simulator, which counts the requests it answered by their kind (requests_by_kind)."""
from tests.conftest import run_cli

from gepa_lab.compose import compose
from gepa_lab.config.schema import RunConfig
from tests.support.corpus import TINY_CORPUS


def run_kinds(tmp_path, name: str, *overrides: str) -> dict[str, int]:
    from gepa_lab.servers.simulator import start_simulator

    with start_simulator(max_in_flight=8) as task_sim, start_simulator(max_in_flight=2) as reflection_sim:
        done = run_cli("gepa_lab.run", "task=banking77", "tracking=none", "cache=off", f"output_dir={tmp_path / name}",
                       *TINY_CORPUS, "optimizer.max_metric_calls=60", "optimizer.reflection_minibatch_size=4",
                       "eval.test_limit=10", f"lm.api_base={task_sim.url}", f"reflection_lm.api_base={reflection_sim.url}",
                       *overrides)
        assert done.returncode == 0, done.stderr[-3000:]
        return task_sim.stats()["requests_by_kind"]


def test_the_json_adapter_from_the_first_call_where_the_lm_config_says_so(tmp_path):
    chat = run_kinds(tmp_path, "chat")
    json_ = run_kinds(tmp_path, "json", "lm.adapter=json")
    assert chat.get("chat", 0) > 0 and not chat.get("json"), chat
    assert json_.get("json", 0) > 0 and not json_.get("chat"), json_


def test_llamacpp_uses_the_json_adapter():
    cfg = RunConfig.model_validate(compose("run", ["lm=llamacpp", "output_dir=/tmp/unused"]))
    assert cfg.lm.adapter == "json" and cfg.reflection_lm.adapter == "chat"
    assert type(cfg.lm.dspy_adapter()).__name__ == "JSONAdapter"
