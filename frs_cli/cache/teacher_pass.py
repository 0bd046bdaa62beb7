"""The teacher side of ``frs teacher-cache``: a batch of images in, its encoded targets out, all on the device.

``TeacherPass`` runs the frozen teacher over one padded batch, takes the FRS masks and encodes the features as
the store keeps them (``FeatureEncoding.encode``), without a host sync. ``prepare`` folds the teacher's batch
norms into the convolutions before them (``frs_cli.models.fold``; the live teacher of ``distill --online`` is
folded alike), which drops their kernels (a fifth of the X101 pass's GPU time) on every device. Three options
keep the device, not the Python thread, the bound (each is off on the CPU, where the pass is the eager float32
forward):

- ``bf16_weights``: under autocast every convolution casts its weight and bias to bf16 again on every forward
  (autocast caches casts only of leaf tensors that require grad; a frozen teacher's do not). Casting the
  weights of the convolutions and linear layers once hands autocast tensors that already have its dtype: the
  same arithmetic, bit for bit, with no cast kernels. Norm layers keep their float32 parameters, as under
  autocast. The cache's recorded precision (``teacher.autocast``) is thus unchanged.
- ``channels_last``: the weights and the normalised input in NHWC, so cuDNN's bf16 kernels do not convert
  every convolution's input and output; the stored features are made NCHW once, at the end. The sums run in
  another order: features agree with the NCHW pass to within bf16 rounding, not bit for bit.
- ``cuda_graphs``: one CUDA graph per batch shape (shapes are fixed within a bucket of the plan), capturing the
  forward from the normalised input, the masks and the encoding; a batch then costs one launch. The first
  batch of a shape runs eagerly (it warms up), the next ones replay. A capture that fails leaves that shape
  eager, with a warning. Graphs share one memory pool: they never run concurrently, and each replay's
  outputs are copied out before the next.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from frs_cli.cache.encoding import FeatureEncoding
from frs_cli.errors import CacheFormatError, CacheMismatchError
from frs_cli.graphs import CapturedCall, held_bytes
from frs_cli.losses import frs_masks
from frs_cli.models.fold import fold_batchnorm

log = logging.getLogger(__name__)

# modules whose parameters autocast casts to its dtype at every call (convolutions, linear layers)
_AUTOCAST_CAST = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
                  nn.Linear)
MAX_GRAPHS = 64  # batch shapes with a graph; later shapes run eagerly (COCO at 800/1333 has about 30 buckets)
# device memory the graphs may hold together (their outputs, and intermediates they do not share): shapes
# captured once this much is reserved for them run eagerly
MAX_GRAPH_BYTES = 4 << 30


@dataclass(frozen=True)
class PassOptions:
    amp: bool = False  # run under bf16 autocast (the cache's teacher precision)
    bf16_weights: bool = False  # cast convolution and linear weights to bf16 once (only with amp)
    channels_last: bool = False  # NHWC weights and input
    cuda_graphs: bool = False  # one CUDA graph per batch shape (CUDA only)

    @staticmethod
    def for_device(device: torch.device, amp: bool, channels_last: bool, cuda_graphs: bool) -> PassOptions:
        """What the writer runs on ``device``: autocast and everything that speeds it up on CUDA; on the CPU the
        plain float32 forward (``amp``, ``channels_last`` and ``cuda_graphs`` ask for them on CUDA only)."""
        cuda = device.type == "cuda"
        return PassOptions(amp=amp and cuda, bf16_weights=amp and cuda, channels_last=channels_last and cuda,
                           cuda_graphs=cuda_graphs and cuda)


def pass_record(options: PassOptions) -> dict:
    """What a cache records of how its teacher ran (``teacher.pass``), beside its precision (``teacher.autocast``):
    what changes the stored numbers' rounding, not what only changes the speed (weights cast once, graphs)."""
    return {"batchnorm_folded": True, "channels_last": options.channels_last}


def _precision(autocast) -> str:
    return "bfloat16 autocast" if autocast == "bfloat16" else "float32"


