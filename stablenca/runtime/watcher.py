"""Attach the recorder, the sentinel and the tracer to *your own* training loop.

Wrap the part of a step that computes the loss and its gradients in a closure (the
same idiom as ``optimizer.step(closure)``) and hand it to :meth:`Watch.step`::

    with stablenca.watch(model, optimizer, out="runs/mine") as watch:
        for epoch in range(epochs):
            for x, y in loader:
                def closure():
                    optimizer.zero_grad()
                    loss = my_loss(model(x), y)
                    loss.backward()
                    return loss
                watch.step(closure, epoch=epoch)
                if watch.should_stop:
                    break
                optimizer.step()
    print(watch.finding)  # the first non-finite op and its root-cause chain, or None

A step given as a loss function and its inputs, ``watch.step(loss_fn, x, y, epoch=epoch)``
with ``loss_fn(model, x, y)`` returning the loss, is run by the watch (it zeroes the
gradients and runs the backward, through ``scaler`` when given). The watch can then rebuild
the failing step in float64 (a deep copy of the model cast to float64, the floating inputs
cast up exactly) and run the counterfactual verification of :mod:`stablenca.trace.verify`
on it, as ``stablenca diagnose`` does: the finding carries the verdicts. A closure is
opaque (the watch cannot change the dtype of what it captured): its finding says
``verification: not run`` and why. Healthy steps cost the same either way.

Each step is recorded (one JSONL line, flushed) with loss, gradient and parameter
norms, and whatever the loss published with :func:`stablenca.publish`. In
``sentinel`` mode the pre-step state is copied before the closure runs; on the first
step whose loss or gradients are not finite that state is restored and the closure
is replayed once under the tracer. In ``full`` mode every step runs under the tracer.
The closure must zero the gradients itself (it is run again for a replay).

Where users train:

* **Mixed precision.** Pass ``scaler=`` (a ``torch.amp.GradScaler``). A step whose
  gradients are not finite is then the scaler's intended skip: it is recorded with
  ``status: "skipped"``, the loss scale and its finding (the op that overflowed in half
  precision, and whether the step is finite with autocast switched off, i.e. in
  float32), and it is *not* a failure unless ``max_skips`` skips come in a row or the
  scale falls below ``min_scale``. Every record carries ``loss_scale``.
* **torch.compile.** The cheap checks read the loss and the gradients, which a compiled
  model produces like any other. The replay runs with ``torch.compiler.set_stance("force_eager")``,
  so the tracer sees every op (as JAX re-runs a jitted function de-jitted for ``debug_nans``).
  ``mode="full"`` traces every step, so every step then runs eagerly.
* **torch.distributed.** Inside an initialised process group every rank records to
  ``OUT/<run>-rank<R>/`` and the ranks agree, with one all-reduce of a small flag per
  step, to stop at the same step (:mod:`stablenca.integrations.distributed`).
* **Preemption.** SIGTERM (torchrun, SLURM, Kubernetes) finishes the current step, marks
  the run interrupted, writes the summary and leaves the ``with`` block with exit code 143,
  on every rank.

With ``out=DIR`` the watch writes a run set that ``stablenca report DIR`` reads:
``DIR/summary.json`` and ``DIR/<run>/{config.json, records.jsonl, result.json}``, plus
``finding.json`` and ``capsule.pt`` (the pre-state of the failing step) after a failure.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import signal
import threading
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import EXIT_TERMINATED, ConfigError
from ..integrations import distributed
from ..integrations.precision import HALF_DTYPES, autocast_disabled, finding_dtype
from .probes import PublishedReductions, batch_statistics
from ..publish import capture
from .. import artifacts
from ..artifacts import CAPSULE_FORMAT, CAPSULE_VERSION, prepare_out_dir, save_capsule
from ..records import JsonlWriter
from ..trace import Tracer
from ..trace.verify import apply_verification, verify_step
from .sentinel import MODES, Snapshot

#: Skipped steps traced in full (each costs two replays); later skips record the scale only.
#: The scaler halves the scale at every skip, so a start-up calibration from 2**16 takes few.
TRACED_SKIPS = 16


def base_module(model: torch.nn.Module) -> torch.nn.Module:
    """The user's module inside ``torch.compile`` (``_orig_mod``) and DDP (``module``) wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None)
        if inner is None and isinstance(model, torch.nn.parallel.DistributedDataParallel):
            inner = model.module
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


