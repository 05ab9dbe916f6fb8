"""The torch backend: any Hugging Face causal-LM directory.

Plain Llama directories (ours) run on ``compact_llama`` (same maths as transformers,
without its 3 s import); anything else loads with transformers ``AutoModelForCausalLM``
(``SBT_TORCH_IMPL=transformers`` forces that). Sampling is our own short loop over
``model.forward`` with a KV cache: distinct prompts are prefilled once (left-padded) and
decoded as a sampling tree (``decoding.sample_tree`` over ``_CacheRows``: one cache row per
distinct prefix, finished rows dropped once they are a quarter of the batch); the draws, in
sample order from one seeded ``torch.Generator`` per call, equal one cache row per sample.
Beam search is ``decoding.beam_search`` over the same
cache rows (the llama.cpp backend's beam). All log-probs are of the untempered distribution.

Bring your own model: any causal LM directory that transformers' ``AutoModelForCausalLM``
loads (GPT-2, Llama, Qwen2, Mistral, ... with their own tokenizers; safetensors only, never
a pickle, never remote code) runs here through transformers, on the same ``_CacheRows``
decoder over a transformers ``DynamicCache``; a LoRA adapter directory (``sbt train
--lora``) is merged into its base model on load (peft: the ``hf`` extra). Prompts start
with what the model's tokenizer puts in front of a text itself (``hf.special_prefix``: its
bos when it adds one, else nothing), as training did. Options
(``sbt_core.settings.BackendOptions``: flags, else ``SBT_*`` variables): threads
(``--threads``, else 1 for models under 50M parameters; each call sets them and restores
torch's count after; ``base.inference_threads``), dtype (float32 | bfloat16), device
(cpu | cuda | auto), torch_impl (auto | compact | transformers).
"""

from __future__ import annotations

import functools
import inspect
import os
from functools import cached_property
from pathlib import Path

from ..settings import BackendOptions, passive_openmp

passive_openmp()  # OMP_WAIT_POLICY=PASSIVE unless set, before torch loads OpenMP: no spinning on busy CPUs

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ..countdown import shorten  # noqa: E402
from ..errors import SbtError  # noqa: E402
from ..hf import HF_EXTRA, continuation_ids, special_prefix  # noqa: E402
from ..trace import BACKTRACK, GOAL  # noqa: E402
from .base import Completion, inference_threads  # noqa: E402
from .decoding import beam_search, sample_tree  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}  # BackendOptions.dtype (aliases normalised there)


COMPACT_AT = 4  # drop finished rows from the batch once they are a quarter of it (each drop copies the cache)


class _Threads:
    """Run a model call on ``n`` torch threads (None: as they are), then restore the count,
    so that a training loop in the same process keeps its own."""

    def __init__(self, n: int | None) -> None:
        self.n, self.saved = n, None

    def __enter__(self) -> None:
        if self.n and self.n != torch.get_num_threads():
            self.saved = torch.get_num_threads()
            torch.set_num_threads(self.n)

    def __exit__(self, *exc) -> None:
        if self.saved is not None:
            torch.set_num_threads(self.saved)
            self.saved = None


def _model_call(method):
    """A backend method that runs the model: inference mode, on the backend's threads."""
    @functools.wraps(method)
    def call(self, *args, **kwargs):
        with self._threads, torch.inference_mode():
            return method(self, *args, **kwargs)
    return call


GENERIC_TOKENIZERS = ("TokenizersBackend", "PreTrainedTokenizerFast")


