"""The llama.cpp backend: a GGUF (``sbt export gguf``) run through llama-cpp-python's low-level API.

llama.cpp never tokenizes: our tokenizer (``tokenizer.json`` beside the GGUF, or the copy
embedded in it) turns text into ids and back, and llama.cpp gets ids and returns raw
logits. Sampling, top-k, temperature and the log-softmax are numpy, on the raw logits, with
the torch backend's rules: log-probs of the untempered distribution; stop at the end
token, right after a ``Goal Reached!`` / ``<backtrack>`` token, after a line with
``stop_at_line``, or after ``max_new_tokens`` (never past the model's context length); one
seeded ``numpy.random.Generator`` per call, so the same arguments give the same samples.

KV cache (one unified cache, several sequences):

- *prompt slots* (sequences ``0 .. P-1``) keep the KV of recent prompts between calls. A
  new prompt goes into the slot sharing its longest token prefix: the slot is truncated to
  that prefix (``llama_memory_seq_rm``; this is the cheap roll-back of a self-backtracking
  state to its parent) or, when that slot is busy, the prefix is shared into another slot
  (``llama_memory_seq_cp``, no copy in a unified cache), and only the rest is decoded.
- *sample sequences* (``P .. P+S-1``) share their prompt's cells and decode one token per
  step together in one batch: the rows of the sampling tree (``decoding.sample_tree``;
  ``_SeqRows``), a forked row sharing its parent's cells. Requests with more than ``S``
  samples, or more than ``P`` distinct prompts, run in groups.

Options (``sbt_core.settings.BackendOptions``; flags, else ``SBT_*`` variables): threads
(``--threads``, else 1 for small models), quant (``--quant``: which GGUF), seqs (S, default
32), slots (P, default 16), flash_attn (default: on, off for an f32 GGUF, which stays the
exact reference), kv_unified (off: one KV stream per sequence; slower here);
``SBT_LLAMA_VERBOSE=1`` shows llama.cpp's log. No torch import on this path.
"""

from __future__ import annotations

import ctypes
import os
from collections import deque
from dataclasses import replace
from functools import cached_property
from pathlib import Path

import numpy as np

from ..countdown import shorten
from ..errors import SbtError
from ..limits import LLAMA_MAX_CONTEXT
from ..settings import BackendOptions, llama_verbose
from ..trace import BACKTRACK, GOAL
from .base import Completion, inference_threads
from .decoding import beam_search, sample_tree
from .light_tokenizer import special_ids

QUANT_PREFERENCE = ("q8_0", "f16", "f32", "q4_k_m", "q4_0")
INSTALL_HINT = ("pip install 'sbt[llama]' (build it with CMAKE_ARGS=\"-DGGML_NATIVE=OFF\" "
                "pip install --no-cache-dir llama-cpp-python; see docs/llama.md)")

_llama = None
_log_lines: deque[str] = deque(maxlen=20)
_log_cb = None


def import_llama_cpp(needed_for: str = "the llama backend"):
    """The ``llama_cpp`` module, initialised once, with llama.cpp's log captured (not printed)."""
    global _llama, _log_cb
    if _llama is not None:
        return _llama
    try:
        import llama_cpp
    except ImportError as exc:
        raise SbtError(f"{needed_for} needs llama-cpp-python, which is not installed ({exc}); {INSTALL_HINT}") from None
    except OSError as exc:  # the shared library did not load
        raise SbtError(f"{needed_for}: llama-cpp-python is installed but its library does not load ({exc})") from None
    verbose = llama_verbose()

    @llama_cpp.llama_log_callback
    def _log(level, text, user_data):  # keep the last lines for error messages
        line = text.decode("utf-8", "replace") if text else ""
        if line.strip():
            _log_lines.append(line.strip())
        if verbose:
            import sys

            print(line, end="", file=sys.stderr, flush=True)

    missing = [f for f in ("llama_get_memory", "llama_memory_seq_rm", "llama_memory_seq_cp", "llama_model_get_vocab")
               if not hasattr(llama_cpp, f)]
    if missing:
        raise SbtError(f"{needed_for} needs llama-cpp-python >= 0.3.36 (this one, {getattr(llama_cpp, '__version__', '?')}, "
                       f"lacks {missing[0]}); {INSTALL_HINT}")
    _log_cb = _log  # a reference, or ctypes frees the callback
    llama_cpp.llama_log_set(_log_cb, ctypes.c_void_p(0))
    llama_cpp.llama_backend_init()
    _llama = llama_cpp
    return llama_cpp


