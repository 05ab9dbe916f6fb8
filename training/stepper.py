"""One optimisation step under the chosen precision, optionally through ``torch.compile``.

Precisions (``--precision``):

- ``fp32``: plain float32.
- ``bf16``: float32 weights, bfloat16 autocast (the usual GPU choice).
- ``bf16-master``: the forward and backward run on a bfloat16 copy of the model; the
  optimizer keeps float32 master weights (``model``), gets the gradients cast up, and
  the copy is refreshed after each step. On CPUs with AMX this avoids autocast's
  per-op weight casts.
- ``auto``: ``bf16`` on CUDA, ``bf16-master`` on CPUs with bf16 instructions, else ``fp32``.

``torch.compile`` (``--compile``) fuses the element-wise work (RMSNorm, rotary, SwiGLU)
that dominates these small models on CPU (about half the step time). Shapes are static
(batches padded to a multiple of 16, so a handful of compiled shapes); the first step of
each new width compiles. ``auto`` compiles long CPU runs when a C compiler is present.
What each precision and the compile give on the machines measured, and how long the
compiling takes: README, "Speed on these 2 cores" (``benchmarks/bench_train_speed.py``).

``model`` (float32) stays the source of truth: checkpoints, evaluation and the saved
model directory use it.

Data-parallel (``group``: a ``training.distributed.Group``, under torchrun): the module that
runs forward and backward (``model``, or its bfloat16 copy) is wrapped in
``DistributedDataParallel``, and ``step`` takes the rank's slice of the global batch with
the number of trained tokens of the whole batch: the loss it back-propagates is the slice's
sum of token losses over that number (times the world size, which DDP's gradient average
divides out), so the gradient is the one of the mean loss over the global batch.
"""

from __future__ import annotations

import copy
import shutil

import torch

from .config import COMPILE, PRECISIONS
MIN_STEPS_TO_COMPILE = 300  # below this, compile time is not paid back


def resolve_precision(precision: str, device: torch.device, cpu_has_bf16: bool) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16"
    return "bf16-master" if cpu_has_bf16 else "fp32"


def resolve_compile(choice: str, device: torch.device, total_steps: int) -> bool:
    if choice not in COMPILE:
        raise ValueError(f"unknown compile choice {choice!r}; choose one of {', '.join(COMPILE)}")
    if choice != "auto":
        return choice == "on"
    has_cc = any(shutil.which(c) for c in ("cc", "gcc", "clang"))
    return device.type == "cpu" and has_cc and total_steps >= MIN_STEPS_TO_COMPILE


class Stepper:
    """``step(inputs)``: forward, backward, clip, optimizer step; returns the loss."""

    def __init__(self, model: torch.nn.Module, opt: torch.optim.Optimizer, precision: str,
                 compile_model: bool = False, clip: float | None = 1.0, log=print, group=None) -> None:
        self.model, self.opt, self.precision, self.clip, self.log = model, opt, precision, clip, log
        self.work = model
        if precision == "bf16-master":
            self.work = copy.deepcopy(model).to(torch.bfloat16)
            self.work.train()
        self.group = group
        self.eager = group.wrap(self.work) if group is not None else self.work
        self.forward = torch.compile(self.eager, dynamic=False) if compile_model else self.eager
        self.compiled = compile_model
        self.pad_multiple = 16 if compile_model else 8
        self._first = True

    def sync(self) -> None:
        """Copy the master weights into the bfloat16 copy (after a step or a resume)."""
        if self.work is not self.model:
            with torch.no_grad():
                torch._foreach_copy_(list(self.work.parameters()), list(self.model.parameters()))

    def _loss(self, inputs: dict) -> torch.Tensor:
        autocast = self.precision == "bf16"
        device_type = next(self.model.parameters()).device.type
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=autocast):
            if not self._first or not self.compiled:
                return self._output(inputs)
            self._first = False
            try:
                return self._output(inputs)
            except Exception as exc:  # no working compiler toolchain: train eagerly instead
                self.log(f"torch.compile failed ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); "
                         "training without it")
                self.forward, self.compiled, self.pad_multiple = self.eager, False, 8
                return self._output(inputs)

    def _output(self, inputs: dict) -> torch.Tensor:
        """One process: the model's own loss (the mean over the batch's trained tokens).
        Data-parallel: the sum of the slice's token losses (the same shift and mask)."""
        if self.group is None:
            return self.forward(**inputs).loss
        logits = self.forward(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
        targets = torch.nn.functional.pad(inputs["labels"], (0, 1), value=-100)[..., 1:]
        return torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                                                 targets.reshape(-1).to(logits.device), ignore_index=-100,
                                                 reduction="sum")

    def step(self, inputs: dict, trained_tokens: int | None = None) -> float:
        """One step; returns the loss (the mean over the batch's trained tokens). Data-parallel:
        ``inputs`` is this rank's slice and ``trained_tokens`` the number of trained tokens of
        the whole global batch; the returned loss is the global batch's."""
        loss = self._loss(inputs)
        if self.group is not None:
            with self.group.guard():  # (DDP averages the gradients during the backward)
                (loss * (self.group.world / trained_tokens)).backward()
        else:
            loss.backward()
        if self.work is not self.model:
            for master, p in zip(self.model.parameters(), self.work.parameters()):
                master.grad = None if p.grad is None else p.grad.float()
                p.grad = None
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.sync()
        if self.group is not None:
            total = loss.detach().float().reshape(1)
            self.group.sum(total)
            return total.item() / trained_tokens
        return loss.item()
