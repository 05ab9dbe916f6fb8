"""A model directory's ``tokenizer.json`` opened with the ``tokenizers`` library alone.

``transformers`` takes seconds to import; inference only needs encode, decode and the
special-token ids, which ``tokenizers`` gives in milliseconds. ``LightTokenizer`` offers
the small part of the ``PreTrainedTokenizerFast`` API the backends use, so a backend can
take either. ``special_ids`` reads bos / eos / pad / unk from ``tokenizer_config.json``
(the llama.cpp backend uses it too).
"""

from __future__ import annotations

import json
from pathlib import Path

SPECIAL_KEYS = ("bos", "eos", "pad", "unk")


def special_ids(tok, folder: Path, fallback: dict | None = None) -> dict[str, int | None]:
    """bos / eos / pad / unk ids of ``tok`` (a ``tokenizers.Tokenizer``): named in
    ``tokenizer_config.json`` / ``special_tokens_map.json`` in ``folder``, else ``fallback``."""
    names: dict[str, str | None] = {}
    for fname in ("tokenizer_config.json", "special_tokens_map.json"):
        f = folder / fname
        if f.is_file():
            try:
                cfg = json.loads(f.read_text())
            except ValueError:
                continue
            for key in SPECIAL_KEYS:
                v = cfg.get(f"{key}_token")
                if isinstance(v, dict):
                    v = v.get("content")
                names.setdefault(key, v)
    fallback = fallback or {}
    out: dict[str, int | None] = {}
    for key in SPECIAL_KEYS:
        if names.get(key):
            out[key] = tok.token_to_id(names[key])
        else:
            out[key] = fallback.get(key)
    return out


class LightTokenizer:
    """``tokenizer.json`` + special ids, with the HF-tokenizer calls our backends make."""

    def __init__(self, folder: str | Path) -> None:
        from tokenizers import Tokenizer

        folder = Path(folder)
        self._tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        ids = special_ids(self._tok, folder)
        self.bos_token_id, self.eos_token_id = ids["bos"], ids["eos"]
        self.pad_token_id, self.unk_token_id = ids["pad"], ids["unk"]

    def __len__(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": self._tok.encode(text, add_special_tokens=add_special_tokens).ids}

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def convert_tokens_to_ids(self, token: str) -> int | None:
        found = self._tok.token_to_id(token)
        return self.unk_token_id if found is None else found