def resumed_pass(path: str, teacher_attrs: dict, options: PassOptions,
                 written: bool = True) -> tuple[PassOptions, str | None]:
    """The pass a resumed ``teacher-cache`` adds views with, so that a cache holds the views of one teacher pass,
    and a warning to give (None: none). ``teacher_attrs``: the cache's ``teacher`` attributes; ``written``: whether
    any view is written (if none is, this run's own pass is the cache's, and nothing is said).

    The precision must be the cache's (absent, it is read as bf16 autocast, as readers do): bf16 and float32
    features differ far beyond fp16 rounding, and the cached head runs in the recorded one (CacheMismatchError
    otherwise). The layout follows the cache's record, whatever the recipe or the device would choose. A cache an
    older frs began records no pass: the views added now may differ from its own at fp16 rounding (its teacher's
    batch norms were not folded), which is said. Recorded values of another kind: CacheFormatError."""
    theirs, record = teacher_attrs.get("autocast", "bfloat16"), teacher_attrs.get("pass")
    layout = record.get("channels_last") if isinstance(record, dict) else None
    if theirs not in ("bfloat16", None) or not (record is None or isinstance(layout, bool)):
        raise CacheFormatError(f"cache {path!r}: its attributes are damaged (teacher.autocast {theirs!r}, teacher.pass "
                               f"{record!r}: expected 'bfloat16' or null, and a table whose channels_last is true or "
                               "false)", hint="write the cache again (frs teacher-cache into a new --out)")
    if not written:
        return options, None
    mine = "bfloat16" if options.amp else None
    if theirs != mine:
        raise CacheMismatchError(
            f"cache {path!r}: its views were computed in {_precision(theirs)}, this run would compute in "
            f"{_precision(mine)}: one cache holds one teacher precision",
            hint="resume it on a CUDA device with cache.amp = true (frs cache verify checks it on any device), or "
            "write a new cache" if theirs == "bfloat16" else "resume it with --set cache.amp=false, or write a new cache")
    if record is None:
        return options, (f"cache {path!r}: was begun by an older frs, which did not record how its teacher ran; the "
                         "views added now may differ from its own at fp16 rounding (batch norms folded since), "
                         "not bit for bit: to have every view from one teacher pass, write the cache anew")
    if layout == options.channels_last:
        return options, None
    names = {True: "channels-last", False: "NCHW"}
    return dataclasses.replace(options, channels_last=layout), (
        f"cache {path!r}: the teacher runs {names[layout]}, as for the views already written, not "
        f"{names[options.channels_last]} as this run would have (the layouts round apart)")


