"""``distill.cuda_graphs``: the cached teacher side and both FRS terms of a step as one pair of CUDA graphs.

A cached FRS step adds to the student's own step the decoding of the cached features, the teacher's head recomputed
on them, the valid positions, the adapters and the two loss terms: about 230 small operations, forward and
backward, on a GPU whose step is bound by the Python thread that launches kernels, not by the kernels. For a batch
of one canvas (every batch, when training batches by canvas) these operations have fixed shapes, so they are
captured once per batch shape as a forward and a backward CUDA graph (``_TrainingGraph``): the forward becomes one
copy per input and one replay, the backward (the adapters' and the student's gradients) one replay. The gradients a
replay hands back live in the graph's memory (a parameter's ``.grad`` may be that memory), so each backward must be
followed by the optimizer step before the next forward, as the trainer does (no gradient accumulation).

``frs_terms`` is the function captured, written with the adapters' weights as explicit arguments so that the
backward graph computes their gradients; it runs the same operations as the eager path (``CachedTeacher``'s
decode and head, ``FeatureAdapter``, ``frs_losses``), in the same precision: the student's autocast state is
taken from the caller and re-entered inside (with its weight-cast cache off, as capture requires).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from frs_cli.graphs import held_bytes
from frs_cli.losses import FeatureAdapter, frs_losses, position_grid, position_pixels, positions_within

log = logging.getLogger(__name__)

__all__ = ["GraphedTerms", "cached_targets", "frs_terms"]


def cached_targets(teacher, features: list[Tensor], scales: list[Tensor] | None) -> tuple[list[Tensor], list[Tensor]]:
    """The cached ``features`` (with their ``scales``) decoded by ``teacher`` (a ``CachedTeacher``) and its head's
    logits on them: ``(features, logits)`` per level, without gradients."""
    with torch.no_grad():
        feats = teacher.decode(features, scales)
        return feats, teacher.head_logits(feats)


def frs_terms(teacher, adapters: FeatureAdapter, amp: tuple[bool, torch.dtype], levels: int, scaled: bool,
              *inputs: Tensor, targets: tuple[list[Tensor], list[Tensor]] | None = None) -> tuple[Tensor, Tensor]:
    """``(feature_loss, head_loss)`` of a batch of one canvas from flat ``inputs``: per level the student's FPN
    features, then its classification logits, the cached features (as carried), their scales (when ``scaled``),
    the cached masks, then the images' valid sizes ``(B, 2)`` (the valid positions are computed from them here,
    ``losses.positions_within``) and per level the adapter's weight and bias (the adapters' own parameters: the
    graph reads them in place). ``teacher``: a ``CachedTeacher`` (its ``strides`` are the levels'); ``amp``: the
    student's autocast (enabled, dtype). ``targets``: ``cached_targets`` of those cached tensors when already
    computed (else computed here)."""
    n = levels
    sf, sl, cf = inputs[:n], inputs[n:2 * n], inputs[2 * n:3 * n]
    k = 3 * n
    scales = list(inputs[k:k + n]) if scaled else None
    k += n if scaled else 0
    masks, sizes, params = inputs[k:k + n], inputs[k + n], inputs[k + n + 1:]
    valid = positions_within(sizes, [tuple(f.shape[-2:]) for f in sf], teacher.strides)
    feats, logits = cached_targets(teacher, list(cf), scales) if targets is None else targets
    pads = [conv.padding for conv in adapters.convs]
    with torch.autocast(sf[0].device.type, dtype=amp[1], enabled=amp[0], cache_enabled=False):
        adapted = [F.conv2d(f, params[2 * lv], params[2 * lv + 1], padding=pads[lv]) for lv, f in enumerate(sf)]
        feature, head = frs_losses(adapted, feats, list(sl), logits, list(masks), valid)
    return feature, head


class _Replay(torch.autograd.Function):
    """A ``_TrainingGraph``'s forward graph as an autograd node whose backward replays its backward graph."""

    @staticmethod
    def forward(ctx, graph: _TrainingGraph, *xs: Tensor) -> tuple[Tensor, ...]:
        ctx.graph = graph
        for static, x in zip(graph.inputs, xs):
            if static.data_ptr() != x.data_ptr():  # the parameters are read in place, everything else copied in
                static.copy_(x)
        graph.forward_graph.replay()
        return tuple(o.detach() for o in graph.outputs)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads: Tensor):
        graph = ctx.graph
        for static, g in zip(graph.grad_outputs, grads):
            static.copy_(g)
        graph.backward_graph.replay()
        return None, *graph.input_grads


class _TrainingGraph:
    """``fn(*inputs) -> tuple of scalars`` captured as a forward graph and a backward graph on ``examples`` (the
    capture's own static inputs; those that require grad get gradients, parameters among them read in place).
    Captured on a side stream with ``thread_local`` errors, so that other threads (the DataLoader's pin-memory
    thread) may keep using CUDA meanwhile; after two warm-up runs, as capture wants (lazy handles, cuDNN set-up).
    Called, it returns the outputs as an autograd node: their backward replays the backward graph and hands
    back the captured gradients (which live in the graph's memory until its next replay)."""

    def __init__(self, fn, examples: list[Tensor], pool):
        self.inputs = examples
        wants = [x for x in examples if x.requires_grad]
        device = examples[0].device
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(2):
                out = fn(*examples)
                torch.autograd.grad(out, wants, [torch.ones_like(o) for o in out])
            del out
        torch.cuda.current_stream(device).wait_stream(side)
        self.forward_graph, self.backward_graph = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.forward_graph, pool=pool, stream=side, capture_error_mode="thread_local"):
            self.outputs = tuple(fn(*examples))
        self.grad_outputs = [torch.empty_like(o) for o in self.outputs]
        with torch.cuda.graph(self.backward_graph, pool=pool, stream=side, capture_error_mode="thread_local"):
            grads = iter(torch.autograd.grad(self.outputs, wants, self.grad_outputs))
        self.input_grads = [next(grads) if x.requires_grad else None for x in examples]

    def __call__(self, *xs: Tensor) -> tuple[Tensor, ...]:
        return _Replay.apply(self, *xs)


