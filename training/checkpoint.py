"""Training checkpoints and the dataset cache as data, never code: safetensors + JSON.

``OUT/checkpoint/`` holds

- ``state-<step>.safetensors``: the tensors: ``model.<name>`` (the weights),
  ``optimizer.<index>.<key>`` (each parameter's optimizer state, e.g. AdamW's moments and
  step) and ``ema.<i>`` (the weight average's shadow, ``--ema``);
- ``state.json``, written LAST: the train state (step, tokens, curve), the config, the
  optimizer's ``param_groups`` and non-tensor state, the EMA's counters, and the name, size
  and sha256 of its tensor file.

Each file is written to a temporary file in the same folder and renamed into place
(``os.replace``). The tensor file of each step has its own name and the previous one is only
removed once the new ``state.json`` is in place, so a kill at any moment leaves either the
previous checkpoint or the new one whole, never a mix that looks whole.

A ``state.pt`` written by earlier versions (one ``torch.save``'d dict) is read with
``torch.load(..., weights_only=True)`` only: a pickle that would build anything but tensors
and plain containers (i.e. run code) is refused. It is removed once a new checkpoint has
been written beside it.

Any damaged file (empty, truncated, random bytes, foreign) is one ``SbtError`` naming it.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from sbt_core.errors import SbtError
from sbt_core.files import write_atomic, write_json
from sbt_core.models import files_sha256

STATE_JSON = "state.json"
LEGACY = "state.pt"
FORMAT = "sbt-train-checkpoint/1"
CACHE_FORMAT = "sbt-dataset-cache/1"


# --------------------------------------------------------------------------- writing


def _write_json(path: Path, obj) -> None:
    """``obj`` as strict JSON into ``path``, atomically and on disk."""
    write_json(path, obj, what="checkpoint file", fsync=True)


def _write_tensors(path: Path, tensors: dict, metadata: dict | None = None) -> tuple[int, str]:
    """``tensors`` as safetensors into ``path``, atomically; returns (size, sha256)."""
    from safetensors.torch import save_file

    write_atomic(path, lambda tmp: save_file(_unshared(tensors), str(tmp), metadata=metadata),
                 what="checkpoint file", fsync=True)
    return path.stat().st_size, files_sha256([path])


def _unshared(tensors: dict) -> dict:
    """CPU, contiguous tensors, each with its own storage (safetensors refuses shared ones,
    e.g. tied input and output embeddings)."""
    out, seen = {}, set()
    for name, t in tensors.items():
        t = t.detach().to("cpu")
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen or not t.is_contiguous() or t.untyped_storage().nbytes() != t.numel() * t.element_size():
            t = t.contiguous().clone()
        seen.add(t.untyped_storage().data_ptr())
        out[name] = t
    return out


def save(ckpt: Path | str, *, model: dict, optimizer: dict, train_state: dict, config: dict,
         ema: dict | None = None) -> None:
    """Write a checkpoint (see the module doc). ``model`` is a state dict, ``optimizer`` an
    optimizer's ``state_dict()``, ``ema`` a ``WeightAverage.state_dict()`` or None."""
    import torch

    ckpt = Path(ckpt)
    ckpt.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v for k, v in model.items()}
    scalars: dict[str, dict] = {}
    for index, per_param in optimizer["state"].items():
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    ema_meta = None
    if ema is not None:
        ema_meta = {k: v for k, v in ema.items() if k != "shadow"}
        ema_meta["count"] = len(ema["shadow"])
        tensors.update({f"ema.{i}": t for i, t in enumerate(ema["shadow"])})
    step = int(train_state["step"])
    name = f"state-{step:09d}.safetensors"
    size, digest = _write_tensors(ckpt / name, tensors, {"format": FORMAT})
    _write_json(ckpt / STATE_JSON, {
        "format": FORMAT, "tensors": {"file": name, "bytes": size, "sha256": digest},
        "train_state": train_state, "config": config,
        "optimizer": {"param_groups": optimizer["param_groups"], "scalars": scalars}, "ema": ema_meta})
    # only now is the new checkpoint whole: the older tensor files (and a legacy pickle) can go,
    # and temporary files a kill left behind (the run holds the lock of its folder: none is live)
    for old in [*ckpt.glob("state-*.safetensors"), *ckpt.glob(".state*.tmp*")]:
        if old.name != name:
            old.unlink(missing_ok=True)
    (ckpt / LEGACY).unlink(missing_ok=True)


# --------------------------------------------------------------------------- reading


def exists(ckpt: Path | str) -> bool:
    ckpt = Path(ckpt)
    return (ckpt / STATE_JSON).is_file() or (ckpt / LEGACY).is_file()


def _bad(path: Path, why: str) -> SbtError:
    return SbtError(f"{path}: not a readable sbt checkpoint ({why}); remove the checkpoint folder to start "
                    "again, or choose another --out")


