"""Where checkpoints live, the shipped defaults, and resolving a model by name or path.

A model is a Hugging Face model directory (config.json, *.safetensors, tokenizer files; any
causal-LM architecture transformers knows), or a LoRA adapter directory (adapter_config.json
naming a local base directory, adapter_model.safetensors, tokenizer files) merged on load.
Weights are safetensors only: a pickle checkpoint (pytorch_model.bin) is refused, never read.
Named models live in ``models/`` next to the packages (override with ``SBT_MODELS_DIR``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Iterable, Iterator

from . import settings
from .countdown import shorten
from .errors import SbtError
from .files import read_json_object
from .limits import MAX_MODEL_DIM, MAX_MODEL_LAYERS

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"  # the shipped models (SBT_MODELS_DIR: another folder)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def models_dir() -> Path:
    """The models folder: ``SBT_MODELS_DIR`` (read at each call: tests may set it late), else
    models/ in the repository."""
    return settings.models_dir() or MODELS_DIR


class NoModelError(SbtError):
    """No model in the models folder was trained for a puzzle's size and rules."""


def default_model(n_numbers: int = 4, rules: str = "all") -> str:
    """The model for puzzles with ``n_numbers`` inputs under ``rules`` ("all" | "any"): the
    shipped ``countdown3-backtrack`` / ``countdown4-backtrack`` for 3 / 4 numbers under "all"
    (by name, whether or not it is there: resolving it says so), else a model of the models
    folder that was trained for that size and those rules (``trained_for``; a backtracking
    one first). ``NoModelError`` (one line naming the models there and ``--method exact``)
    when there is none: a model never answers puzzles of a size or rules it was not
    trained for unless the user names it (``--model``)."""
    if rules == "all" and n_numbers in (3, 4):
        name = f"countdown{n_numbers}-backtrack"
        trained = trained_for(models_dir() / name) if (models_dir() / name).is_dir() else (None, None)
        if trained[0] in (None, n_numbers) and trained[1] in (None, rules):
            return name
    known = _known_models()
    fits = sorted((name for name, (n, r) in known.items() if n == n_numbers and r == rules),
                  key=lambda name: ("backtrack" not in name, name))
    if fits:
        return fits[0]
    under = "" if rules == "all" else f" under rules {rules!r} (any subset of the numbers)"
    shown = ", ".join(f"{name} ({n if n is not None else '?'} numbers{'' if r in (None, 'all') else ', ' + r})"
                      for name, (n, r) in sorted(known.items())) or f"none in {models_dir()}"
    raise NoModelError(f"no model is trained for {n_numbers}-number puzzles{under}; models: {shorten(shown, 160)}; "
                       "use --method exact (the solver), or --model DIR for a model of your own")


TRAINING_FILE = "training.json"


def _known_models() -> dict[str, tuple[int | None, str | None]]:
    """The model directories of the models folder (a config.json or adapter_config.json) and
    what each was trained for."""
    root = models_dir()
    try:
        dirs = sorted(p for p in root.iterdir() if p.is_dir() and ((p / "config.json").is_file()
                                                                   or (p / ADAPTER_CONFIG).is_file()))
    except OSError:
        return {}
    return {p.name: trained_for(p) for p in dirs}