class GraphedTerms:
    """Per batch shape, ``frs_terms`` captured as a forward and a backward CUDA graph (``distill.cuda_graphs``).

    ``__call__(student_features, student_logits, cached, sizes)`` -> ``(feature_loss, head_loss)``, both
    differentiable; ``sizes``: the images' valid sizes, ``(B, 2)`` long on the device (``image_sizes_on``). A
    shape's first batch runs ``frs_terms`` eagerly and is then captured; later batches of that shape replay. Each
    graph keeps its inputs, intermediates and gradients allocated (about a gigabyte per shape at 8 COCO views), so
    at most ``MAX_GRAPHS`` shapes and ``MAX_GRAPH_BYTES`` get one; the rest, and any shape whose capture fails
    (with a warning), run eagerly. The losses and the gradients a replay returns live in the graph's memory until
    its next replay: one training step consumes them (``backward``) before that.
    """

    MAX_GRAPHS = 64
    MAX_GRAPH_BYTES = 8 << 30

    def __init__(self, teacher, adapters: FeatureAdapter):
        self.teacher, self.adapters = teacher, adapters
        self._graphs: dict[tuple, object | None] = {}  # input signature -> graphed callable (None: runs eagerly)
        self._graph_bytes = 0

    def may_capture(self) -> bool:
        """Whether one more shape may get a graph: fewer than ``MAX_GRAPHS`` and under ``MAX_GRAPH_BYTES``."""
        return (sum(g is not None for g in self._graphs.values()) < self.MAX_GRAPHS
                and self._graph_bytes < self.MAX_GRAPH_BYTES)

    def __call__(self, student_features: list[Tensor], student_logits: list[Tensor], cached,
                 sizes: Tensor) -> tuple[Tensor, Tensor]:
        device = student_features[0].device
        amp = (torch.is_autocast_enabled(device.type), torch.get_autocast_dtype(device.type))
        params = [p for conv in self.adapters.convs for p in (conv.weight, conv.bias)]
        inputs = [*student_features, *student_logits, *cached.features, *(cached.scales or []), *cached.masks, sizes]
        n, scaled = len(student_features), cached.scales is not None

        def fn(*xs: Tensor) -> tuple[Tensor, Tensor]:
            return frs_terms(self.teacher, self.adapters, amp, n, scaled, *xs)

        key = (amp, *((tuple(t.shape), t.dtype, t.requires_grad) for t in inputs))
        graph = self._graphs.get(key)
        if graph is not None:
            return graph(*inputs, *params)
        out = fn(*inputs, *params)  # a shape's first batch (or one past the limits) runs eagerly
        if key not in self._graphs:
            grids = tuple((int(f.shape[-2]), int(f.shape[-1])) for f in student_features)
            self._graphs[key] = self._capture(fn, inputs, params, grids) if self.may_capture() else None
        return out

    def _capture(self, fn, inputs: list[Tensor], params: list[nn.Parameter], grids: tuple[tuple[int, int], ...]):
        device = inputs[0].device
        # the capture's own inputs: fresh leaves with the same requires_grad (later batches are copied into them);
        # the parameters as leaves that share their storage (read in place, the optimizer's updates seen) but are
        # first used on the capture's stream: a parameter's own gradient node belongs to the stream it was first
        # used on (the default stream), and reaching it from a capture on another stream would end the capture
        examples = [x.detach().clone().requires_grad_(x.requires_grad) for x in inputs]
        examples += [p.detach().requires_grad_(p.requires_grad) for p in params]
        before = torch.cuda.memory_reserved(device)
        try:
            with torch.autocast(device.type, enabled=False):  # no enclosing autocast's weight-cast cache in a graph
                graph = _TrainingGraph(fn, examples, torch.cuda.graph_pool_handle())
        except Exception as exc:  # noqa: BLE001 - any capture failure leaves this shape eager, nothing else
            log.warning("distill: no CUDA graph for the FRS terms on inputs of shapes %s (%s: %s); they run eagerly",
                        [tuple(t.shape) for t in inputs], type(exc).__name__, exc)
            return None
        # the per-layout constants the graph reads in place (kept in frs_cli.losses' caches) are held by the graph
        # too, so that a cache's eviction cannot free memory a replay still reads
        graph.constants = (position_grid(grids, device), position_pixels(grids, tuple(self.teacher.strides), device))
        grown = torch.cuda.memory_reserved(device) - before
        # at least its inputs and their gradients (the parameters, shared with the model, are not its own)
        self._graph_bytes += max(grown, held_bytes(examples[:len(inputs)], getattr(graph, "input_grads", ())))
        return graph
