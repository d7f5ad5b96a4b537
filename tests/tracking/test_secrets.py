from gepa_lab.tracking.secrets import MASK, find_secrets, redact, redact_text, secret_values


def test_secret_named_keys_are_masked_env_names_kept():
    cfg = {
        "lm": {"model": "m", "api_key": "abc", "api_key_env": "OPENAI_API_KEY", "max_tokens": 256},
        "auth": {"hf_token": "hf_xyz", "password": "pw", "client_secret": "s", "SECRET_KEY": ""},
        "list": [{"access_token": "t"}, "plain"],
        "tokenizer_threads": 4,
    }
    out = redact(cfg, secrets=[])
    assert out["lm"] == {"model": "m", "api_key": MASK, "api_key_env": "OPENAI_API_KEY", "max_tokens": 256}
    assert out["auth"] == {"hf_token": MASK, "password": MASK, "client_secret": MASK, "SECRET_KEY": ""}
    assert out["list"] == [{"access_token": MASK}, "plain"]
    assert out["tokenizer_threads"] == 4
    assert cfg["lm"]["api_key"] == "abc"  # a copy, the input is untouched


def test_an_env_reference_that_is_not_a_name_is_masked():
    assert redact({"api_key_env": "sk-live-1234567890"}, secrets=[])["api_key_env"] == MASK


def test_values_of_secret_env_vars_are_masked_anywhere(monkeypatch):
    monkeypatch.setenv("MY_SERVICE_TOKEN", "tok-0123456789")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    monkeypatch.setenv("SHORT_KEY", "abc")
    assert "tok-0123456789" in secret_values()
    assert "false" not in secret_values() and "abc" not in secret_values()
    cfg = {"url": "http://h/v1?k=tok-0123456789", "notes": ["tok-0123456789"], "flag": "false", "n": 3}
    assert redact(cfg) == {"url": f"http://h/v1?k={MASK}", "notes": [MASK], "flag": "false", "n": 3}
    assert redact_text("error: bad key tok-0123456789") == f"error: bad key {MASK}"


def test_find_secrets_reports_without_revealing(monkeypatch):
    monkeypatch.setenv("GEPA_LAB_X_API_KEY", "sk-canary-abcdef123456")
    hits = find_secrets(b"\x00\x01...sk-canary-abcdef123456...")
    assert hits == ["sk-c...(22 chars)"]
    assert find_secrets(b"nothing here") == []
    assert find_secrets("secret-in-extra-list", secrets=["secret-in-extra-list"]) == ["secr...(20 chars)"]
