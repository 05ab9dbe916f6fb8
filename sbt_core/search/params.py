"""Typed search settings: one frozen dataclass per method, layered in one function.

A method's settings class (``SelfBacktrackParams`` in ``self_backtrack``, ...) lists each
parameter once: its type, default and help (``param``). The bounds of every parameter live
in ``sbt_core.limits`` (``SEARCH_MINIMUM`` / ``SEARCH_MAXIMUM`` / ``SEARCH_CHOICES``) and are
checked by ``common.check_param``. ``layered(*layers)`` is the one layering: the method's
defaults, replaced by each layer in turn (the model's ``search_defaults.json``, then the
user's options), every value checked before any model loads.

``record()`` is what a run stores as its parameters (and with them a bench run's identity,
``harness.runner.RunSpec``): every parameter, except one marked ``recorded_at_default=False``
(a parameter added after runs were stored, e.g. ``variant``) while it has its default, so
that stored runs keep their identity.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Sequence, TypeVar

from .common import resolve_params

P = TypeVar("P", bound="SearchParams")


def param(default: Any, help: str, *, recorded_at_default: bool = True) -> Any:
    """A settings field: its default and its help line."""
    return field(default=default, metadata={"help": help, "recorded_at_default": recorded_at_default})


@dataclass(frozen=True)
class SearchParams:
    """The base of every method's settings (a method without parameters uses it as is)."""

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {f.name: f.default for f in fields(cls) if f.default is not MISSING}

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def help(cls) -> dict[str, str]:
        return {f.name: f.metadata.get("help", "") for f in fields(cls)}

    @classmethod
    def layered(cls: type[P], *layers: dict | None, names: Sequence[str | None] = (),
                keep_numbers: bool = False) -> P:
        """The defaults replaced by each layer in turn (``None`` values and keys the method
        does not take are skipped; every value with a limit is checked, also one the method
        does not take: ``SbtError`` naming ``names[i]``, see ``common.resolve_params``)."""
        return cls(**resolve_params(cls.defaults(), *layers, names=names, keep_numbers=keep_numbers))

    @classmethod
    def coerce(cls: type[P], params: SearchParams | dict | None) -> P:
        """``params`` as this class: an instance as it is, a dict layered over the defaults."""
        return params if isinstance(params, cls) else cls.layered(params)

    def record(self) -> dict[str, Any]:
        """The parameters a run stores (see the module docstring)."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.metadata.get("recorded_at_default", True) or getattr(self, f.name) != f.default}


# the help of the parameters several methods share (one wording everywhere)
N_HELP = "samples per expanded state"
TEMPERATURE_HELP = "sampling temperature (0: greedy)"
TOP_K_HELP = "sample among the k most likely tokens (0: all)"
MAX_NEW_TOKENS_HELP = "tokens one sample may generate"


@dataclass(frozen=True)
class SamplingParams(SearchParams):
    """N samples from the root (best-of-n, pass@n)."""

    n: int = param(16, "samples")
    temperature: float = param(0.7, TEMPERATURE_HELP)
    top_k: int = param(0, TOP_K_HELP)
    max_new_tokens: int = param(96, MAX_NEW_TOKENS_HELP)