def trained_for(name_or_path: str | os.PathLike) -> tuple[int | None, str | None]:
    """(number count, rules) a model was trained for, or None for what it does not record.

    From its ``training.json`` (``sbt train`` writes it): the count and rules it records
    (``n_numbers`` / ``rules``, at the top or in ``config``), else those of the data folder it
    trained on (``config.data_dir``: its ``meta.json``, written by ``sbt data generate``),
    else ``--numbers N`` of its recorded command; else a ``countdownN`` in the model's own
    name. Rules are "all" wherever a number count is known and no rules are recorded (every
    model before rules "any" was trained on "all" data). Never raises."""
    path = model_dir_of(name_or_path)
    n: int | None = None
    rules: str | None = None
    try:
        info = json.loads((path / TRAINING_FILE).read_text())
    except (OSError, ValueError):
        info = None
    if isinstance(info, dict):
        config = info.get("config") if isinstance(info.get("config"), dict) else {}
        for where in (info, config):
            n = n if n is not None else _whole(where.get("n_numbers"))
            rules = rules or (where.get("rules") if where.get("rules") in ("all", "any") else None)
        data_dir = config.get("data_dir")
        if isinstance(data_dir, str) and data_dir and (n is None or rules is None):
            meta = _data_meta(data_dir, path)
            if meta is not None:
                n = n if n is not None else _whole(meta.get("n_numbers"))
                rules = rules or (meta.get("rules", "all") if meta.get("rules", "all") in ("all", "any") else None)
        command = info.get("command")
        if n is None and isinstance(command, str):
            m = re.search(r"--numbers[ =](\d+)\b", command)
            n = int(m.group(1)) if m else None
        if n is None and isinstance(data_dir, str):
            m = re.search(r"countdown[-_]?(\d)(?!\d)", Path(data_dir).name)
            n = int(m.group(1)) if m else None
    if n is None:
        m = re.search(r"countdown[-_]?(\d)(?!\d)", path.name)
        n = int(m.group(1)) if m else None
    if n is not None and rules is None:
        rules = "all"
    return n, rules


