"""``sbt train --base-model DIR``: fine-tune any local Hugging Face causal LM on Countdown.

A base model is a directory that ``AutoModelForCausalLM`` / ``AutoTokenizer`` load
(config.json, safetensors weights, a fast tokenizer: Llama, GPT-2, Qwen2, Mistral, ...;
or a LoRA adapter directory of sbt's, merged on load). Its tokenizer stays its own:

- ``<backtrack>`` becomes one added special token (unless the tokenizer has it: sbt's own
  models), ``Goal Reached!`` stays text; an end token is added only when there is none,
  padding reuses the end token; a bos is never invented (prompts start with what the
  tokenizer itself puts in front of a text: ``sbt_core.hf.special_prefix``);
- the embeddings grow to the tokenizer; each new row (input and untied output) is the mean
  of the existing rows;
- the tokenizer must give protocol text back unchanged (``sbt_core.hf.
  check_protocol_tokenizer``) and ``<backtrack>`` must be one token in context.

``--lora R`` trains LoRA adapters (peft, rank R, alpha 2R, on every linear layer but the
output head) plus the rows of the added tokens (``trainable_token_indices``), and saves an
adapter directory (adapter_config.json naming the base directory, adapter_model.safetensors
and the tokenizer) that sbt loads merged; ``--merge`` saves the merged model instead. The
loss masks are the data builder's (``training.data.encode``: character offsets, exact for
any tokenizer).
"""

from __future__ import annotations

import copy
import importlib.util
import warnings
from pathlib import Path

from sbt_core.errors import SbtError
from sbt_core.hf import HF_EXTRA, check_protocol_tokenizer, special_prefix, without_prefix_space
from sbt_core.trace import BACKTRACK, GOAL

EOS_IF_NONE = "</s>"


def check_base(base: str | Path):
    """(directory, tokenizer) of a base model, checked before any weight is read or anything
    written: the directory (``check_base_dir``), a causal LM's config, a fast tokenizer
    that gives protocol text back. One line naming ``--base-model`` otherwise."""
    from sbt_core.backends.torch_backend import check_causal_lm, quiet_transformers
    from sbt_core.models import is_adapter_dir

    path = check_base_dir(base)
    where = f"--base-model {base}"
    quiet_transformers()
    if not is_adapter_dir(path):
        try:
            check_causal_lm(path)
        except SbtError as exc:
            raise SbtError(f"{where}: {exc}") from None
    tok = _tokenizer(path, where)
    check_protocol_tokenizer(tok, where)
    return path, tok


def check_base_dir(base: str | Path) -> Path:
    """The base model directory, checked without torch (config sizes, safetensors weights,
    a tokenizer; an adapter's base too): one line naming ``--base-model``."""
    from sbt_core.models import check_model_dir

    path = Path(base).expanduser()
    if not path.exists():
        raise SbtError(f"--base-model {base}: no such directory")
    if not path.is_dir():
        raise SbtError(f"--base-model {base}: not a directory (a Hugging Face model directory is needed)")
    if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
        raise SbtError(f"--base-model {base}: not a Hugging Face model directory (no config.json)")
    try:
        check_model_dir(path)
    except SbtError as exc:
        raise SbtError(f"--base-model {base}: {exc}") from None
    return path.resolve()


def check_lora_available() -> None:
    """``--lora`` needs peft: one line naming the extra that brings it."""
    if importlib.util.find_spec("peft") is None:
        raise SbtError(f"--lora needs peft, which is not installed: {HF_EXTRA}")


def load_base(cfg, log=print):
    """(tokenizer, model, info) for ``cfg.base_model``: the tokenizer and model ready for
    sbt's data (see the module doc), wrapped in LoRA adapters with ``cfg.lora``; ``info``
    is what training.json records of the base."""
    import torch

    from sbt_core.backends.torch_backend import load_hf_model, resize_embeddings
    from sbt_core.models import is_adapter_dir, model_sha256, read_adapter_config

    base, tok = check_base(cfg.base_model)
    where = f"--base-model {cfg.base_model}"
    try:
        model = load_hf_model(base, torch.float32)
    except SbtError as exc:  # (load_hf_model's checks of config.json and the weights)
        raise SbtError(f"{where}: {exc}") from None
    except Exception as exc:  # corrupt or foreign checkpoint
        first = (str(exc).strip().splitlines() or [""])[0]
        raise SbtError(f"{where}: cannot load ({type(exc).__name__}: {first[:120]})") from None
    known = len(tok)
    added = []
    if BACKTRACK not in tok.get_vocab():  # (a model of ours already has it: its tokenizer stays as it is)
        tok.add_special_tokens({"additional_special_tokens": [BACKTRACK]})
        added.append(BACKTRACK)
    if tok.eos_token is None:
        tok.add_special_tokens({"eos_token": EOS_IF_NONE})
        added.append(EOS_IF_NONE)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    _check_backtrack_token(tok, where)
    new_ids = [tok.convert_tokens_to_ids(t) for t in added]
    rows = model.get_input_embeddings().num_embeddings
    if len(tok) > rows:
        resize_embeddings(model, len(tok))
    elif new_ids:  # spare rows (a vocabulary padded past its tokenizer): the new tokens start as the mean
        _mean_rows(model, new_ids, known)
    for key in ("bos", "eos", "pad"):  # the config names the tokenizer's special tokens (generate, pipelines)
        setattr(model.config, f"{key}_token_id", getattr(tok, f"{key}_token_id"))
    if cfg.attn and hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(cfg.attn)
    info = {"path": str(base), "sha256": model_sha256(base), "adapter": is_adapter_dir(base),
            "architecture": _architecture(model), "model_type": getattr(model.config, "model_type", None),
            "params": sum(p.numel() for p in model.parameters()), "vocab": known, "added_tokens": added,
            "prefix": [tok.convert_ids_to_tokens(i) for i in special_prefix(tok)]}
    if info["adapter"]:
        info["adapter_base"] = read_adapter_config(base)["base_model_name_or_path"]
    if cfg.lora:
        model = _with_lora(model, cfg.lora, new_ids)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        info["lora"] = {"r": cfg.lora, "alpha": 2 * cfg.lora, "target_modules": "all-linear",
                        "trainable_tokens": added, "trainable_params": trainable, "merged": bool(cfg.merge)}
        log(f"LoRA r={cfg.lora}: {trainable:,} trainable parameters of {info['params']:,}")
    return tok, model, info