def _last_error() -> str:
    for line in reversed(_log_lines):
        if "error" in line.lower() or "failed" in line.lower():
            return shorten(line, 200)
    return shorten(_log_lines[-1], 200) if _log_lines else "no details"


# -- finding the GGUF and its tokenizer ----------------------------------------------------
def _quant_of(path: Path) -> str:
    stem = path.stem.lower()
    return next((q for q in QUANT_PREFERENCE if stem.endswith(q)), stem)


def find_gguf(path: str | os.PathLike, quant: str | None = None) -> Path:
    """The GGUF to load for ``path``: a ``.gguf`` file, or one in a model directory
    (``quant``, i.e. ``--quant`` / ``SBT_LLAMA_QUANT``, picks one; default q8_0, then f16,
    f32, q4_k_m, q4_0)."""
    p = Path(path).expanduser()
    if p.is_file():
        return p
    if not p.is_dir():
        raise SbtError(f"model {str(path)!r} not found")
    files = sorted(p.glob("*.gguf"))
    if not files:
        raise SbtError(f"the llama backend needs a GGUF and {p} has none; "
                       f"make one with `sbt export gguf {p} --quant q8_0`")
    want = quant
    if want:
        hit = [f for f in files if _quant_of(f) == want.lower()]
        if not hit:
            raise SbtError(f"no {want} GGUF in {p} (have: {', '.join(f.name for f in files)}); "
                           f"make one with `sbt export gguf {p} --quant {want}`")
        return hit[0]
    for q in QUANT_PREFERENCE:
        hit = [f for f in files if _quant_of(f) == q]
        if hit:
            return hit[0]
    return files[0]


def resolve_gguf_model(name_or_path: str | os.PathLike) -> Path:
    """A model name (in models/), a directory or a .gguf file -> the path to give LlamaBackend."""
    from ..models import models_dir

    text = str(name_or_path)
    for cand in ([models_dir() / text] if os.sep not in text and "/" not in text else []) + [Path(text).expanduser()]:
        if cand.exists():
            return cand.resolve()
    raise SbtError(f"model {text!r} not found (looked in {models_dir()}); pass --model DIR or a .gguf file")


