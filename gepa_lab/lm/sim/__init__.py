"""Deterministic offline LM simulator speaking the OpenAI chat-completions API (README: "The LM simulator")."""

from .launch import Simulator, SimulatorStartError, start_simulator

__all__ = ["Simulator", "SimulatorStartError", "start_simulator"]
