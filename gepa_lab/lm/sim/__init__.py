"""Deterministic offline LM simulator speaking the OpenAI chat-completions API (README: "The LM simulator")."""

from .launch import Simulator, SimulatorStartError, free_port, start_simulator

__all__ = ["Simulator", "SimulatorStartError", "free_port", "start_simulator"]