def quiet_transformers() -> None:
    """No transformers progress bars or warnings: they would land in our logs and tables."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def load_tokenizer(path: Path, light: bool = False):
    """The model's tokenizer: a plain ``tokenizer.json`` one opens with ``tokenizers`` alone
    (``light``) or ``PreTrainedTokenizerFast``; anything else with ``AutoTokenizer``."""
    import json

    config = path / "tokenizer_config.json"
    if (path / "tokenizer.json").is_file() and config.is_file():
        if json.loads(config.read_text()).get("tokenizer_class") in GENERIC_TOKENIZERS:
            if light:
                from .light_tokenizer import LightTokenizer

                return LightTokenizer(path)
            from transformers import PreTrainedTokenizerFast

            return PreTrainedTokenizerFast.from_pretrained(path)
    quiet_transformers()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def load_model(path: Path, dtype: torch.dtype, impl: str = "auto"):
    """The model, its tokenizer and the implementation that runs it ("auto" when it is the
    one ``auto`` picks): ``compact_llama`` where it applies, else transformers."""
    if impl not in ("auto", "compact", "transformers"):
        raise SbtError(f"unknown torch_impl {impl!r}; choose auto, compact or transformers")
    from .compact_llama import CompactLlama, unsupported_reason

    reason = unsupported_reason(path)
    if impl != "transformers":
        if reason is None:
            return CompactLlama.from_dir(path, dtype), load_tokenizer(path, light=True), "auto"
        if impl == "compact":
            raise SbtError(f"cannot run {path} without transformers: {reason}")
    return load_hf_model(path, dtype), load_tokenizer(path), "auto" if reason is not None else impl


def load_hf_model(path: Path, dtype: torch.dtype):
    """A transformers causal LM from a model directory (its weights checked against its
    config first: ``check_hf_weights``), or a LoRA adapter directory merged into its base
    (``load_adapter_model``). Safetensors only; no remote code."""
    from ..models import is_adapter_dir

    quiet_transformers()
    if is_adapter_dir(Path(path)):
        return load_adapter_model(Path(path), dtype)
    from transformers import AutoModelForCausalLM

    check_causal_lm(path)
    check_hf_weights(path)
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, use_safetensors=True)


def check_causal_lm(path: Path) -> None:
    """One line unless config.json describes a model class transformers has a causal-LM
    head for (a BERT or T5 directory is not a base for sbt)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as exc:  # unknown model_type, malformed config
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SbtError(f"{path}: config.json is not a transformers model config ({shorten(first, 120)})") from None
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    causal = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    named = [a for a in (getattr(config, "architectures", None) or []) if isinstance(a, str)]
    if (type(config) not in AutoModelForCausalLM._model_mapping or getattr(config, "is_encoder_decoder", False)
            or (named and not causal.intersection(named))):
        what = f"{', '.join(named)}, " if named else ""
        raise SbtError(f"{path} is not a causal language model ({what}model_type {config.model_type!r}); "
                       "sbt needs a decoder-only LM (AutoModelForCausalLM)")


def load_adapter_model(path: Path, dtype: torch.dtype):
    """A LoRA adapter directory (``sbt train --lora``) merged into its base model: the base
    (a local directory named in adapter_config.json, itself possibly an adapter) loaded,
    its embeddings grown to the adapter's tokenizer (the added ``<backtrack>``: the adapter
    holds its trained rows), the adapter applied and merged (peft)."""
    from ..models import read_adapter_config

    config = read_adapter_config(path)
    try:
        from peft import PeftModel
    except ImportError:
        raise SbtError(f"{path} is a LoRA adapter: loading it needs peft ({HF_EXTRA})") from None
    model = load_hf_model(Path(config["base_model_name_or_path"]), dtype)
    size = len(load_tokenizer(path))
    if model.get_input_embeddings().num_embeddings < size:
        resize_embeddings(model, size)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft's notes on layer types (GPT-2's Conv1D) and versions
        return PeftModel.from_pretrained(model, str(path), is_trainable=False).merge_and_unload()


