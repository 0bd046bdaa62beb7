"""``train.cuda_graphs``: a whole training step's forward and backward as one CUDA graph per batch shape.

A training step on a GPU is bound by the Python thread that launches its kernels (about 1850 for a RetinaNet
student's forward, GT loss and backward), not by the kernels: the GPU is busy for a quarter of the step
(docs/BENCHMARKS.md, sessions 5 and 14). For a batch of one canvas the step has fixed shapes once the boxes are
padded to a fixed row count (``objectives.box_rows``), so the objective's forward on the batch's tensors
(``graph_terms``: the student's pass and GT loss, and with FRS the teacher's side and both terms), the weighted sum
and the gradients of every trained parameter are captured once per batch shape as one graph. A step is then a few
copies into the graph's inputs, one replay and the optimizer's update, which stays eager (its learning rate
changes every step).

An objective offers this with three methods beside its ``forward``:

- ``graph_inputs(batch)``: the batch as a flat list of tensors on its device, or None when it cannot be a graph
  (several canvases, a family whose GT loss needs the per-image lists, FRS with GT masks);
- ``graph_terms(*inputs)``: its named, unweighted terms from those tensors alone (nothing may depend on values on
  the host);
- ``term_weights(step)``: the weights of the terms that carry one (FRS's ``w(t) * alpha`` and ``w(t) * beta``);
  they enter the graph as a tensor, so one graph serves every step.

The weighted terms and their sum are computed as ``forward`` and the trainer do (the same operations in the same
order), and the gradients are written into one buffer per parameter that every graph shares; ``step`` points each
parameter's ``.grad`` at it. Batch norms' running statistics are updated by the replay as by an eager step; the
capture's warm-up runs leave them as they found them. Graphs share one memory pool: a step's outputs are read
(``PendingLosses`` copies them) before the next replay. A shape whose capture fails, or past ``MAX_GRAPHS`` or
``MAX_INPUT_BYTES``, runs eagerly, with a warning for a failure.
"""

from __future__ import annotations

import contextlib
import logging
import time

import torch
from torch import Tensor, nn

from frs_cli.data.coco import Batch

log = logging.getLogger(__name__)

__all__ = ["StepGraphs"]


@contextlib.contextmanager
def _parameters_replaced(module: nn.Module, stand_ins: dict[int, Tensor]):
    """Within the block each parameter of ``module`` whose ``id`` is a key of ``stand_ins`` is that stand-in, in every
    module that holds it (a module reached by two paths, as a detector's classification head, is one module)."""
    swapped = []
    try:
        for m in module.modules():  # each module once
            for key, p in m._parameters.items():
                if p is not None and id(p) in stand_ins:
                    swapped.append((m, key, p))
                    m._parameters[key] = stand_ins[id(p)]
        yield
    finally:
        for m, key, p in reversed(swapped):
            m._parameters[key] = p


class _Graph:
    """One captured step: its static inputs (the batch's tensors, then the weights), the term names, the weighted
    terms and their sum (in the graph's memory), and which parameters it gives a gradient."""

    def __init__(self, graph, inputs: list[Tensor], names: list[str], terms: list[Tensor], loss: Tensor,
                 has_grad: list[bool]):
        self.graph, self.inputs, self.names, self.terms, self.loss, self.has_grad = (
            graph, inputs, names, terms, loss, has_grad)


