"""A small vocabulary for the protocol, as a Hugging Face fast tokenizer.

Digits are single tokens (numbers are spelled digit by digit), operators with their
spaces are one token each, and the fixed prompt words, ``Goal Reached!`` and
``<backtrack>`` are whole tokens. The tokenizer is saved in every model directory, so
``AutoTokenizer.from_pretrained(model_dir)`` loads it; ``decode(encode(t)) == t`` for
every protocol text.

Every sbt model is trained with ``<bos>`` in front of the prompt, so the tokenizer adds it
itself (a template post-processor in tokenizer.json): ``tok(prompt)`` followed by
``model.generate`` — the first thing a Hugging Face user types — gets what sbt gets. sbt's
own code encodes with ``add_special_tokens=False`` and places ``<bos>`` explicitly.
"""

from __future__ import annotations

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

from .trace import BACKTRACK, GOAL

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL = [PAD, BOS, EOS, UNK]
# whole-token pieces of the protocol (longest first matters only for overlaps)
PIECES = ["###Question: numbers ", "]->target ", "###Response:", GOAL, BACKTRACK,
          " + ", " - ", " * ", " / ", " = ", ", "]
CHARS = list("0123456789") + [" ", "\n", "+", "-", "*", "/", "=", "[", "]", ",", ">", "#", ":"]


def build_tokenizer():
    """The protocol tokenizer as a ``PreTrainedTokenizerFast``."""
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL + CHARS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([AddedToken(t, normalized=False) for t in SPECIAL])
    tok.add_tokens([AddedToken(p, normalized=False, single_word=False) for p in PIECES])
    tok.post_processor = bos_template(vocab[BOS])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        add_bos_token=True,  # transformers 5 rebuilds the post-processor from this flag
        clean_up_tokenization_spaces=False,
        model_max_length=512,
    )
    return fast


def bos_template(bos_id: int) -> processors.TemplateProcessing:
    """The post-processor that puts ``<bos>`` in front of every encoded text (as training did)."""
    return processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B:1",
                                         special_tokens=[(BOS, bos_id)])


def backtrack_token_id(tokenizer) -> int:
    return tokenizer.convert_tokens_to_ids(BACKTRACK)