def resize_embeddings(model, size: int) -> None:
    """Grow (or shrink) the model's token embeddings to ``size`` rows; each new row of the
    input embeddings and of an untied output head (and its bias) is the mean of the existing
    rows (deterministic: no random draw), so a new token starts as an average token."""
    old = model.get_input_embeddings().num_embeddings
    model.resize_token_embeddings(size, mean_resizing=False)
    if size <= old:
        return
    with torch.no_grad():
        seen = set()
        for module in (model.get_input_embeddings(), model.get_output_embeddings()):
            if module is None:
                continue
            for tensor in (module.weight, getattr(module, "bias", None)):
                if tensor is None or id(tensor) in seen or tensor.shape[0] != size:
                    continue
                seen.add(id(tensor))
                tensor[old:] = tensor[:old].mean(0, dtype=torch.float32).to(tensor.dtype)


def check_hf_weights(path: Path) -> None:
    """Before transformers builds (and allocates) the model: config.json's values are sane
    and the tensors of the model it describes, built on the ``meta`` device (no memory),
    match the weight files' headers; else one line naming the first tensor that differs.
    (Extra tensors in the files are left to transformers, which ignores them.)"""
    from transformers import AutoConfig, AutoModelForCausalLM

    from ..models import check_weights, read_config, weight_shapes

    config = read_config(path)
    found = weight_shapes(path)  # a corrupt file: one line naming it
    if not found:  # no safetensors (a .bin checkpoint): transformers checks it itself
        return
    layers = config.get("num_hidden_layers")
    check_weights(path, [], layers=layers if isinstance(layers, int) else None, extra_ok=True)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
    first: dict[int, str] = {}
    aliases = set()  # a tied output head: the same parameter under a second name
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            aliases.add(name)
        first.setdefault(id(p), name)
    check_weights(path, [(n, tuple(t.shape)) for n, t in model.state_dict().items()], optional=aliases,
                  extra_ok=True)