def _read_meta(ckpt: Path) -> dict:
    path = ckpt / STATE_JSON
    try:
        meta = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _bad(path, "empty" if path.is_file() and not path.stat().st_size else
                   f"{type(exc).__name__}: {str(exc)[:80]}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise _bad(path, "not written by this version of sbt train")
    for key, kind in (("tensors", dict), ("train_state", dict), ("config", dict), ("optimizer", dict)):
        if not isinstance(meta.get(key), kind):
            raise _bad(path, f"no {key}")
    return meta


def _load_legacy(path: Path) -> dict:
    import pickle

    import torch

    try:
        with warnings.catch_warnings():  # (torch's notes on pickle protocols: not the user's business)
            warnings.simplefilter("ignore")
            saved = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise _bad(path, "it holds objects other than tensors and plain data, i.e. code; refused: checkpoints "
                         "are loaded as data only") from None
    except Exception as exc:  # noqa: BLE001 - empty, truncated, random bytes: all one line
        first = (str(exc).splitlines() or [""])[0]
        raise _bad(path, "empty" if not path.stat().st_size else f"{type(exc).__name__}: {first[:80]}") from None
    if not isinstance(saved, dict) or not all(isinstance(saved.get(k), dict)
                                              for k in ("model", "optimizer", "train_state", "config")):
        raise _bad(path, "not a training checkpoint")
    return saved


def read_config(ckpt: Path | str) -> dict:
    """The stored config of the checkpoint in ``ckpt`` (the JSON only for the new format)."""
    ckpt = Path(ckpt)
    if (ckpt / STATE_JSON).is_file():
        return _read_meta(ckpt)["config"]
    return _load_legacy(ckpt / LEGACY)["config"]


def load(ckpt: Path | str) -> dict:
    """``{"model", "optimizer", "train_state", "config", "ema"}`` as ``save`` got them
    (``optimizer`` a state dict for ``load_state_dict``, ``ema`` one for ``WeightAverage``)."""
    ckpt = Path(ckpt)
    if not (ckpt / STATE_JSON).is_file():
        return _load_legacy(ckpt / LEGACY)
    meta = _read_meta(ckpt)
    info = meta["tensors"]
    name = info.get("file")
    if not isinstance(name, str) or Path(name).name != name or not name.endswith(".safetensors"):
        raise _bad(ckpt / STATE_JSON, "bad tensor file name")
    path = ckpt / name
    if not path.is_file():
        raise _bad(path, "missing")
    if path.stat().st_size != info.get("bytes") or files_sha256([path]) != info.get("sha256"):
        raise _bad(path, "empty" if not path.stat().st_size else "its size or checksum differs from state.json")
    tensors = _load_tensors(path)
    model, state, shadow = {}, {}, {}
    try:
        for key, t in tensors.items():
            part, _, rest = key.partition(".")
            if part == "model":
                model[rest] = t
            elif part == "optimizer":
                index, _, k = rest.partition(".")
                state.setdefault(int(index), {})[k] = t
            elif part == "ema":
                shadow[int(rest)] = t
        for index, values in meta["optimizer"].get("scalars", {}).items():
            state.setdefault(int(index), {}).update(values)
        groups = [{k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in g.items()}
                  for g in meta["optimizer"]["param_groups"]]
        ema = None
        if meta.get("ema"):
            ema = {k: v for k, v in meta["ema"].items() if k != "count"}
            ema["shadow"] = [shadow[i] for i in range(int(meta["ema"]["count"]))]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise _bad(ckpt / STATE_JSON, f"{type(exc).__name__}: {str(exc)[:80]}") from None
    return {"model": model, "optimizer": {"state": state, "param_groups": groups},
            "train_state": meta["train_state"], "config": meta["config"], "ema": ema}


def _load_tensors(path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise _bad(path, f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:80]}") from None


# --------------------------------------------------------------------------- dataset cache


def save_dataset(stem: Path, tensors: dict, info: dict) -> None:
    """The encoded data set: ``<stem>.safetensors`` then ``<stem>.json`` (the JSON last: a cache
    without its JSON is not a cache)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    path = stem.with_suffix(".safetensors")
    size, digest = _write_tensors(path, tensors, {"format": CACHE_FORMAT})
    _write_json(stem.with_suffix(".json"), {"format": CACHE_FORMAT, "bytes": size, "sha256": digest, **info})


def load_dataset(stem: Path) -> tuple[dict, dict] | None:
    """(tensors, info) of a cache written by ``save_dataset``, or None when there is none or it
    is damaged (a cache is rebuilt, never trusted)."""
    meta_file, path = stem.with_suffix(".json"), stem.with_suffix(".safetensors")
    try:
        meta = json.loads(meta_file.read_text())
        if meta.get("format") != CACHE_FORMAT or path.stat().st_size != meta["bytes"] or files_sha256([path]) != meta["sha256"]:
            return None
        from safetensors.torch import load_file

        return load_file(str(path)), meta
    except Exception:  # noqa: BLE001 - missing or damaged: rebuild
        return None