class LlamaBackend:
    """A GGUF model behind the ``Backend`` protocol (see the module docstring).

    ``options``: a ``BackendOptions`` (None: from the environment); the keyword arguments
    override it. ``self.options`` are the options as resolved (flash_attn None when it is
    the default for this GGUF), the ones a stored run records."""

    backend_name = "llama"

    def __init__(self, path: str | os.PathLike, options: BackendOptions | None = None, *, quant: str | None = None,
                 threads: int | None = None, seqs: int | None = None, slots: int | None = None) -> None:
        options = (options or BackendOptions.from_env()).override(quant=quant, threads=threads, seqs=seqs, slots=slots)
        ll = import_llama_cpp()
        self._ll = ll
        self.gguf_path = find_gguf(path, options.quant).resolve()
        self.quant = _quant_of(self.gguf_path)
        folder = self.gguf_path.parent
        given = Path(path).expanduser()
        self.model_name = given.name if given.is_dir() else folder.name
        self._check_magic()
        self._model = self._ctx = self._batch = None
        mparams = ll.llama_model_default_params()
        mparams.n_gpu_layers = 0
        _log_lines.clear()
        model = ll.llama_model_load_from_file(str(self.gguf_path).encode(), mparams)
        if not model:
            raise SbtError(f"cannot load GGUF {self.gguf_path}: llama.cpp: {_last_error()}")
        self._model = model
        self.quant = self._meta("sbt.quant") or self.quant  # what the export wrote, if it was ours
        self.vocab_size = ll.llama_vocab_n_tokens(ll.llama_model_get_vocab(model))
        self.n_ctx_train = ll.llama_model_n_ctx_train(model)
        # the context of one sequence: the model's, at most LLAMA_MAX_CONTEXT (a GGUF that
        # claims a huge context must not allocate a KV cache for it: a search needs a prompt
        # and at most SEARCH_MAXIMUM["max_new_tokens"] new tokens)
        self.n_ctx = max(1, min(self.n_ctx_train, LLAMA_MAX_CONTEXT))
        self._load_tokenizer(folder)
        # context: prompt slots + sample sequences, each bounded by the model's context length
        self.S, self.P = options.seqs, options.slots  # (checked by BackendOptions: S + P <= 256)
        cparams = ll.llama_context_default_params()
        cparams.n_ctx = (self.S + self.P) * self.n_ctx
        cparams.n_batch = cparams.n_ubatch = max(512, self.S)
        cparams.n_seq_max = self.S + self.P
        fields = {f[0] for f in type(cparams)._fields_}
        # one KV cache for all sequences: prompt cells are shared, not copied (faster here
        # than one stream per sequence; SBT_LLAMA_KV_UNIFIED=0 switches to streams)
        self.unified = options.kv_unified
        if "kv_unified" in fields:
            cparams.kv_unified = self.unified
        flash = None
        if "flash_attn_type" in fields:
            # flash attention skips the masked cells of the other sequences (faster: docs/llama.md)
            # but rounds through f16: off for an f32 GGUF, the exact reference
            default = self.quant != "f32"
            flash = default if options.flash_attn is None else options.flash_attn
            cparams.flash_attn_type = int(flash)
            flash = None if flash == default else flash
        self.options = replace(options, flash_attn=flash)
        cparams.no_perf = True
        if self.quant == "f32":  # f32 KV cache for an f32 model: parity with torch
            cparams.type_k = cparams.type_v = 0
        n_threads = self._threads(options.threads)
        cparams.n_threads = cparams.n_threads_batch = n_threads
        ctx = ll.llama_init_from_model(model, cparams)
        if not ctx:
            raise SbtError(f"cannot create a llama.cpp context for {self.gguf_path.name}: {_last_error()}")
        self._ctx = ctx
        self._mem = ll.llama_get_memory(ctx)
        self._n_batch = cparams.n_batch
        self._batch = ll.llama_batch_init(self._n_batch, 0, 1)
        self._b_token = np.ctypeslib.as_array(self._batch.token, shape=(self._n_batch,))
        self._b_pos = np.ctypeslib.as_array(self._batch.pos, shape=(self._n_batch,))
        self._b_nseq = np.ctypeslib.as_array(self._batch.n_seq_id, shape=(self._n_batch,))
        self._b_logits = np.ctypeslib.as_array(self._batch.logits, shape=(self._n_batch,))
        self._b_seq = [self._batch.seq_id[i] for i in range(self._n_batch)]
        self._slots: list[list[int] | None] = [None] * self.P  # tokens held by each prompt slot
        self._slot_age = [0] * self.P
        self._clock = 0
        self.n_decoded = 0  # tokens run through the model (a measure of the cache's worth)

    # -- setup ----------------------------------------------------------------------------
    def _check_magic(self) -> None:
        try:
            with open(self.gguf_path, "rb") as fh:
                magic = fh.read(4)
        except OSError as exc:
            raise SbtError(f"cannot read {self.gguf_path}: {exc}") from None
        if magic != b"GGUF":
            raise SbtError(f"{self.gguf_path} is not a GGUF file")

    def _threads(self, threads: int | None) -> int:
        n = inference_threads(self._ll.llama_model_n_params(self._model), threads)
        return n or max(1, (os.cpu_count() or 2) // 2)

    def _meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(1 << 20)
        n = self._ll.llama_model_meta_val_str(self._model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8") if n >= 0 else None

    def _load_tokenizer(self, folder: Path) -> None:
        from tokenizers import Tokenizer

        try:
            if (folder / "tokenizer.json").is_file():
                tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
            else:
                text = self._meta("sbt.tokenizer")
                if not text:
                    raise SbtError(f"no tokenizer for {self.gguf_path.name}: put the model's tokenizer.json beside it")
                tok = Tokenizer.from_str(text)
        except SbtError:
            raise
        except Exception as exc:
            raise SbtError(f"cannot read the tokenizer for {self.gguf_path.name}: {exc}") from None
        meta = {}
        for key in ("bos", "eos", "pad"):
            v = self._meta(f"sbt.{key}_token_id")
            if v is not None and v.lstrip("-").isdigit():
                meta[key] = int(v)
        ids = special_ids(tok, folder, meta)
        if tok.get_vocab_size(with_added_tokens=True) > self.vocab_size:
            raise SbtError(f"tokenizer has {tok.get_vocab_size()} tokens but {self.gguf_path.name} only "
                           f"{self.vocab_size}: wrong tokenizer for this model")
        self.tokenizer = tok
        self.eos_id = ids["eos"]
        self.bos_ids = [ids["bos"]] if ids["bos"] is not None else []
        unk = ids["unk"]
        self.marker_ids = {i for i in (tok.token_to_id(GOAL), tok.token_to_id(BACKTRACK)) if i is not None and i != unk}

    @cached_property
    def model_sha256(self) -> str:
        """sha256 of the GGUF file (each quantization of a model is its own checkpoint)."""
        from ..models import files_sha256

        return files_sha256([self.gguf_path])

    @cached_property
    def newline_ids(self) -> set[int]:
        n = self.tokenizer.get_vocab_size(with_added_tokens=True)
        return {i for i in range(n) if "\n" in self.tokenizer.decode([i], skip_special_tokens=False)}

    def close(self) -> None:
        ll = self._ll
        if getattr(self, "_batch", None) is not None:
            ll.llama_batch_free(self._batch)
            self._batch = None
        if getattr(self, "_ctx", None):
            ll.llama_free(self._ctx)
            self._ctx = None
        if getattr(self, "_model", None):
            ll.llama_model_free(self._model)
            self._model = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    # -- helpers ---------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def _prompt_ids(self, prompt: str) -> list[int]:
        return self.bos_ids + self.encode(prompt)

    def _decode_text(self, ids: list[int]) -> str:
        return self.tokenizer.decode([i for i in ids if i != self.eos_id], skip_special_tokens=False)

    def _decode(self, rows: list[tuple[int, int, int, bool]]) -> np.ndarray:
        """One llama_decode of (token, pos, seq, want_logits) rows (<= n_batch); the logits
        of the rows that asked for them, in order."""
        n = len(rows)
        for i, (tok, pos, seq, want) in enumerate(rows):
            self._b_token[i] = tok
            self._b_pos[i] = pos
            self._b_nseq[i] = 1
            self._b_seq[i][0] = seq
            self._b_logits[i] = want
        self._batch.n_tokens = n
        self.n_decoded += n
        rc = self._ll.llama_decode(self._ctx, self._batch)
        if rc != 0:
            raise SbtError(f"llama.cpp decode failed (code {rc}): {_last_error()}")
        n_out = sum(1 for r in rows if r[3])
        if not n_out:
            return np.empty((0, self.vocab_size), dtype=np.float32)
        ptr = self._ll.llama_get_logits(self._ctx)
        return np.ctypeslib.as_array(ptr, shape=(n_out, self.vocab_size)).copy()

    def _decode_all(self, rows: list[tuple[int, int, int, bool]]) -> np.ndarray:
        """``_decode`` in chunks of n_batch."""
        outs = [self._decode(rows[i:i + self._n_batch]) for i in range(0, len(rows), self._n_batch)]
        return np.concatenate(outs) if outs else np.empty((0, self.vocab_size), dtype=np.float32)

    def _seq_rm(self, seq: int, p0: int = -1, p1: int = -1) -> None:
        self._ll.llama_memory_seq_rm(self._mem, seq, p0, p1)

    @staticmethod
    def _lcp(a: list[int], b: list[int]) -> int:
        n = min(len(a), len(b))
        i = 0
        while i < n and a[i] == b[i]:
            i += 1
        return i

    def _place(self, prompts: list[list[int]], logits_from: list[int]) -> tuple[list[int], list[np.ndarray]]:
        """Put each token list into a prompt slot, reusing the longest cached prefix.

        ``logits_from[k]``: the first position whose logits are wanted for prompt k (the
        logits predict the token after it); positions from there on are recomputed. Returns
        the slot of each prompt and its logits rows (positions logits_from[k] .. end).
        """
        assert len(prompts) <= self.P
        for ids in prompts:
            if len(ids) > self.n_ctx:
                raise SbtError(f"input of {len(ids)} tokens is longer than the model's context ({self.n_ctx})")
        self._clock += 1
        pinned: dict[int, int] = {}  # slots placed in this call -> tokens whose cells exist now
        plan = []  # (slot, keep)
        for ids, first in zip(prompts, logits_from):
            best, best_len = -1, 0
            for s, held in enumerate(self._slots):
                if held is not None:
                    L = min(self._lcp(held, ids), pinned.get(s, len(held)))
                    if L > best_len:
                        best, best_len = s, L
            keep = min(best_len, first)
            if best >= 0 and best not in pinned and keep > 0:
                dst = best
                self._seq_rm(dst, keep, -1)  # roll back to the shared prefix
            else:
                free = [s for s in range(self.P) if s not in pinned]
                dst = min(free, key=lambda s: (self._slots[s] is not None, self._slot_age[s]))
                self._seq_rm(dst)
                if keep > 0:  # the shared prefix: the whole sequence, then cut (a partial copy
                    # is refused across streams)
                    self._ll.llama_memory_seq_cp(self._mem, best, dst, -1, -1)
                    self._seq_rm(dst, keep, -1)
            pinned[dst] = keep
            self._slots[dst] = list(ids)
            self._slot_age[dst] = self._clock
            plan.append((dst, keep))
        rows, spans, n_out = [], [], 0
        for (dst, keep), ids, first in zip(plan, prompts, logits_from):
            spans.append((n_out, len(ids) - first))
            for p in range(keep, len(ids)):
                rows.append((ids[p], p, dst, p >= first))
                n_out += p >= first
        try:
            logits = self._decode_all(rows)
        except BaseException:
            self._reset()
            raise
        return [d for d, _ in plan], [logits[a:a + n] for a, n in spans]

    def _reset(self) -> None:
        """Forget every sequence (after an error the cache state is unknown)."""
        self._ll.llama_memory_clear(self._mem, False)
        self._slots = [None] * self.P

    @staticmethod
    def _log_softmax(x: np.ndarray) -> np.ndarray:
        m = x.max(axis=-1, keepdims=True)
        z = x - m
        return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))

    # -- Backend protocol ----------------------------------------------------------------------
    def sample(self, prompts: list[str], n: int, temperature: float, max_new_tokens: int,
               seed: int, top_k: int | None = None, stop_at_line: bool = False) -> list[list[Completion]]:
        if not prompts or n <= 0:
            return [[] for _ in prompts]
        ids = [self._prompt_ids(p) for p in prompts]
        max_new = max(0, min(max_new_tokens, self.n_ctx - max(len(i) for i in ids)))
        rows = _SeqRows(self, temperature, top_k, np.random.default_rng(int(seed) & 0xFFFFFFFFFFFFFFFF))
        try:
            return sample_tree(rows, ids, n, max_new, temperature <= 0, self._decode_text, self.eos_id,
                               self.marker_ids, self.newline_ids if stop_at_line else set(),
                               max_samples=self.S, max_prompts=self.P)
        except BaseException:
            self._reset()
            raise

    def score(self, prompt: str, continuation: str) -> list[float]:
        return self._token_logprobs(prompt, self.encode(continuation))

    def position_logits(self, prompt: str, continuation_ids: list[int]) -> np.ndarray:
        """Raw logits ``[len(continuation_ids), vocab]``: row j predicts continuation token j."""
        if not continuation_ids:
            return np.empty((0, self.vocab_size), dtype=np.float32)
        head = self._prompt_ids(prompt)
        _, (logits,) = self._place([head + list(continuation_ids)], [len(head) - 1])
        return logits[:len(continuation_ids)]

    def _token_logprobs(self, prompt: str, cont: list[int]) -> list[float]:
        if not cont:
            return []
        logp = self._log_softmax(self.position_logits(prompt, cont))
        return [float(logp[j, t]) for j, t in enumerate(cont)]

    def beam(self, prompt: str, width: int, max_new_tokens: int) -> list[Completion]:
        """``decoding.beam_search`` over llama.cpp sequences (children share their parent's
        cells), at most ``S // 2`` beams."""
        head = self._prompt_ids(prompt)
        max_new = max(0, min(max_new_tokens, self.n_ctx - len(head)))
        try:
            return beam_search(_SeqRows(self, 0.0, None, None), head, max(1, min(int(width), self.S // 2)), max_new,
                               self._decode_text, self.eos_id, self.marker_ids)
        except BaseException:
            self._reset()
            raise


class _SeqRows:
    """One ``sample`` call's rows as llama.cpp sequences (``decoding.Decoder``): a group's
    distinct prompts are placed in prompt slots (``_place``: the longest cached prefix is
    reused), each row is a sample sequence (``P .. P+S-1``) sharing its prompt's cells; a
    forked row is a new sequence sharing its parent's cells (``llama_memory_seq_cp``, no
    copy in a unified cache); a dropped row's sequence is removed at once. Draws: one seeded
    ``numpy.random.Generator``, row by row (inverse CDF of the tempered, top-k distribution)."""

    draw_order = "row"

    def __init__(self, backend: LlamaBackend, temperature: float, top_k: int | None, rng: np.random.Generator) -> None:
        self.b, self.temperature, self.top_k, self.rng = backend, temperature, top_k, rng
        self.rows: list[tuple[int, int]] = []  # (sequence, position of its next token)

    def prefill(self, prompts: list[list[int]]) -> np.ndarray:
        b = self.b
        slots, plogits = b._place(prompts, [len(ids) - 1 for ids in prompts])
        self.free = [b.P + j for j in range(b.S)][::-1]
        self.rows = []
        for ids, slot in zip(prompts, slots):
            seq = self.free.pop()
            b._seq_rm(seq)
            b._ll.llama_memory_seq_cp(b._mem, slot, seq, -1, -1)
            self.rows.append((seq, len(ids)))
        return np.stack([lg[-1] for lg in plogits]).astype(np.float32)

    def step(self, parents: list[int], tokens: list[int]) -> np.ndarray:
        b = self.b
        new, batch, kept = [], [], set()
        for r, tok in zip(parents, tokens):
            seq, pos = self.rows[r]
            if r in kept:  # another branch of this row: a new sequence sharing its cells
                child = self.free.pop()
                b._seq_rm(child)
                b._ll.llama_memory_seq_cp(b._mem, seq, child, -1, -1)
            else:
                kept.add(r)
                child = seq
            new.append((child, pos + 1))
            batch.append((tok, pos, child, True))
        self._drop(kept)
        self.rows = new
        return b._decode(batch)

    def _drop(self, kept: set[int]) -> None:
        for r, (seq, _) in enumerate(self.rows):
            if r not in kept:
                self.b._seq_rm(seq)
                self.free.append(seq)

    def release(self) -> None:
        self._drop(set())
        self.rows = []

    def logprobs(self, logits: np.ndarray) -> np.ndarray:
        return self.b._log_softmax(logits.astype(np.float32))

    def draw(self, logits: np.ndarray, row_of: list[int]) -> tuple[list[int], list[float]]:
        """Each draw's token from its row's distribution (argmax at temperature 0, top-k)."""
        logp = self.b._log_softmax(logits)
        idx = np.array(row_of)
        if self.temperature <= 0:
            nxt = logits.argmax(-1)[idx]
        else:
            scaled = logits.astype(np.float64) / self.temperature
            if self.top_k and self.top_k < scaled.shape[-1]:
                kth = np.partition(scaled, -self.top_k, axis=-1)[:, -self.top_k][:, None]
                scaled = np.where(scaled < kth, -np.inf, scaled)
            cdf = np.exp(scaled - scaled.max(-1, keepdims=True)).cumsum(-1)[idx]
            u = self.rng.random(len(row_of)) * cdf[:, -1]
            nxt = np.minimum((cdf <= u[:, None]).sum(-1), scaled.shape[-1] - 1)
        return nxt.tolist(), logp[idx, nxt].tolist()
