"""What a run records about itself: the model label and the command that reproduces it."""

from __future__ import annotations

import sys

from harness.runner import command_line, model_label


def test_model_label_keeps_gguf_types_of_one_model_apart():
    class Gguf:
        model_name, quant = "countdown4-backtrack", "q4_0"

    class Torch:
        model_name = "countdown4-backtrack"

    assert model_label(Gguf()) == "countdown4-backtrack:q4_0"
    assert model_label(Torch()) == "countdown4-backtrack"
    assert model_label(None) is None


def test_command_line_records_settings_from_the_environment(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/usr/bin/sbt", "bench", "--methods", "greedy,self-backtrack"])
    for k in ("SBT_DTYPE", "SBT_TORCH_IMPL", "SBT_DEVICE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("SBT_LLAMA_QUANT", "q4_0")
    assert command_line() == "SBT_LLAMA_QUANT=q4_0 sbt bench --methods greedy,self-backtrack"
    monkeypatch.delenv("SBT_LLAMA_QUANT")
    assert command_line() == "sbt bench --methods greedy,self-backtrack"
