"""gepa_lab: many GEPA optimizations of DSPy programs as one distributed sweep."""
import os as _os

# Offline-friendly defaults, set before dspy, litellm, Hugging Face and Ray are imported: some are read only at import.
for _key, _value in {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # else litellm fetches model metadata over the network (~5 s)
    "RAY_AUTH_MODE": "disabled",  # local Ray without writing ~/.ray/auth_token
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TQDM_DISABLE": "1",  # GEPA's and dspy's progress bars; gepa_lab prints its own progress
    "RAY_AIR_NEW_OUTPUT": "0",
    # Ctrl-C: Tune's own handler would end fit() normally and the sweep would look finished; let it interrupt
    "TUNE_DISABLE_SIGINT_HANDLER": "1",  # Tune prints no experiment tables: the sweep shows its own live progress
}.items():
    _os.environ.setdefault(_key, _value)
