"""Deterministic offline LM simulator speaking the OpenAI chat-completions API (README: "About the LM simulator").

Run it with `python -m gepa_lab.sim`; start it from Python with `gepa_lab.servers.simulator.start_simulator`."""