def _whole(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _data_meta(data_dir: str, model_dir: Path) -> dict | None:
    """The ``meta.json`` of a data folder a training.json names (a relative path is looked
    up from the working folder, the repository and the model's folder)."""
    d = Path(data_dir).expanduser()
    for base in ([d] if d.is_absolute() else [Path.cwd() / d, MODELS_DIR.parent / d, model_dir / d]):
        try:
            meta = json.loads((base / "meta.json").read_text())
        except (OSError, ValueError):
            continue
        if isinstance(meta, dict):
            return meta
    return None


def resolve_model(name_or_path: str | os.PathLike) -> Path:
    """The directory of a model given by name (in ``models/``) or by path.

    Raises ``SbtError`` (one line) when it does not exist or is not a complete model
    directory (config, weights and tokenizer).
    """
    text = str(name_or_path)
    candidates = _candidates(text)
    path = next((p for p in candidates if p.is_dir()), None)
    if path is None:
        if any(p.exists() for p in candidates):
            raise SbtError(f"model {text!r} is not a directory")
        where = f" (looked in {models_dir()})" if len(candidates) > 1 else ""
        raise SbtError(f"model {text!r} not found{where}; train one with `sbt train` or pass --model DIR")
    check_model_dir(path)
    return path.resolve()


def _candidates(text: str) -> list[Path]:
    """Where a model called ``text`` may live: ``models/<text>`` first for a bare name, then
    ``text`` as a path."""
    path = Path(text).expanduser()
    return [models_dir() / text, path] if os.sep not in text and "/" not in text else [path]


def check_model_dir(path: Path, _depth: int = 0) -> None:
    """Raise ``SbtError`` unless ``path`` has a readable config (with sane values), weights
    and a tokenizer. (That the weights match the config is ``check_weights``'s job.)
    Weights are safetensors only: a directory holding only a pickle checkpoint
    (``pytorch_model.bin``) is refused, never loaded. A LoRA adapter directory (``sbt train
    --lora``: adapter_config.json, adapter_model.safetensors, tokenizer) is checked with its
    base model (``read_adapter_config``)."""
    path = Path(path)
    if is_adapter_dir(path):
        read_adapter_config(path, _depth)
    else:
        read_config(path)
    if not weight_files(path):
        pickled = pickle_weight_files(path)
        if pickled:
            raise SbtError(f"model directory {path} has only pickle weights ({pickled[0].name}); sbt loads "
                           "safetensors only (a pickle can run code): convert it to model.safetensors first")
        raise SbtError(f"model directory {path} has no weights (*.safetensors)")
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise SbtError(f"model directory {path} has no tokenizer (tokenizer.json)")


# --------------------------------------------------------------------------- LoRA adapters

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MAX_ADAPTER_DEPTH = 4  # an adapter on an adapter on ... (each one merged on load)


def is_adapter_dir(path: Path) -> bool:
    """A peft adapter directory (adapter_config.json, no config.json of its own)."""
    path = Path(path)
    return (path / ADAPTER_CONFIG).is_file() and not (path / "config.json").is_file()


def read_adapter_config(path: Path, _depth: int = 0) -> dict:
    """An adapter directory's adapter_config.json, checked: a LoRA adapter whose base model
    (``base_model_name_or_path``) is a local model directory that passes
    ``check_model_dir`` (itself possibly an adapter, up to ``MAX_ADAPTER_DEPTH``), with its
    weights as safetensors. Returns the config with ``base_model_name_or_path`` resolved
    (a relative path is taken from the adapter directory). Never downloads anything."""
    path = Path(path)
    file = path / ADAPTER_CONFIG
    config = read_json_object(file, f"adapter directory {path}")
    if config.get("peft_type") != "LORA":
        raise SbtError(f"adapter directory {path}: only LoRA adapters are supported, got peft_type "
                       f"{shorten(repr(config.get('peft_type')), 24)}")
    if not (path / ADAPTER_WEIGHTS).is_file():
        pickled = [f for f in ("adapter_model.bin",) if (path / f).is_file()]
        raise SbtError(f"adapter directory {path} has no {ADAPTER_WEIGHTS}"
                       + (f" (only a pickle, {pickled[0]}: sbt loads safetensors only)" if pickled else ""))
    base = config.get("base_model_name_or_path")
    if not isinstance(base, str) or not base:
        raise SbtError(f"adapter directory {path}: {ADAPTER_CONFIG} names no base model")
    base_dir = Path(base).expanduser()
    base_dir = base_dir if base_dir.is_absolute() else path / base_dir
    if not base_dir.is_dir():
        raise SbtError(f"adapter directory {path}: its base model {base} is not a local directory "
                       "(sbt never downloads; put the base model there or merge the adapter: sbt train --merge)")
    if _depth >= MAX_ADAPTER_DEPTH:
        raise SbtError(f"adapter directory {path}: more than {MAX_ADAPTER_DEPTH} adapters stacked on each other")
    check_model_dir(base_dir, _depth + 1)
    return {**config, "base_model_name_or_path": str(base_dir.resolve())}


# --------------------------------------------------------------------------- config.json

# sizes a config.json may give (whole numbers, 1 .. MAX_MODEL_DIM; layers up to MAX_MODEL_LAYERS);
# None means "the default" only where transformers allows it
CONFIG_SIZES = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "intermediate_size", "max_position_embeddings", "head_dim",
                # the same sizes under other architectures' names (GPT-2, OPT, T5-style...)
                "n_embd", "n_layer", "n_head", "n_inner", "n_positions", "n_ctx", "d_model", "num_layers", "n_layers",
                "ffn_dim", "d_ff", "num_heads", "word_embed_proj_dim")
CONFIG_SIZES_OPTIONAL = ("num_key_value_heads", "head_dim", "n_inner", "ffn_dim", "d_ff", "word_embed_proj_dim")
LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
CONFIG_POSITIVE = ("rms_norm_eps", "rope_theta", "layer_norm_eps", "layer_norm_epsilon")  # finite, > 0
LLAMA_REQUIRED = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")


def read_config(path: Path) -> dict:
    """The model directory's config.json as a dict, its values checked (``check_config``);
    ``SbtError`` (one line) when it is missing, unreadable, not an object or absurd."""
    file = Path(path) / "config.json"
    if not file.is_file():
        raise SbtError(f"model directory {path} has no config.json")
    config = read_json_object(file, f"model directory {path}")
    check_config(config, file)
    return config


