"""The shipped tokenizer adds ``<bos>`` itself (issue 21): plain transformers users get what sbt
gets. Each shipped model card's five-line snippet is run as written and must answer exactly
what sbt's own greedy decoding answers."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

from sbt_core.countdown import Puzzle
from sbt_core.search import run_search
from sbt_core.tokenizer import BOS, build_tokenizer
from sbt_core.trace import parse_response
from training.model_card import SNIPPET_MARK

REPO = Path(__file__).resolve().parents[1]
SHIPPED = ["countdown3-backtrack", "countdown3-sft", "countdown4-backtrack", "countdown4-sft"]


def test_built_tokenizer_adds_bos_and_sbt_encoding_does_not(tmp_path):
    from transformers import AutoTokenizer

    tok = build_tokenizer()
    bos = tok.convert_tokens_to_ids(BOS)
    plain = tok("12 + 3 = 15\n", add_special_tokens=False)["input_ids"]
    assert tok("12 + 3 = 15\n")["input_ids"] == [bos, *plain]
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again("12 + 3 = 15\n")["input_ids"] == [bos, *plain]
    assert again("12 + 3 = 15\n", add_special_tokens=False)["input_ids"] == plain


def _snippet(card: Path) -> str:
    text = card.read_text()
    assert SNIPPET_MARK in text, f"{card} has no transformers snippet"
    return re.search(re.escape(SNIPPET_MARK) + r"\n```python\n(.*?)```", text, re.S).group(1)


@pytest.mark.parametrize("name", SHIPPED)
def test_card_snippet_answers_what_sbt_greedy_answers(name, monkeypatch):
    from sbt_core.backends.torch_backend import TorchBackend

    monkeypatch.chdir(REPO)  # the snippet names models/NAME as a user in the repository would
    code = _snippet(REPO / "models" / name / "README.md")
    numbers, target = re.search(r"numbers \[([\d, ]+)\]->target (\d+)", code).groups()
    puzzle = Puzzle(tuple(int(x) for x in numbers.split(", ")), int(target))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, f"{name}/README.md", "exec"), {})
    response = out.getvalue().split("###Response:\n", 1)[1].rstrip("\n")
    ours = run_search("greedy", puzzle, TorchBackend(REPO / "models" / name))
    assert parse_response(response).lines == ours.lines, (response, ours.lines)
    assert ours.lines  # a real answer, not two empty ones