@contextlib.contextmanager
def eager():
    """Run compiled functions and modules eagerly inside the block (a replay under the tracer)."""
    set_stance = getattr(torch.compiler, "set_stance", None)
    with (set_stance("force_eager") if set_stance is not None else contextlib.nullcontext()), \
            warnings.catch_warnings():
        # The tracer's module tracker is a global module hook; eager calls of the compiled
        # wrapper warn that such hooks fire once more for it, which the tracer allows for.
        warnings.filterwarnings("ignore", message=r"Using `torch.compile\(module\)` when there are global hooks")
        yield


class Watch:
    """See the module docstring. ``out=None`` keeps the records in memory only."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
                 out: str | Path | None = None, mode: str = "sentinel", keep: int = 10_000,
                 scaler: Any = None, max_skips: int | None = None, min_scale: float | None = None,
                 run: str = "watch", force: bool = False, report: bool = False) -> None:
        if mode not in MODES:
            raise ConfigError(f"unknown mode {mode!r}", fix=f"use one of {', '.join(MODES)}")
        if not isinstance(model, torch.nn.Module):
            raise ConfigError(f"model is a {type(model).__name__}, not a torch.nn.Module",
                              fix="pass the module whose parameters the loss trains")
        if scaler is not None and not callable(getattr(scaler, "get_scale", None)):
            raise ConfigError(f"scaler is a {type(scaler).__name__}, not a torch.amp.GradScaler",
                              fix="pass the GradScaler that scales this loop's loss, or leave scaler out")
        if max_skips is not None and (not isinstance(max_skips, int) or max_skips < 0):
            raise ConfigError(f"max_skips={max_skips!r} is not a count", fix="pass an integer >= 0, or None")
        if min_scale is not None and not min_scale > 0:
            raise ConfigError(f"min_scale={min_scale!r} is not a positive scale", fix="pass a number > 0, or None")
        self.model, self.optimizer, self.mode = model, optimizer, mode
        self.scaler = scaler if scaler is not None and scaler.is_enabled() else None
        self.max_skips, self.min_scale, self.report = max_skips, min_scale, report
        self.agreement = distributed.Agreement() if distributed.active() else None
        self.rank = self.agreement.rank if self.agreement is not None else 0
        self.run_name = f"{run}-rank{self.rank}" if self.agreement is not None else run
        self.out = Path(out) if out is not None else None
        self.run_dir = self._prepare(force) if self.out is not None else None
        self.writer = JsonlWriter(self.run_dir / "records.jsonl") if self.run_dir is not None else None
        self.snapshot = Snapshot(model, optimizer) if mode != "off" else None
        self._named = [(_clean_name(name), p) for name, p in model.named_parameters()]
        #: The probes' full-matrix reductions, taken as the loss publishes its matrices (:meth:`step` and
        #: the integrations enter ``reductions.collecting()`` beside their own capture).
        self.reductions = PublishedReductions()
        self.records: list[dict[str, Any]] = []
        self.keep = keep
        self.finding = None
        self.failed_at: dict[str, Any] | None = None
        self.first_failing_rank: int | None = None
        self._first_failing: dict[str, Any] | None = None
        self.interrupted = False  # SIGTERM (on any rank) or Ctrl-C ended the loop
        self.terminated = False  # ... and it was SIGTERM: the with block exits with 143
        self.skipped = 0
        self._skips_in_a_row = 0
        self._sigterm_received = False
        self._previous_sigterm = None
        self._closed = False
        self._step = 0
        self._install_sigterm_handler()
        # The optimizer step runs outside step(): a hook sees a non-finite value it writes in place.
        self._last = None  # (replay closure, epoch) of the last observed step
        self._optimizer_hook = optimizer.register_step_post_hook(self._after_optimizer_step) \
            if optimizer is not None and mode != "off" else None

    # -- state ---------------------------------------------------------------------
    @property
    def failed(self) -> bool:
        return self.failed_at is not None

    @property
    def should_stop(self) -> bool:
        """Break out of the loop: a real failure (not a scaler skip), or SIGTERM on any rank."""
        return self.failed or self.interrupted

    # -- one step ------------------------------------------------------------------
    def step(self, closure: Callable[..., torch.Tensor], *inputs: Any, epoch: int | None = None) -> torch.Tensor:
        """Run one step, record it, and trace (and, when it can, verify) the first failure.

        ``step(closure)``: ``closure()`` zeroes the gradients, runs forward and backward and
        returns the loss. ``step(loss_fn, *inputs)``: ``loss_fn(model, *inputs)`` returns the
        loss and the watch zeroes the gradients and runs the backward; a failing step is then
        also replayed in float64 for the counterfactual verification (see the module docstring).
        """
        self.begin()
        run = functools.partial(self._loss_step, closure, inputs) if inputs else closure
        tracer = Tracer(model=base_module(self.model)) if self.mode == "full" and not self.should_stop else None
        with capture() as published, self.reductions.collecting(), \
                (eager() if tracer is not None else contextlib.nullcontext()), \
                (tracer if tracer is not None else contextlib.nullcontext()):
            loss = run()
        if not isinstance(loss, torch.Tensor):
            raise ConfigError(f"the closure returned {type(loss).__name__}, not the loss tensor",
                              fix="end the closure with `return loss`")
        self.observe(loss, published, run, epoch=epoch, tracer=tracer, loss_fn=(closure, inputs) if inputs else None)
        return loss

    def _loss_step(self, loss_fn: Callable[..., torch.Tensor], inputs: tuple) -> torch.Tensor:
        """One step of ``step(loss_fn, *inputs)``: zero the gradients, the loss, its backward."""
        self.model.zero_grad(set_to_none=True)
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(self.model, *inputs)
        if not isinstance(loss, torch.Tensor):
            raise ConfigError(f"the loss function returned {type(loss).__name__}, not the loss tensor",
                              fix="return the loss tensor from loss_fn(model, *inputs)")
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        return loss

    def begin(self) -> None:
        """Before a step's forward: copy the pre-step state (what a replay starts from)."""
        if self.snapshot is not None and not self.should_stop:
            self.snapshot.take()

    def observe(self, loss: torch.Tensor, published: dict[str, Any], replay: Callable[[], Any], *,
                epoch: int | None = None, tracer=None, loss_fn: tuple | None = None) -> dict[str, Any]:
        """After a step's backward: record it, agree across ranks, explain a skip or the first failure.

        ``replay`` reruns the step's forward and backward (it is called after the pre-step
        state is restored); integrations that do not own the loop (Lightning) call
        :meth:`begin` and this method from their hooks. ``loss_fn``: ``(loss_fn, inputs)``
        of a step given as ``step(loss_fn, *inputs)``, which a float64 replay can rebuild.
        """
        watching = not self.should_stop
        record: dict[str, Any] = {"epoch": epoch, "step": self._step}
        record.update(batch_statistics(loss=loss, per_sample=None, rows_excluded=0, published=published,
                                       named_parameters=self._named, reductions=self.reductions))
        self.reductions.clear()  # the step's matrices are not kept alive past it
        loss_finite = math.isfinite(record["loss"])  # already on the host: no second sync
        grads_finite = record["grad_nonfinite"] == 0
        record["finite"] = loss_finite and grads_finite
        if self.scaler is not None:
            record["loss_scale"] = float(self.scaler.get_scale())
        status = self._status(record, grads_finite)
        record["status"] = status
        if status == "failed" and record.get("skipped_in_a_row"):
            record["status"] = "skipped"  # the scaler still skips it; the watch calls it a failure
        any_failed, terminated = status == "failed", self._sigterm_received
        if self.agreement is not None and watching:
            any_failed, terminated = self.agreement.agree(any_failed, terminated)
        if watching and (status == "skipped" or any_failed):
            self._explain(replay, record, tracer, traced=status == "skipped" and self.skipped <= TRACED_SKIPS,
                          any_failed=any_failed, epoch=epoch, loss_fn=loss_fn)
        if terminated and not self.interrupted:
            self.interrupted = self.terminated = True
            record["interrupted"] = "SIGTERM"
        self._last = (replay, epoch)
        if self.writer is not None:
            self.writer.write(record)
        if len(self.records) < self.keep:
            self.records.append(record)
        self._step += 1
        return record

    def _status(self, record: dict[str, Any], grads_finite: bool) -> str:
        """ok, skipped (the scaler drops the step: its gradients are not finite) or failed."""
        if record["finite"]:
            self._skips_in_a_row = 0
            return "ok"
        if self.scaler is None or grads_finite:  # a non-finite loss with finite gradients is applied
            return "failed"
        self.skipped += 1
        self._skips_in_a_row += 1
        scale = record["loss_scale"]
        too_many = self.max_skips is not None and self._skips_in_a_row > self.max_skips
        too_small = self.min_scale is not None and scale < self.min_scale
        if too_many or too_small:
            record["skipped_in_a_row"] = self._skips_in_a_row
            record["failure"] = (f"{self._skips_in_a_row} skipped steps in a row (max_skips={self.max_skips})"
                                 if too_many else f"loss scale {scale:g} below min_scale={self.min_scale:g}")
            return "failed"
        return "skipped"

    def _explain(self, closure, record: dict[str, Any], tracer, *, traced: bool, any_failed: bool,
                 epoch: int | None, loss_fn: tuple | None = None) -> None:
        """Replay the step under the tracer (and in float32 for a half-precision op); record the finding."""
        first_failure = any_failed and not self.failed
        if not (traced or first_failure) or self.snapshot is None:
            if first_failure:  # mode off: nothing to replay
                self.failed_at = {"epoch": epoch, "step": self._step}
            return
        finding = tracer.finding if tracer is not None else None
        if finding is None:
            finding = self._replay(closure)
        explained: dict[str, Any] | None = finding.to_dict() if finding is not None else None
        half = finding_dtype(finding) in HALF_DTYPES
        if record["status"] == "skipped" and not first_failure:
            # Every rank skips the same step (the gradients are all-reduced), so under DDP every
            # rank runs the counterfactual, keeping the replays' collectives in step.
            if half or (self.agreement is not None and self.scaler is not None):
                counterfactual = self._float32_counterfactual(closure)
                if explained is not None:
                    explained["float32"] = counterfactual
            record["finding"] = _short(explained)
            return
        self.failed_at = {"epoch": epoch, "step": self._step}
        self.finding = finding
        if finding is not None:
            self._verify(finding, loss_fn)
            explained = finding.to_dict()
        report = {"rank": self.rank, "finite": record["finite"], "finding": explained}
        reports = self.agreement.gather(report) if self.agreement is not None else [report]
        # Decided on what every rank found, so all ranks replay together (or none does).
        if any((r["finding"] or {}).get("output", {}).get("dtype") in HALF_DTYPES for r in reports):
            counterfactual = self._float32_counterfactual(closure)
            if explained is not None:
                explained["float32"] = counterfactual
            if self.agreement is not None:
                reports = self.agreement.gather(report)
        record["first_nonfinite"] = explained
        self.first_failing_rank = distributed.first_failing_rank(reports)
        self._first_failing = reports[self.first_failing_rank] if self.first_failing_rank is not None else None
        if self.agreement is not None:
            record["first_failing_rank"] = self.first_failing_rank
        if self.run_dir is not None:
            if explained is not None:
                artifacts.write_run_json(self.run_dir, artifacts.FINDING, explained)
            save_capsule(self.run_dir / artifacts.CAPSULE, self._capsule(epoch, explained))

    def _verify(self, finding, loss_fn: tuple | None) -> None:
        """The counterfactual verification of the failing step, or why it was not run (in the finding)."""
        base = base_module(self.model)
        working = next((p.dtype for p in base.parameters() if p.is_floating_point()), None)
        if loss_fn is None:
            return not_verified(finding, "the step is an opaque closure, which the watch cannot rebuild in float64; "
                                         "pass the loss function and its inputs: `watch.step(loss_fn, x, y)`")
        if working is None or working == torch.float64:
            return not_verified(finding, "the model has no float32 or narrower parameters to replay in float64")
        if finding_dtype(finding) in HALF_DTYPES and str(working).replace("torch.", "") not in HALF_DTYPES:
            return not_verified(finding, "the step runs under `torch.autocast`, which a float64 replay would keep; "
                                         "see its float32 counterfactual")
        rng = torch.get_rng_state()
        try:
            # After the traced replay the model holds the pre-step parameters (the optimizer has
            # not stepped): one copy per dtype, so the user's model and gradients are untouched.
            models: dict[torch.dtype, torch.nn.Module] = {}
            fn, inputs = loss_fn

            def forward(dtype):
                if dtype not in models:
                    models[dtype] = copy.deepcopy(base).to(dtype)
                model = models[dtype]
                model.zero_grad(set_to_none=True)
                if self.snapshot.rng_state is not None:
                    torch.set_rng_state(self.snapshot.rng_state)
                cast = [a.detach().to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                        for a in inputs]
                loss = fn(model, *cast)
                return loss, [p for p in model.parameters() if p.requires_grad]

            with eager(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                problem = _rebuilt_step_problem(forward, working)
                if problem is not None:
                    return not_verified(finding, problem)
                verification = verify_step(forward, finding, working=working)
        except Exception as exc:  # the user's loop goes on: say why instead
            return not_verified(finding, f"the float64 replay raised `{type(exc).__name__}: {exc}`")
        finally:
            torch.set_rng_state(rng)
        apply_verification(finding, verification)

    def _replay(self, closure):
        """Restore the pre-step state and rerun the closure eagerly under the tracer (local gradients only)."""
        self.snapshot.restore()
        with eager(), distributed.no_gradient_sync(self.model), capture(), \
                Tracer(model=base_module(self.model)) as replay:
            closure()
        return replay.finding

    def _after_optimizer_step(self, optimizer, args, kwargs) -> None:
        """A finite step whose optimizer update wrote NaN/Inf into the parameters: a finding of that step.

        Replays the step (closure and optimizer.step) from the pre-step state under the tracer;
        the parameters are left as the real update left them.
        """
        if self._last is None or self.should_stop or self.snapshot is None:
            return
        params = [p.detach() for _, p in self._named]
        if not params or bool(torch.isfinite(torch.stack(torch._foreach_norm(params, 2, dtype=torch.float64))).all()):
            return
        closure, epoch = self._last
        self._last = None  # the replay's own optimizer.step() must not come back here
        self.snapshot.restore()
        with eager(), capture(), Tracer(model=base_module(self.model)) as tracer:
            closure()
            optimizer.step(*args[1:], **kwargs)  # args[0] is the optimizer itself
        for name, p in self._named:
            if tracer.check_result(p, f"parameter {name} after optimizer.step()") is not None:
                break
        self.failed_at = {"epoch": epoch, "step": self._step - 1, "phase": "optimizer"}
        self.finding = tracer.finding
        if self.finding is not None:
            not_verified(self.finding, "the failure is in `optimizer.step()`, which the float64 replay of the "
                                       "loss and its gradients does not cover")
        if self.run_dir is not None and self.finding is not None:
            artifacts.write_run_json(self.run_dir, artifacts.FINDING, self.finding.to_dict())

    def _float32_counterfactual(self, closure) -> dict[str, Any]:
        """Rerun the step with autocast switched off; then rerun it as it was, so the gradients are the step's.

        Under DDP both reruns keep their gradients local (``no_sync``): the question is whether
        this rank's own computation is finite in float32.
        """
        self.snapshot.restore()
        with eager(), distributed.no_gradient_sync(self.model), capture(), autocast_disabled() as seen:
            loss = closure()
            grads = [p.grad for _, p in self._named if p.grad is not None]
            finite = bool(torch.isfinite(loss.detach()).all()) and all(bool(torch.isfinite(g).all()) for g in grads)
        self.snapshot.restore()
        with eager(), distributed.no_gradient_sync(self.model), capture():
            closure()
        if not seen["autocast"]:
            return {"finite": None, "why": "the step did not enter torch.autocast: its half precision is the "
                                           "model's own dtype, so there is no float32 run to compare"}
        return {"finite": finite, "why": "the same step with torch.autocast switched off (the model's float32)"}

    def _capsule(self, epoch: int | None, explained: dict[str, Any] | None) -> dict[str, Any]:
        return {
            "format": CAPSULE_FORMAT, "version": CAPSULE_VERSION, "torch_version": str(torch.__version__),
            "source": "watch", "config": {"watch": self.run_name}, "epoch": epoch, "step": self._step,
            "step_in_epoch": self._step, "batch_indices": torch.zeros(0, dtype=torch.long),
            "model_state": self.snapshot.model_state(),
            "optimizer_state": self.snapshot.optimizer_state() if self.optimizer is not None else {},
            "generator_state": None, "rng_state": self.snapshot.rng_state, "finding": explained,
        }

    # -- files ---------------------------------------------------------------------
    def _prepare(self, force: bool) -> Path:
        if self.rank == 0:
            prepare_out_dir(self.out, force=force)
        if self.agreement is not None:
            self.agreement.barrier()  # the other ranks write only after rank 0 cleared the directory
        run_dir = self.out / self.run_name
        run_dir.mkdir(parents=True, exist_ok=True)
        dtype = next((str(p.dtype).replace("torch.", "") for p in self.model.parameters()), "float32")
        artifacts.write_run_json(run_dir, artifacts.CONFIG, {"model": type(base_module(self.model)).__name__,
                                                          "loss": "user loop", "dtype": dtype, "source": "watch",
                                                          "rank": self.rank})
        return run_dir

    def _entry(self) -> dict[str, Any]:
        status = "diverged" if self.failed else ("interrupted" if self.interrupted else "completed")
        config = {"model": type(base_module(self.model)).__name__, "loss": "user loop"}
        return {"run": self.run_name, **config, "dtype": next(
                    (str(p.dtype).replace("torch.", "") for p in self.model.parameters()), "float32"),
                "rank": self.rank, "status": status, "diverged": self.failed, "diverged_at": self.failed_at,
                "steps_run": self._step, "skipped_steps": self.skipped,
                "first_nonfinite": artifacts.first_nonfinite(
                    self.failed_at if self.failed else None,
                    self.finding.to_dict() if self.finding is not None else None),
                "capsule": str(Path(self.run_name) / artifacts.CAPSULE) if self.failed and self.mode != "off" else None,
                "test": {}, "val": {}, "excluded_rows": None}

    def _write_summary(self, *, interrupted: bool, gather: bool) -> None:
        entry = self._entry()
        if self.run_dir is not None:
            artifacts.write_run_json(self.run_dir, artifacts.RESULT, entry)
        entries = self.agreement.gather(entry) if self.agreement is not None and gather else [entry]
        if self.rank != 0 or self.out is None:
            return
        first = self._first_failing
        summary = artifacts.new_summary(
            "watch", mode=self.mode, interrupted=interrupted, signal="SIGTERM" if self.terminated else None,
            world_size=self.agreement.world_size if self.agreement is not None else 1,
            first_failing_rank=self.first_failing_rank,
            first_failing_finding=first.get("finding") if first else None, runs=entries)
        artifacts.write_summary(self.out, summary)
        if self.report:
            from ..report import build_report  # lazy: only a watch that writes a report loads the report modules

            build_report(self.out)

    def close(self, *, crashed: bool = False, interrupted: bool = False) -> None:
        if self._closed:
            return
        self._closed = True
        if self._optimizer_hook is not None:
            self._optimizer_hook.remove()
        self._restore_sigterm_handler()
        if self.writer is not None:
            self.writer.close()
        self.interrupted |= interrupted
        # After a crash on one rank the others may never reach a collective: no gather then.
        self._write_summary(interrupted=self.interrupted, gather=not crashed)

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        ctrl_c = exc_type is not None and issubclass(exc_type, KeyboardInterrupt)
        self.close(crashed=exc_type is not None and not ctrl_c, interrupted=ctrl_c)
        if self.terminated and exc_type is None:
            raise SystemExit(EXIT_TERMINATED)

    # -- SIGTERM -------------------------------------------------------------------
    def _install_sigterm_handler(self) -> None:
        """Turn SIGTERM into "stop after this step"; only where nobody else handles it (main thread)."""
        if threading.current_thread() is not threading.main_thread():
            return
        try:
            previous = signal.getsignal(signal.SIGTERM)
        except (ValueError, OSError):
            return
        if previous not in (signal.SIG_DFL, None):
            return
        self._previous_sigterm = previous
        signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame) -> None:
        self._sigterm_received = True

    def _restore_sigterm_handler(self) -> None:
        if self._previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None


