"""The simulator's and the router's command lines are generated from their options models: `--help` documents every
field with its description, and what a parent hands a child (`model_argv`) parses back into the very same model."""
import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gepa_lab.cli import add_model_options, model_argv, parse_model
from gepa_lab.servers.router import RouterConfig
from gepa_lab.sim.config import SimConfig

REPO = Path(__file__).resolve().parents[1]
PROGRAMS = [("gepa_lab.sim", SimConfig), ("gepa_lab.servers.router", RouterConfig)]


@pytest.mark.parametrize("module, model", PROGRAMS)
def test_help_lists_every_option_with_its_description_and_default(module, model):
    r = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert r.returncode == 0, r.stderr
    blocks = [" ".join(block.split()) for block in re.split(r"\n  (?=-)", r.stdout.split("options:", 1)[1])]
    for name, field in model.model_fields.items():
        block = next((b for b in blocks if b.startswith(f"--{name.replace('_', '-')}")), "")
        assert field.description and field.description in block, name
        if not field.is_required():
            assert f"(default: {field.get_default(call_default_factory=True)})" in block, name


@pytest.mark.parametrize("options", [
    SimConfig(port=8011, model="m", max_in_flight=3, latency_ms=2.5, hang_rate=0.1, hang_s=30, seed=7,
              api_key_env="SOME_VAR", log_level="INFO"),
    RouterConfig(replicas=["http://a:1/v1", "http://b:2/v1"], max_in_flight=5, host="0.0.0.0", port=9000,
                 affinity=False, affinity_slack=1, queue_timeout_s=3, port_file="/tmp/p"),
])
def test_what_a_parent_hands_its_child_parses_back_into_the_same_options(options):
    parser = argparse.ArgumentParser()
    add_model_options(parser, type(options))
    argv = model_argv(options)
    assert parse_model(parser, type(options), argv) == options
    defaults = type(options).model_validate(options.model_dump(exclude_unset=True, include={"port", "replicas", "max_in_flight"}))
    assert len(model_argv(defaults)) < len(argv)  # only what differs from the defaults travels