def cast_weights_once(model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> int:
    """Cast, in place, the parameters of every convolution and linear layer of ``model`` to ``dtype``: the cast
    autocast would otherwise repeat on every forward. Returns how many tensors were cast. The model then runs
    only under autocast of ``dtype`` (or with inputs of ``dtype``)."""
    n = 0
    for m in model.modules():
        if isinstance(m, _AUTOCAST_CAST):
            for p in m.parameters(recurse=False):
                if p.is_floating_point() and p.dtype != dtype:
                    p.data = p.data.to(dtype)
                    n += 1
    return n


class TeacherPass:
    """``teacher`` (a frozen ``Detector`` on its device) and the cache's feature ``encoding``; see the module doc.

    ``__call__(images, image_sizes)``: images ``(B, 3, H, W)`` uint8 on the teacher's device, padded as the
    ``Detector`` contract says -> the batch's tensors in ``shard_writer.batch_dtypes`` order: per level the
    encoded features ``(B, C', H_l, W_l)`` as carried (and their float32 scales ``(B, C)`` when scaled), then per
    level the float16 masks ``(B, H_l, W_l)``; all contiguous, on the device, nothing synchronised.
    Prepare the teacher (``prepare``: folding, casting) after its float32 weights were fingerprinted and stored.
    """

    def __init__(self, teacher: nn.Module, encoding: FeatureEncoding, options: PassOptions):
        self.teacher = teacher
        self.encoding = encoding
        self.options = options
        self._graphs: dict[tuple, CapturedCall | None] = {}  # batch shape -> graph (None: this shape runs eagerly)
        self._pool = None
        self.graph_bytes = 0  # device memory reserved by the captures so far

    def prepare(self) -> TeacherPass:
        fold_batchnorm(self.teacher)  # as the live teacher does (OnlineTeacher): both paths compute alike
        o = self.options
        if o.bf16_weights and o.amp:
            cast_weights_once(self.teacher)
        if o.channels_last:
            self.teacher.to(memory_format=torch.channels_last)
        return self

    def _encode(self, images: Tensor, image_sizes) -> list[Tensor]:
        """Forward, masks and encoding: ``images`` uint8, or float32 already normalised (``Detector.normalize``)."""
        # no autocast cache: it holds casts of weights that require grad only, and a graph capture must not use it
        with torch.no_grad(), torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=self.options.amp,
                                             cache_enabled=False):
            out = self.teacher(images, image_sizes, detect=False)
        with torch.no_grad():
            # NCHW once per level, before encoding: the store's layout, and the layout encode's kernels are made for
            encoded = [self.encoding.encode(f.contiguous()) for f in out.features]  # (B, C', H, W), (B, C) or None
            tensors = [t for f, sc in encoded for t in (f, sc) if t is not None]
            tensors += [m.to(torch.float16).contiguous() for m in frs_masks(out.cls_logits)]  # (B, H, W) per level
        return tensors

    def warm_up(self, shapes, device: torch.device) -> None:
        """Run (and with ``cuda_graphs`` capture) each batch shape ``(B, H, W)`` once on zero images, so that the
        write loop starts warm: cuDNN's and cuBLAS's first-call set-up and the captures happen here. CUDA only;
        nothing on the CPU."""
        if device.type != "cuda":
            return
        for b, h, w in shapes:
            self(torch.zeros((b, 3, h, w), dtype=torch.uint8, device=device), [(h, w)] * b)

    def __call__(self, images: Tensor, image_sizes) -> list[Tensor]:
        if not self.options.cuda_graphs:
            if self.options.channels_last:  # normalised here, so the body's first convolution reads NHWC
                images = self._normalized(images, image_sizes)
            return self._encode(images, image_sizes)
        x = self._normalized(images, image_sizes)
        key = (tuple(x.shape), x.dtype)
        if key not in self._graphs:
            tensors = self._encode(x, image_sizes)  # the first batch of a shape warms it up, eagerly
            self._graphs[key] = self._capture(x, image_sizes) if self._may_capture() else None
            return tensors
        graph = self._graphs[key]
        if graph is None:
            return self._encode(x, image_sizes)
        # copies: the next replay overwrites the outputs while the writer may still be copying these to the host
        return [t.clone() for t in graph.run(x)]

    def _normalized(self, images: Tensor, image_sizes) -> Tensor:
        with torch.no_grad():
            x = self.teacher.normalize(images, image_sizes)
        return x.contiguous(memory_format=torch.channels_last) if self.options.channels_last else x

    def _may_capture(self) -> bool:
        return len(self._graphs) < MAX_GRAPHS and self.graph_bytes < MAX_GRAPH_BYTES

    def _capture(self, x: Tensor, image_sizes) -> CapturedCall | None:
        before = torch.cuda.memory_reserved(x.device)
        try:
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            graph = CapturedCall(lambda inp: self._encode(inp, image_sizes), [x], self._pool)
            grown = torch.cuda.memory_reserved(x.device) - before
            self.graph_bytes += max(grown, held_bytes(graph.inputs, graph.outputs))
            return graph
        except Exception as exc:  # noqa: BLE001 - any capture failure leaves this shape eager, nothing else
            log.warning("teacher-cache: no CUDA graph for batches of shape %s (%s: %s); they run eagerly",
                        tuple(x.shape), type(exc).__name__, exc)
            return None