def check_config(config: dict, where: Path | str) -> None:
    """Refuse (one line naming the key) sizes that are not whole numbers in range, and
    epsilons / rope bases that are not finite positive numbers, before anything is built."""
    def bad(key: str, want: str) -> SbtError:
        return SbtError(f"{where}: {key} must be {want}, got {shorten(repr(config[key]), 24)}")

    for key in CONFIG_SIZES:
        if key not in config or (config[key] is None and key in CONFIG_SIZES_OPTIONAL):
            continue
        v, top = config[key], MAX_MODEL_LAYERS if key in LAYER_KEYS else MAX_MODEL_DIM
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= top:
            raise bad(key, f"a whole number from 1 to {top:,}")
    rope = config.get("rope_parameters")
    for key, v in [*((k, config.get(k)) for k in CONFIG_POSITIVE),
                   ("rope_parameters.rope_theta", rope.get("rope_theta") if isinstance(rope, dict) else None)]:
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0):
            raise SbtError(f"{where}: {key} must be a finite number above 0, got {shorten(repr(v), 24)}")
    heads, kv = config.get("num_attention_heads"), config.get("num_key_value_heads")
    if heads and kv and heads % kv:
        raise bad("num_key_value_heads", f"a divisor of num_attention_heads ({heads})")
    hidden = config.get("hidden_size")
    if heads and hidden and not config.get("head_dim") and hidden % heads:
        raise bad("hidden_size", f"a multiple of num_attention_heads ({heads}) when head_dim is not given")
    head_dim = config.get("head_dim") or (hidden // heads if heads and hidden else None)
    if config.get("model_type") == "llama" and head_dim and head_dim % 2:  # rotary positions pair dimensions
        key = "head_dim" if config.get("head_dim") else "hidden_size"
        raise bad(key, f"such that each attention head has an even size (now {head_dim})")


def llama_shapes(config: dict, where: Path | str) -> Iterator[tuple[str, tuple[int, ...]]]:
    """The tensors (HF names, shapes) of a Llama with this config, in the model's order,
    as ``transformers.LlamaForCausalLM`` (and ``compact_llama``) name them. Lazy: a check
    that stops at the first mismatch never walks a huge layer count."""
    missing = [k for k in LLAMA_REQUIRED if not config.get(k)]
    if missing:
        raise SbtError(f"{where}: config.json has no {missing[0]}")
    c = config
    hidden, heads, inter, vocab = c["hidden_size"], c["num_attention_heads"], c["intermediate_size"], c["vocab_size"]
    kv = c.get("num_key_value_heads") or heads
    head_dim = c.get("head_dim") or hidden // heads
    attn_bias, mlp_bias = bool(c.get("attention_bias")), bool(c.get("mlp_bias"))
    yield "model.embed_tokens.weight", (vocab, hidden)
    for i in range(c["num_hidden_layers"]):
        pre = f"model.layers.{i}."
        for proj, rows in (("q", heads), ("k", kv), ("v", kv)):
            yield pre + f"self_attn.{proj}_proj.weight", (rows * head_dim, hidden)
            if attn_bias:
                yield pre + f"self_attn.{proj}_proj.bias", (rows * head_dim,)
        yield pre + "self_attn.o_proj.weight", (hidden, heads * head_dim)
        if attn_bias:
            yield pre + "self_attn.o_proj.bias", (hidden,)
        for proj, shape in (("gate", (inter, hidden)), ("up", (inter, hidden)), ("down", (hidden, inter))):
            yield pre + f"mlp.{proj}_proj.weight", shape
            if mlp_bias:
                yield pre + f"mlp.{proj}_proj.bias", shape[:1]
        yield pre + "input_layernorm.weight", (hidden,)
        yield pre + "post_attention_layernorm.weight", (hidden,)
    yield "model.norm.weight", (hidden,)
    yield "lm_head.weight", (vocab, hidden)


# --------------------------------------------------------------------------- weights


def safetensors_files(path: Path) -> list[Path]:
    """The safetensors files a model loads: those of ``model.safetensors.index.json``, else
    ``model.safetensors``, else every ``*.safetensors`` in the folder."""
    path = Path(path)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise SbtError(f"cannot read {index}: not a safetensors index ({shorten(str(exc), 80)})") from None
        if not all(isinstance(n, str) and "/" not in n and "\\" not in n for n in names):
            raise SbtError(f"cannot read {index}: its weight_map names files outside the model directory")
        return [path / n for n in names]
    single = path / "model.safetensors"
    return [single] if single.is_file() else sorted(path.glob("*.safetensors"))


def weight_shapes(path: Path) -> dict[str, tuple[tuple[int, ...], Path]]:
    """Every tensor's shape and file, from the safetensors headers only (no tensor data
    is read). ``SbtError`` naming the file when one is missing, truncated or not safetensors."""
    from safetensors import safe_open

    out: dict[str, tuple[tuple[int, ...], Path]] = {}
    for f in safetensors_files(path):
        try:
            with safe_open(str(f), framework="numpy") as fh:
                for name in fh.keys():
                    out[name] = (tuple(fh.get_slice(name).get_shape()), f)
        except Exception as exc:  # SafetensorError (corrupt, truncated), OSError (missing, unreadable)
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise SbtError(f"cannot load model weights {f}: not a valid safetensors file "
                           f"({shorten(reason, 120)})") from None
    return out


def _shape(shape: Iterable[int]) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"


_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)\.")


