"""Bring your own model: what sbt asks of a Hugging Face tokenizer it did not build.

sbt's own tokenizer (``sbt_core.tokenizer``) spells numbers digit by digit and has
``Goal Reached!`` and ``<backtrack>`` as whole tokens. A base model brought with
``sbt train --base-model`` keeps its own tokenizer (BPE, SentencePiece-style, multi-digit
number pieces, with or without a bos token): ``<backtrack>`` becomes one added special
token, ``Goal Reached!`` stays text. What the backends and the training data need of such
a tokenizer is here, without torch:

- ``special_prefix``: the ids the tokenizer itself puts in front of a text (its bos, when
  it adds one): sbt prompts start with exactly those, in training and at inference, so a
  tokenizer that adds no bos never gets one invented;
- ``check_protocol_tokenizer``: a round trip of protocol text (digits, ``+ - * /``, ``=``,
  ``->``, newlines, ``Goal Reached!``; a space the tokenizer puts before a text is allowed),
  else one line;
- ``continuation_ids``: the tokens of a continuation as they follow its prompt (a
  SentencePiece-style tokenizer encodes a text on its own with a leading word marker).

Nothing here loads code: tokenizers are read by ``tokenizers`` / transformers from JSON,
``trust_remote_code`` is never set.
"""

from __future__ import annotations

from typing import Callable

from .countdown import shorten
from .errors import SbtError
from .trace import GOAL, PROMPT_HEAD, RESPONSE_HEAD

HF_EXTRA = "pip install 'sbt[hf]'"  # the optional extra that brings peft (LoRA adapters)

# protocol text the round trip must give back unchanged: every character and word sbt writes
PROTOCOL_SAMPLES = (
    f"{PROMPT_HEAD}[2, 31, 5, 100]->target 907\n{RESPONSE_HEAD}"
    "100 * 5 = 500\n31 - 2 = 29\n500 / 4 = 125\n29 + 878 = 907\n" + GOAL,
    f"{PROMPT_HEAD}[1, 3, 7, 10, 25, 50]->target 99\n{RESPONSE_HEAD}50 + 49 = 99\n6 * 8 = 48\n",
    "0 1 2 3 4 5 6 7 8 9 10 99 100 123456 -> = + - * / [ ] , # :\n\n",
)


def special_prefix(tokenizer) -> list[int]:
    """The ids ``tokenizer`` puts in front of a text when asked for its special tokens (its
    bos, for a tokenizer that adds one; [] for one that adds none, e.g. GPT-2's).
    ``tokenizer``: a transformers tokenizer or ``LightTokenizer``."""
    probe = "12 + 3 = 15\n"
    plain = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    full = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
    for k in range(len(full) - len(plain) + 1):
        if full[k:k + len(plain)] == plain:
            return full[:k]
    return []


def check_protocol_tokenizer(tokenizer, where: str) -> None:
    """``SbtError`` (one line naming ``where``) unless every protocol sample encodes without
    an unknown token and decodes back to itself."""
    unk = getattr(tokenizer, "unk_token_id", None)
    for text in PROTOCOL_SAMPLES:
        try:
            ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
            back = tokenizer.decode(ids, skip_special_tokens=False)
        except Exception as exc:  # a tokenizer that fails on plain text
            raise SbtError(f"{where}: the tokenizer cannot encode sbt's protocol text ({type(exc).__name__}: "
                           f"{shorten(str(exc), 80)})") from None
        back = without_prefix_space(back, text)
        if back != text or (unk is not None and unk in ids):
            i = next((i for i, (a, b) in enumerate(zip(text, back)) if a != b), min(len(text), len(back)))
            shown = back[max(0, i - 8):i + 12]
            raise SbtError(f"{where}: the tokenizer cannot encode sbt's protocol text: {text[max(0, i - 8):i + 12]!r} "
                           f"comes back as {shown!r}" + (" (unknown tokens)" if back == text else ""))


def without_prefix_space(decoded: str, text: str) -> str:
    """``decoded`` without the space a tokenizer puts before a whole text (``add_prefix_space``)."""
    return decoded[1:] if decoded.startswith(" ") and decoded[1:] == text else decoded


def continuation_ids(encode: Callable[[str], list[int]], prompt: str, continuation: str) -> list[int]:
    """The tokens of ``continuation`` as they follow ``prompt``: those of the joined text
    after the prompt's own tokens when the joined text starts with them (the usual case;
    for sbt's tokenizer they equal ``encode(continuation)``), else ``encode(continuation)``."""
    head = encode(prompt)
    joined = encode(prompt + continuation)
    if joined[:len(head)] == head:
        return joined[len(head):]
    return encode(continuation)