def _rebuilt_step_problem(forward, dtype: torch.dtype) -> str | None:
    """Why the step rebuilt on a copy (``forward(dtype)`` -> (loss, the copy's parameters)) cannot stand for
    the failing one, or None. Verdicts on another computation would be about another step."""
    loss, parameters = forward(dtype)
    grads = torch.autograd.grad(loss.sum(), parameters, allow_unused=True) if loss.requires_grad else ()
    if not any(g is not None for g in grads):  # the loss does not depend on the copy: the model was captured
        return "the loss function does not use the model it is given (a copy of yours); compute the loss from it"
    if bool(torch.isfinite(loss).all()) and all(bool(torch.isfinite(g).all()) for g in grads if g is not None):
        # e.g. a step that reads a global step counter or a schedule that the copy does not carry
        return (f"the step rebuilt from the loss function and its inputs is finite in "
                f"{str(dtype).replace('torch.', '')}, so it is not the step that failed")
    return None


def not_verified(finding, reason: str) -> None:
    """Say in ``finding`` that the counterfactual verification was not run, and why."""
    finding.verification = {"status": "not run", "reason": reason, "statement": f"not run: {reason}"}


def _clean_name(name: str) -> str:
    """A parameter's name without the ``_orig_mod.`` (compile) and ``module.`` (DDP) wrapper prefixes."""
    for prefix in ("_orig_mod.", "module."):
        while name.startswith(prefix):
            name = name[len(prefix):]
    return name


def _short(finding: dict[str, Any] | None) -> dict[str, Any] | None:
    """The part of a finding a skipped step's record keeps: the op, its dtype, the root cause, float32."""
    if finding is None:
        return None
    root = finding.get("root_cause") or {}
    return {"op": finding.get("op"), "phase": finding.get("phase"), "module": finding.get("module"),
            "dtype": (finding.get("output") or {}).get("dtype"), "root_cause": root.get("kind"),
            "root_op": root.get("op"), "float32": finding.get("float32")}


def watch(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None, **kwargs) -> Watch:
    """Shorthand for :class:`Watch` (use it as a context manager)."""
    return Watch(model, optimizer, **kwargs)