def check_weights(path: Path, expected: Iterable[tuple[str, tuple[int, ...]]], *, layers: int | None = None,
                  optional: Iterable[str] = (), extra_ok: bool = False) -> dict[str, tuple[tuple[int, ...], Path]]:
    """Check the tensors that config.json implies (``expected``: names and shapes, in
    order) against the weight files' headers before any model is built; the first
    difference is one line naming the tensor and both shapes. ``layers``: the config's
    layer count, compared first with the layers the files hold. Tensors in ``optional``
    may be absent (a tied output head); unexpected tensors are refused unless ``extra_ok``.
    Returns the shapes found."""
    found = weight_shapes(path)
    if not found:
        return found
    head = f"model {path}: config.json does not match the weights"
    if layers is not None:
        held = {int(m.group(1)) for n in found for m in [_LAYER.search(n)] if m}
        if held and layers != max(held) + 1:
            raise SbtError(f"{head}: num_hidden_layers is {layers:,} in config.json, the weights hold {max(held) + 1}")
    optional, seen = set(optional), set()
    for name, shape in expected:
        seen.add(name)
        got = found.get(name)
        if got is None:
            if name in optional:
                continue
            raise SbtError(f"{head}: config.json needs {name} {_shape(shape)}, which no weight file has")
        if tuple(got[0]) != tuple(shape):
            raise SbtError(f"{head}: {name} is {_shape(got[0])} in {got[1].name}, config.json makes it {_shape(shape)}")
    extra = [n for n in found if n not in seen]
    if extra and not extra_ok:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise SbtError(f"{head}: {found[extra[0]][1].name} holds {extra[0]} {_shape(found[extra[0]][0])}, "
                       f"which config.json does not describe{more}")
    return found


def check_llama_weights(path: Path, config: dict | None = None) -> dict[str, tuple[tuple[int, ...], Path]]:
    """``check_weights`` for a Llama directory (compact backend, GGUF export)."""
    config = read_config(path) if config is None else config
    tied = config.get("tie_word_embeddings", False)
    return check_weights(path, llama_shapes(config, Path(path) / "config.json"), layers=config.get("num_hidden_layers"),
                         optional={"lm_head.weight"} if tied else ())


