"""A small vocabulary for the protocol, as a Hugging Face fast tokenizer.

Digits are single tokens (numbers are spelled digit by digit), operators with their
spaces are one token each, and the fixed prompt words, ``Goal Reached!`` and
``<backtrack>`` are whole tokens. The tokenizer is saved in every model directory, so
``AutoTokenizer.from_pretrained(model_dir)`` loads it; ``decode(encode(t)) == t`` for
every protocol text.

A model trained on puzzles under rules "any" (TV Countdown) gets a tokenizer with one more
whole token, the question's `` (any)`` (``trace.RULES_MARK``), after every other id:
``build_tokenizer("any")``. ``build_tokenizer()`` (rules "all") is the tokenizer every sbt
model had before rules "any", id for id, vocabulary size included (a model's embedding
size, and so its initial weights, follow from it).

Every sbt model is trained with ``<bos>`` in front of the prompt, so the tokenizer adds it
itself (a template post-processor in tokenizer.json): ``tok(prompt)`` followed by
``model.generate`` — the first thing a Hugging Face user types — gets what sbt gets. sbt's
own code encodes with ``add_special_tokens=False`` and places ``<bos>`` explicitly.
"""

from __future__ import annotations

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

from .countdown import DEFAULT_RULES, check_rules
from .trace import BACKTRACK, GOAL, RULES_MARK

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL = [PAD, BOS, EOS, UNK]
# whole-token pieces of the protocol (longest first matters only for overlaps)
PIECES = ["###Question: numbers ", "]->target ", "###Response:", GOAL, BACKTRACK,
          " + ", " - ", " * ", " / ", " = ", ", "]
CHARS = list("0123456789") + [" ", "\n", "+", "-", "*", "/", "=", "[", "]", ",", ">", "#", ":"]


def build_tokenizer(rules: str = DEFAULT_RULES):
    """The protocol tokenizer as a ``PreTrainedTokenizerFast``, for a model of puzzles under
    ``rules`` (module doc: "any" adds the whole token `` (any)``)."""
    from transformers import PreTrainedTokenizerFast

    check_rules(rules, "rules")
    pieces = PIECES + [RULES_MARK[rules]] if RULES_MARK[rules] else PIECES
    vocab = {tok: i for i, tok in enumerate(SPECIAL + CHARS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([AddedToken(t, normalized=False) for t in SPECIAL])
    tok.add_tokens([AddedToken(p, normalized=False, single_word=False) for p in pieces])
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
