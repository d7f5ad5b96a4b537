"""gepa_lab.compose: the one way configs are composed outside a Hydra app (Hydra's public compose API)."""
import pytest
import yaml
from hydra import compose as hydra_compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra

from gepa_lab.compose import compose
from gepa_lab.corpus import CorpusError, load_corpus_config
from gepa_lab.errors import ConfigError

CORPUS = {"name": "tiny", "source": {"files": "data/tiny.csv"}, "inputs": {"text": "text"}, "answer": {"label": "label"},
          "splits": {"train": 2, "val": 1, "test": 1}, "license": "CC0 1.0"}


@pytest.fixture
def conf(tmp_path):
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(CORPUS))
    return tmp_path


@pytest.fixture
def app(tmp_path):
    """An app's config folder: app.yaml choosing from the group `color`."""
    (tmp_path / "app" / "color").mkdir(parents=True)
    (tmp_path / "app" / "app.yaml").write_text("defaults:\n  - color: red\n  - _self_\nsize: 1\n")
    (tmp_path / "app" / "color" / "red.yaml").write_text("rgb: [255, 0, 0]\n")
    return tmp_path / "app"


def test_every_field_with_a_default_is_overridable_and_plus_and_tilde_work(conf):
    cfg = load_corpus_config("tiny", ["source.encoding=latin-1", "seed=3", "~license", "+kind=open"], conf_dir=conf)
    assert (cfg.source.encoding, cfg.seed, cfg.license, cfg.kind) == ("latin-1", 3, "unspecified", "open")
    with pytest.raises(CorpusError, match="unknown field 'nope'"):
        load_corpus_config("tiny", ["+nope=1"], conf_dir=conf)


def test_a_yml_corpus_config_composes_with_overrides(conf):
    (conf / "tiny.yaml").rename(conf / "tiny.yml")
    assert load_corpus_config("tiny", ["splits.train=5"], conf_dir=conf).splits.train == 5


@pytest.mark.parametrize("override, message", [("nope=1", "Could not override 'nope'"), ("splits.train=[1", "no viable alternative")])
def test_bad_overrides_are_one_line(conf, app, override, message):
    with pytest.raises(CorpusError) as info:
        load_corpus_config("tiny", [override], conf_dir=conf)
    assert str(info.value).startswith(str(conf / "tiny.yaml")) and message in str(info.value)
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError) as info:
        compose("app", ["color=blue"], config_dir=app)
    assert "color/blue" in str(info.value) and "\n" not in str(info.value)


def test_a_running_hydra_app_is_left_undisturbed(conf, app):
    with initialize_config_dir(str(app), version_base=None):
        assert load_corpus_config("tiny", ["seed=1"], conf_dir=conf).seed == 1
        assert compose("tiny", ["+size=2"], config_dir=conf).size == 2
        assert hydra_compose("app", ["size=3"]).color.rgb == [255, 0, 0]  # the app's own config folder, still
    assert not GlobalHydra.instance().is_initialized()


def test_threads_compose_at_once_each_getting_its_own_config(app):
    """Hydra's state is the process's: the benchmark's cases compose from several threads at once."""
    from concurrent.futures import ThreadPoolExecutor

    def size(n: int) -> int:
        return compose("app", [f"size={n}", "color=red"], config_dir=app).size

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(size, range(32))) == list(range(32))


def test_storing_a_config_while_other_threads_compose(app):
    """A module that stores its defaults (gepa_lab.config.schema.store_defaults) may be imported in one thread while
    another composes: Hydra copies its whole config store as it composes."""
    from concurrent.futures import ThreadPoolExecutor

    from gepa_lab.compose import store_config

    def size(n: int) -> int:
        return compose("app", [f"size={n}"], config_dir=app).size

    names = [f"gepa_lab_test_store_{i}" for i in range(3000)]
    try:
        with ThreadPoolExecutor(4) as pool:
            sizes = pool.map(size, range(24))
            for name in names:
                store_config(name, {"values": {str(k): [k] for k in range(10)}})
            assert list(sizes) == list(range(24))
    finally:  # later composes in this process copy the store: leave it as it was
        repo = ConfigStore.instance().repo
        for name in names:
            repo.pop(f"{name}.yaml", None)