def weight_files(path: Path) -> list[Path]:
    """The weight files of a model directory: safetensors only (never a pickle)."""
    return sorted(Path(path).glob("*.safetensors"))


def pickle_weight_files(path: Path) -> list[Path]:
    """Pickle checkpoints in a model directory (``pytorch_model*.bin``, ``*.pt``...): refused."""
    path = Path(path)
    return sorted(f for pattern in ("pytorch_model*.bin", "adapter_model.bin", "*.pt", "*.pth", "*.ckpt")
                  for f in path.glob(pattern))


def files_sha256(files) -> str:
    """sha256 over the bytes of ``files`` in order, as hex."""
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def model_sha256(path: str | os.PathLike) -> str:
    """sha256 over the weight files (sorted by name), as hex; identifies a checkpoint. An
    adapter directory's: over its weights, then its base model's (what is merged on load)."""
    path = Path(path)
    files = weight_files(path)
    if is_adapter_dir(path):
        base = Path(read_adapter_config(path)["base_model_name_or_path"])
        return hashlib.sha256((files_sha256(files) + model_sha256(base)).encode()).hexdigest()
    return files_sha256(files)


SEARCH_DEFAULTS_FILE = "search_defaults.json"
SEARCH_DEFAULT_KEYS = {"temperature": float, "top_k": int}  # sampling settings; budgets (n, b) stay explicit


def model_dir_of(name_or_path: str | os.PathLike) -> Path:
    """The directory a model name, directory or ``.gguf`` file stands for (not checked)."""
    candidates = _candidates(str(name_or_path))
    path = next((p for p in candidates if p.is_dir()), candidates[-1])
    return path.parent if path.is_file() else path


def training_cost(name_or_path: str | os.PathLike | None, n_numbers: int = 4) -> dict | None:
    """What it cost to train a model, every stage summed, from its directory's training.json
    (``training/finetune.py`` writes ``compute.total``, its base's cost included; an SFT
    run's own ``tokens`` / ``wall_s`` otherwise): ``{"objective", "base", "tokens",
    "generated_tokens", "wall_s", "hardware"}``, or None without a readable record."""
    try:
        t = json.loads((model_dir_of(name_or_path or default_model(n_numbers)) / "training.json").read_text())
        total = (t.get("compute") or {}).get("total") or {"tokens": t["tokens"], "wall_s": t["wall_s"]}
        objective = (t.get("objective") or {}).get("name") or f"sft {(t.get('config') or {}).get('data', '')}".strip()
        base = (t.get("base_model") or {}).get("path")
        return {"objective": objective, "base": Path(base).name if base else None, "tokens": int(total["tokens"]),
                "generated_tokens": int(total.get("generated_tokens") or 0), "wall_s": float(total["wall_s"]),
                "hardware": t.get("hardware")}
    except (OSError, ValueError, KeyError, TypeError, AttributeError, SbtError):
        return None


def search_defaults(name_or_path: str | os.PathLike | None, n_numbers: int = 4) -> dict:
    """The sampling settings a model recommends for search, e.g. ``{"temperature": 1.0}``.

    Read from ``search_defaults.json`` in the model directory (the model card says how
    they were chosen: on val, never on test); ``{}`` when the model has none. They sit
    between a method's own defaults and what the user passes. Other keys of the file
    (``chosen_on``, notes) are documentation.
    """
    path = model_dir_of(name_or_path or default_model(n_numbers)) / SEARCH_DEFAULTS_FILE
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text())
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        out = {k: cast(raw[k]) for k, cast in SEARCH_DEFAULT_KEYS.items() if k in raw}
    except (OSError, ValueError, TypeError) as exc:
        raise SbtError(f"{path} is unreadable ({exc})") from None
    if out.get("temperature", 0) < 0 or out.get("top_k", 0) < 0:
        raise SbtError(f"{path}: temperature and top_k must not be negative")
    return out
