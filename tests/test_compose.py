"""gepa_lab.compose: the one way configs are composed outside a Hydra app (Hydra's public compose API)."""
import pytest
import yaml
from hydra import compose as hydra_compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from gepa_lab.compose import compose
from gepa_lab.corpus import CorpusError, load_corpus_config
from gepa_lab.errors import ConfigError
from gepa_lab.paths import CONF_DIR

CORPUS = {"name": "tiny", "source": {"files": "data/tiny.csv"}, "inputs": {"text": "text"}, "answer": {"label": "label"},
          "splits": {"train": 2, "val": 1, "test": 1}, "license": "CC0 1.0"}


@pytest.fixture
def conf(tmp_path):
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(CORPUS))
    return tmp_path


def test_every_field_with_a_default_is_overridable_and_plus_and_tilde_work(conf):
    cfg = load_corpus_config("tiny", ["source.encoding=latin-1", "seed=3", "~license", "+kind=open"], conf_dir=conf)
    assert (cfg.source.encoding, cfg.seed, cfg.license, cfg.kind) == ("latin-1", 3, "unspecified", "open")
    with pytest.raises(CorpusError, match="unknown field 'nope'"):
        load_corpus_config("tiny", ["+nope=1"], conf_dir=conf)


def test_a_yml_corpus_config_composes_with_overrides(conf):
    (conf / "tiny.yaml").rename(conf / "tiny.yml")
    assert load_corpus_config("tiny", ["splits.train=5"], conf_dir=conf).splits.train == 5


@pytest.mark.parametrize("override, message", [("nope=1", "Could not override 'nope'"), ("splits.train=[1", "no viable alternative")])
def test_bad_overrides_are_one_line(conf, override, message):
    with pytest.raises(CorpusError) as info:
        load_corpus_config("tiny", [override], conf_dir=conf)
    assert str(info.value).startswith(str(conf / "tiny.yaml")) and message in str(info.value)
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError) as info:
        compose("sweep", ["sweep=no_such_sweep"])
    assert "no_such_sweep" in str(info.value) and "\n" not in str(info.value)


def test_a_running_hydra_app_is_left_undisturbed(conf):
    with initialize_config_dir(str(CONF_DIR), version_base=None):
        assert load_corpus_config("tiny", ["seed=1"], conf_dir=conf).seed == 1
        assert compose("run", ["task=banking77"]).task.name == "banking77"
        assert hydra_compose("sweep", ["sweep=demo"]).sweep.name == "demo"  # the app's own config dir, still
    assert not GlobalHydra.instance().is_initialized()