def _tokenizer(base: Path, where: str):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(base)  # (never trust_remote_code: a tokenizer is data)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise SbtError(f"{where}: cannot load its tokenizer ({type(exc).__name__}: {first[:120]})") from None
    if not getattr(tok, "is_fast", False) or getattr(tok, "backend_tokenizer", None) is None:
        raise SbtError(f"{where}: sbt needs a fast tokenizer (tokenizer.json) for exact loss masks; "
                       f"{type(tok).__name__} is not one")
    return tok


def _check_backtrack_token(tok, where: str) -> None:
    """``<backtrack>`` after a step line is exactly one token, and ``Goal Reached!`` comes back."""
    bt = tok.convert_tokens_to_ids(BACKTRACK)
    for text in ("7 * 3 = 21\n" + BACKTRACK, "21 - 1 = 20\n" + GOAL):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        back = without_prefix_space(tok.decode(ids, skip_special_tokens=False), text)
        if back != text or (BACKTRACK in text and ids.count(bt) != 1):
            raise SbtError(f"{where}: with {BACKTRACK} added, the tokenizer does not give {text!r} back")


def _mean_rows(model, ids: list[int], known: int) -> None:
    import torch

    with torch.no_grad():
        seen = set()
        for module in (model.get_input_embeddings(), model.get_output_embeddings()):
            if module is None or id(module.weight) in seen:
                continue
            seen.add(id(module.weight))
            module.weight[ids] = module.weight[:known].mean(0).to(module.weight.dtype)


def _architecture(model) -> str:
    names = getattr(model.config, "architectures", None) or [type(model).__name__]
    return str(names[0])


def _with_lora(model, rank: int, new_ids: list[int]):
    """The model with LoRA adapters of rank ``rank`` on every linear layer but the output
    head, and the embedding rows of the added tokens trainable (input and, untied, output)."""
    check_lora_available()
    from peft import LoraConfig, get_peft_model

    names = {id(m): n.rsplit(".", 1)[-1] for n, m in model.named_modules()}
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    rows = None
    if new_ids:
        rows = {names[id(inp)]: list(new_ids)}
        if out is not None and out.weight is not inp.weight:
            rows[names[id(out)]] = list(new_ids)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules="all-linear",
                        trainable_token_indices=rows, task_type="CAUSAL_LM")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft's notes (GPT-2's Conv1D layers: fan_in_fan_out)
        return get_peft_model(model, config)


def is_peft(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "merge_and_unload")


def save_trained(model, tok, out: Path, cfg) -> Path:
    """Write the trained model to ``out``: a plain Hugging Face model directory
    (``training.model.save_model``), or with ``--lora`` an adapter directory (peft's
    adapter_config.json, naming the base directory, and adapter_model.safetensors, plus the
    tokenizer) or, with ``--merge``, the merged model (the training model is left as it is)."""
    from .model import save_model

    out = Path(out)
    if not is_peft(model):
        return save_model(model, tok, out)
    if cfg.merge:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            merged = copy.deepcopy(model).merge_and_unload()
        return save_model(merged, tok, out)
    from sbt_core.backends.torch_backend import quiet_transformers

    quiet_transformers()
    out.mkdir(parents=True, exist_ok=True)
    for config in model.peft_config.values():  # the base as sbt found it (an adapter base: that adapter)
        config.base_model_name_or_path = str(Path(cfg.base_model).expanduser().resolve())
    (out / "README.md").unlink(missing_ok=True)  # (peft would edit a card it finds; sbt writes its own after)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ("the embedding layer was resized": its new rows are in the adapter)
        model.save_pretrained(out, safe_serialization=True, save_embedding_layers=False)
    (out / "README.md").unlink(missing_ok=True)  # (peft's template card)
    tok.save_pretrained(out)
    return out