class StepGraphs:
    """Per batch shape the objective's step as one CUDA graph (``train.cuda_graphs``; see the module docstring).

    ``step(batch, it)`` replays it, sets every trained parameter's ``.grad`` and returns the named weighted terms and
    their sum, as ``Trainer.run_step`` would have them after ``backward``; or None when ``batch`` runs eagerly.
    A shape's first batch is captured (after two warm-up runs on a side stream) and then replayed. ``capture=False``
    runs what would be captured eagerly at every step, on any device: the tests' way to check it on the CPU.
    """

    MAX_GRAPHS = 64
    MAX_INPUT_BYTES = 4 << 30

    def __init__(self, objective: nn.Module, capture: bool = True):
        self.objective, self.capture = objective, capture
        self._named = [(name, p) for name, p in objective.named_parameters() if p.requires_grad]
        self._grads: list[Tensor] | None = None  # one per trained parameter, shared by every graph
        self._graphs: dict[tuple, _Graph | None] = {}
        self._input_bytes = 0
        self._pool = None
        self._side: torch.cuda.Stream | None = None

    @property
    def captured(self) -> int:
        """How many batch shapes have a graph."""
        return sum(g is not None for g in self._graphs.values())

    def may_capture(self) -> bool:
        """Whether one more batch shape may get a graph: fewer than ``MAX_GRAPHS``, inputs under ``MAX_INPUT_BYTES``."""
        return self.captured < self.MAX_GRAPHS and self._input_bytes < self.MAX_INPUT_BYTES

    def step(self, batch: Batch, it: int) -> tuple[dict[str, Tensor], Tensor] | None:
        if (self.capture and batch.images.device.type != "cuda") or not self.objective.training or \
                not torch.is_grad_enabled():
            return None
        inputs = self.objective.graph_inputs(batch)
        if inputs is None:
            return None
        device = inputs[0].device
        amp = (torch.is_autocast_enabled(device.type), torch.get_autocast_dtype(device.type))
        weights = self.objective.term_weights(it)
        if not self.capture:
            coefficients = torch.tensor(list(weights.values()), dtype=torch.float32, device=device)
            names, terms, loss, has_grad = self._run([*inputs, coefficients], list(weights), amp, self._stand_ins())
            self._set_grads(has_grad)
            return dict(zip(names, terms, strict=True)), loss
        key = (amp, tuple(weights), *((tuple(t.shape), t.dtype) for t in inputs))
        if key not in self._graphs:
            self._graphs[key] = self._capture(inputs, list(weights), amp) if self.may_capture() else None
        graph = self._graphs[key]
        if graph is None:
            return None
        # pinned, so that the copy does not wait for the device
        coefficients = torch.tensor(list(weights.values()), dtype=torch.float32).pin_memory().to(device, non_blocking=True)
        for static, x in zip(graph.inputs, [*inputs, coefficients], strict=True):
            static.copy_(x)
        graph.graph.replay()
        self._set_grads(graph.has_grad)
        return dict(zip(graph.names, graph.terms, strict=True)), graph.loss

    def _set_grads(self, has_grad: list[bool]) -> None:
        """Every trained parameter's ``.grad``: its shared buffer where the step gave it one, else None (as an eager
        backward leaves a parameter it does not reach)."""
        for (_, p), grad, has in zip(self._named, self._grads, has_grad, strict=True):
            p.grad = grad if has else None

    def _stand_ins(self) -> dict[int, Tensor]:
        """Per trained parameter (by its ``id``) a tensor that shares its storage, so that a graph reads
        the optimizer's updates in place, but is first used on the capture's stream: a parameter's own gradient node
        belongs to the stream it was first used on. Makes the shared gradient buffers the first time."""
        if self._grads is None:
            self._grads = [torch.zeros_like(p) for _, p in self._named]
        return {id(p): p.detach().requires_grad_(True) for _, p in self._named}

    def _run(self, inputs: list[Tensor], weighted: list[str], amp, stand_ins: dict[int, Tensor]):
        """The step on the static ``inputs`` (the last one the weights of ``weighted``): the named weighted terms,
        their sum and per parameter whether it got a gradient, written into the shared buffers."""
        device = inputs[0].device
        with (torch.autocast(device.type, dtype=amp[1], enabled=amp[0], cache_enabled=False),
              _parameters_replaced(self.objective, stand_ins)):
            raw = self.objective.graph_terms(*inputs[:-1])
        names = list(raw)
        coefficients = inputs[-1]
        # as FRSObjective.forward weighs its terms and the trainer sums them: term by term, in order
        terms = [coefficients[weighted.index(n)] * raw[n] if n in weighted else raw[n] for n in names]
        loss = terms[0]
        for t in terms[1:]:
            loss = loss + t
        wants = list(stand_ins.values())
        grads = torch.autograd.grad(loss, wants, allow_unused=True)
        for buffer, g in zip(self._grads, grads, strict=True):
            if g is not None:
                buffer.copy_(g)
        return names, terms, loss, [g is not None for g in grads]

    def _capture(self, inputs: list[Tensor], weighted: list[str], amp) -> _Graph | None:
        device = inputs[0].device
        started = time.perf_counter()
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
            self._side = torch.cuda.Stream(device)
        statics = [x.detach().clone() for x in inputs] + [torch.ones(len(weighted), device=device)]
        stand_ins = self._stand_ins()
        buffers = list(self.objective.buffers())
        saved = [b.clone() for b in buffers]  # the warm-ups must not move the batch norms' running statistics
        current = torch.cuda.current_stream(device)
        side = self._side
        side.wait_stream(current)
        try:
            with torch.cuda.stream(side):
                for _ in range(2):  # lazy handles and cuDNN's choices before the capture, as capture wants
                    self._run(statics, weighted, amp, stand_ins)
            graph = torch.cuda.CUDAGraph()
            # no enclosing autocast's weight-cast cache in a graph (``_run`` enters its own, without one)
            with (torch.autocast(device.type, enabled=False),
                  torch.cuda.graph(graph, pool=self._pool, stream=side, capture_error_mode="thread_local")):
                names, terms, loss, has_grad = self._run(statics, weighted, amp, stand_ins)
        except Exception as exc:  # noqa: BLE001 - any capture failure leaves this shape eager, nothing else
            log.warning("train: no CUDA graph for the step on inputs of shapes %s (%s: %s); it runs eagerly",
                        [tuple(t.shape) for t in inputs], type(exc).__name__, exc)
            return None
        finally:
            current.wait_stream(side)
            with torch.no_grad():
                for b, s in zip(buffers, saved):
                    b.copy_(s)
        self._input_bytes += sum(t.nbytes for t in statics)
        log.info("train: captured the step on inputs of shapes %s in %.1f s (%d graphs)",
                 [tuple(t.shape) for t in inputs], time.perf_counter() - started, self.captured + 1)
        return _Graph(graph, statics, names, terms, loss, has_grad)