def _pick_device(device: str) -> torch.device:
    """``BackendOptions.device`` as a torch device ("auto": cuda when there is one); one
    line when the device is not here."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    kind = device.split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        raise SbtError(f"device {device!r}: torch sees no CUDA device here; use --device cpu (or auto)")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise SbtError(f"device {device!r}: torch sees no MPS device here; use --device cpu (or auto)")
    return torch.device(device)


class TorchBackend:
    """A causal LM and its tokenizer, behind the ``Backend`` protocol.

    ``options``: a ``BackendOptions`` (None: from the environment); ``dtype`` / ``device``
    override it. ``self.options`` are the options as resolved (device "auto" -> the device
    used), the ones a stored run records."""

    backend_name = "torch"

    def __init__(self, path: str | os.PathLike, options: BackendOptions | None = None, *,
                 dtype: str | None = None, device: str | None = None) -> None:
        self.path = Path(path)
        options = (options or BackendOptions.from_env()).override(dtype=dtype, device=device)
        options = options.override(device=str(_pick_device(options.device)))  # (before the weights load)
        self._dtype = DTYPES[options.dtype]
        try:
            model, tokenizer, impl = load_model(self.path, self._dtype, options.torch_impl)
        except SbtError:
            raise
        except Exception as exc:  # corrupt or incompatible checkpoint: one clear line
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise SbtError(f"cannot load model from {self.path}: {type(exc).__name__}: {shorten(first, 200)}") from None
        self._setup(model, tokenizer, self.path.name, options.override(torch_impl=impl))

    @classmethod
    def from_model(cls, model, tokenizer, name: str = "in-memory", device: str | None = None,
                   options: BackendOptions | None = None) -> "TorchBackend":
        """Wrap an already loaded model and tokenizer (tests, training loops)."""
        self = cls.__new__(cls)
        self.path = None
        weights = next((k for k, v in DTYPES.items() if v == next(model.parameters()).dtype), None)
        self._setup(model, tokenizer, name, (options or BackendOptions.from_env()).override(device=device, dtype=weights))
        self.__dict__["model_sha256"] = ""
        return self

    def _setup(self, model, tokenizer, name: str, options: BackendOptions) -> None:
        device = _pick_device(options.device)
        self.options = options.override(device=str(device))
        self.model = model.to(device).eval()
        self.threads = inference_threads(sum(p.numel() for p in model.parameters()), options.threads)  # None: torch's
        self._threads = _Threads(self.threads)
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # (peft: training's
        # evaluation of a LoRA model; its forward passes these through to the model it wraps)
        accepted = inspect.signature(inner.forward).parameters
        self._cache_kw = "cache" if "cache" in accepted else "past_key_values"
        self._keep_last = {"logits_to_keep": 1} if "logits_to_keep" in accepted else {}
        self.tokenizer = tokenizer
        self.model_name = name
        self.device = device
        tok = tokenizer
        self.eos_id = tok.eos_token_id
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else self.eos_id
        self.bos_ids = special_prefix(tok)  # the tokenizer's own (training's): its bos when it adds one
        unk = tok.unk_token_id
        self.marker_ids = {i for i in (tok.convert_tokens_to_ids(GOAL), tok.convert_tokens_to_ids(BACKTRACK))
                           if i is not None and i != unk}

    def _new_cache(self, capacity: int = 0):
        if hasattr(self.model, "new_cache"):
            return self.model.new_cache(capacity)
        from transformers import DynamicCache

        return DynamicCache(config=self.model.config)  # (the config: sliding-window layers, e.g. Mistral)

    @cached_property
    def model_sha256(self) -> str:
        from ..models import model_sha256

        return model_sha256(self.path) if self.path else ""

    @cached_property
    def newline_ids(self) -> set[int]:
        """Tokens whose text contains a newline (ends a line for ``stop_at_line``)."""
        return {i for i in range(len(self.tokenizer)) if "\n" in self.tokenizer.decode([i])}

    # -- helpers ----------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _prompt_ids(self, prompt: str) -> list[int]:
        return self.bos_ids + self.encode(prompt)

    def _left_pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r):] = 1
        return ids.to(self.device), mask.to(self.device)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode([i for i in ids if i != self.eos_id], skip_special_tokens=False)

    def _step(self, ids, mask, pos, cache) -> torch.Tensor:
        """One forward pass through the KV cache; the next-token logits of every row."""
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                         **{self._cache_kw: cache}, **self._keep_last)
        return out.logits[:, -1, :]

    # -- Backend protocol ----------------------------------------------------------------
    @_model_call
    def sample(self, prompts: list[str], n: int, temperature: float, max_new_tokens: int,
               seed: int, top_k: int | None = None, stop_at_line: bool = False) -> list[list[Completion]]:
        if not prompts or n <= 0:
            return [[] for _ in prompts]
        ids = [self._prompt_ids(p) for p in prompts]
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if limit:  # never run past the model's positions (hard length limit)
            max_new_tokens = max(0, min(max_new_tokens, limit - max(len(i) for i in ids)))
        rows = _CacheRows(self, max_new_tokens, temperature, top_k, seed)
        return sample_tree(rows, ids, n, max_new_tokens, temperature <= 0, self._decode, self.eos_id,
                           self.marker_ids, self.newline_ids if stop_at_line else set())

    @_model_call
    def beam(self, prompt: str, width: int, max_new_tokens: int) -> list[Completion]:
        """``decoding.beam_search`` over the KV cache (a beam's children fork its row)."""
        head = self._prompt_ids(prompt)
        limit = getattr(self.model.config, "max_position_embeddings", None)
        max_new = max(0, min(max_new_tokens, limit - len(head))) if limit else max_new_tokens
        return beam_search(_CacheRows(self, max_new, 0.0, None, 0), head, max(1, int(width)), max_new,
                           self._decode, self.eos_id, self.marker_ids)

    def score(self, prompt: str, continuation: str) -> list[float]:
        return self._token_logprobs(prompt, continuation_ids(self.encode, prompt, continuation))

    @_model_call
    def _token_logprobs(self, prompt: str, cont: list[int]) -> list[float]:
        if not cont:
            return []
        head = self._prompt_ids(prompt)
        ids = torch.tensor([head + cont], device=self.device)
        logits = self.model(input_ids=ids).logits[0, len(head) - 1:-1].float()
        logp = torch.log_softmax(logits, -1)
        return logp.gather(-1, torch.tensor(cont, device=self.device)[:, None]).squeeze(-1).tolist()


class _CacheRows:
    """One ``sample`` call's rows of the KV cache (``decoding.Decoder``): distinct prompts
    prefilled once, left-padded. A step that neither splits a row nor leaves many finished
    keeps the cache's layout (finished rows idle, fed padding, until they are a quarter of
    the batch: each new layout copies the cache); else the cache is re-laid as one row per
    new row. ``_phys[r]``: the cache row of row r. Draws: one seeded ``torch.Generator``,
    every live sample in sample order."""

    draw_order = "sample"

    def __init__(self, backend: TorchBackend, max_new: int, temperature: float, top_k: int | None, seed: int) -> None:
        self.b, self.max_new, self.temperature, self.top_k = backend, max_new, temperature, top_k
        self.gen = torch.Generator(device=backend.device).manual_seed(int(seed))

    def prefill(self, prompts: list[list[int]]) -> torch.Tensor:
        b = self.b
        ids, self.mask = b._left_pad(prompts)
        pos = (self.mask.cumsum(-1) - 1).clamp(min=0)
        self.cache = b._new_cache(ids.shape[1] + self.max_new)
        logits = b._step(ids, self.mask, pos, self.cache)
        self.next_pos = pos[:, -1:] + 1
        self._phys = list(range(len(prompts)))
        self.width = len(prompts)  # rows of the cache
        return logits

    def step(self, parents: list[int], tokens: list[int]) -> torch.Tensor:
        b = self.b
        phys = [self._phys[r] for r in parents]
        if len(set(phys)) == len(phys) and (self.width - len(phys)) * COMPACT_AT < self.width:
            feed = torch.full((self.width,), b.pad_id, dtype=torch.long)
            feed[phys] = torch.tensor(tokens)
            self._phys = phys
        else:
            idx = torch.tensor(phys, device=b.device)
            self.cache.batch_select_indices(idx)
            self.mask, self.next_pos, self.width = self.mask[idx], self.next_pos[idx], len(phys)
            feed = torch.tensor(tokens)
            self._phys = list(range(len(phys)))
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        logits = b._step(feed.to(b.device)[:, None], self.mask, self.next_pos, self.cache)
        self.next_pos = self.next_pos + 1
        return logits

    def draw(self, logits: torch.Tensor, row_of: list[int]) -> tuple[list[int], list[float]]:
        """Each draw's token from its row's distribution (argmax at temperature 0, top-k)."""
        logits = logits[torch.tensor([self._phys[r] for r in row_of])].float()
        logp = torch.log_softmax(logits, dim=-1)
        if self.temperature <= 0:
            nxt = logits.argmax(-1)
        else:
            scaled = logits / self.temperature
            if self.top_k and self.top_k < scaled.shape[-1]:
                kth = torch.topk(scaled, self.top_k, dim=-1).values[:, -1:]
                scaled = scaled.masked_fill(scaled < kth, float("-inf"))
            nxt = torch.multinomial(torch.softmax(scaled, -1), 1, generator=self.gen).squeeze(-1)
        return nxt.tolist(), logp.gather(-1, nxt[:, None]).squeeze(-1).tolist()

    def release(self) -> None:
        self.cache = self.mask = self.next_pos = None

    def logprobs(self, logits: torch.Tensor) -> np.ndarray:
        """Log-softmax of every row (in row order), as float32 numpy (``beam_search``)."""
        return torch.log_softmax(logits[torch.tensor(self._phys)].float(), -1).cpu().numpy()
