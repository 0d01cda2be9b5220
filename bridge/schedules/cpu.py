"""Default CPU schedules, applied to every fused kernel without any search.

TVM 0.27's CPU pipeline legalizes and fuses operators but schedules nothing, so every kernel is
a scalar loop nest (a 3x3 conv ran at ~1 GFLOP/s). These rules give each kernel the classic
shape of a fast channels_last CPU kernel:

* a reduction kernel (convolution, depthwise convolution, dense/matmul, pooling, mean) whose
  innermost output axis is contiguous (channels, units): a register tile of ``T`` output pixels x
  ``F`` channels accumulated in registers (``F`` a multiple of the SIMD width; ``T x F`` sized
  to the target's vector registers, :func:`register_tile`), the reduction
  loops inside the tile, the output-channel axis vectorized, the pixel axis unrolled, and the
  outer loops fused and run in parallel; the fused epilogue (bias, batch norm, activation,
  residual add) is inlined into the tile's write-back so it runs on data still in registers;
* a sum over every pixel into one value per channel at batch 1 (global average pooling,
  squeeze-and-excite's mean): runs of rows summed in parallel, then added
  (:mod:`bridge.schedules.global_sum`);
* a depthwise convolution (a window, no input channels to sum): the same tile, reading its
  padding in place and with the window's taps unrolled so neighbouring pixels share loads;
* an injective kernel (elementwise chains, padding, concatenation, reshapes): intermediate
  stages inlined, loops fused, split by the SIMD width, vectorized and parallelized;
* a row kernel (softmax's and layer norm's steps, reductions over the last axis): each row
  computed whole under one parallel loop, reductions accumulated in vector partial results;
* Winograd's input and output transforms (:mod:`bridge.schedules.winograd`): one tile per
  parallel iteration, its positions unrolled, channels vectorized (its product is a reduction
  kernel like any other).

Kernels these rules do not recognize are left to TVM's dlight CPU rules.
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.target import Target
from tvm.target.codegen import llvm_get_vector_width, target_has_features

from bridge.quant.elementwise import CHANNEL_FACTOR
from bridge.schedules import winograd
from bridge.schedules.common import (
    COMM_REDUCE,
    SWEPT_FLOAT_WEIGHTS,
    attempt,
    find_block,
    is_reduction,
    iter_kinds,
    largest_divisor,
    loop_extent,
    loops_product,
    most_accumulators,
    reads_bool,
    uses,
    vector_divisor,
    vectorize_block,
    weights_first,
)
from bridge.schedules.global_sum import schedule_global_sum, sums_every_pixel
from bridge.schedules.stack import STACK_BYTES

# accumulator vectors per register tile: 8 pixels x 2 vectors of channels, or 16 x 1 where
# one vector is the block (a 7-8 pixel tile of one vector, 7-8 accumulators, left the FMA
# units waiting on their latency and the loads: EfficientNetB0's 40-112 channel projections)
MAX_ACCUMULATORS = 16
# registers a tile leaves beside its accumulators (its weights, a broadcast input, the
# epilogue's temporaries: AVX2's 16 ymm with 14 accumulators spilled)
SPARE_REGISTERS = 4
# products per output under which a register tile is kept small enough for the stack
SHORT_REDUCTION = 256


# LLVM answers with the build machine's width for generic x86 CPU names; these are fixed.
X86_LEVEL_BITS = {"x86-64": 128, "x86-64-v2": 128, "x86-64-v3": 256, "x86-64-v4": 512}


def simd_lanes(target: Target, bits: int = 32) -> int:
    """float32 lanes of the target's widest vector register (16 with AVX-512, 8 with AVX2,
    4 with NEON)."""
    mcpu = str(target.attrs.get("mcpu", ""))
    width = X86_LEVEL_BITS.get(mcpu) or _x86_bits(target)
    if width is None:
        try:
            width = int(llvm_get_vector_width(target))
        except Exception:  # an LLVM target TVM cannot query
            width = -1
    return max(1, (width if width > 0 else 128) // bits)


def _x86_bits(target: Target) -> int | None:
    """An x86 target's vector width from its features (None off x86): TVM 0.27's
    ``llvm_get_vector_width`` answers 512 for every x86 CPU name, AVX2-only ones (``znver3``,
    ``haswell``) included, which tiled their kernels for 32 zmm registers they lack."""
    if target.kind.name != "llvm":
        return None
    if not str(target.attrs.get("mtriple", "x86_64")).startswith(("x86_64", "i686", "i386")):
        return None
    try:
        for feature, bits in (("avx512f", 512), ("avx", 256)):
            if target_has_features(feature, target):
                return bits
    except Exception:  # a target LLVM cannot describe
        return None
    return 128


def vector_registers(target: Target) -> int:
    """SIMD registers the code generator allocates: 32 on AArch64 and with AVX-512, 16 on
    other x86 (AVX2's ymm) and 32-bit ARM."""
    if str(target.attrs.get("mtriple", "")).startswith(("aarch64", "arm64")):
        return 32
    return 32 if simd_lanes(target) >= 16 else 16


def register_tile(width: int, channels: int, lanes: int, registers: int, most: int) -> tuple:
    """``(pixels, channels)`` of a register tile over an output row of ``width`` pixels and
    ``channels`` channels: the channel block :func:`channel_block` picks, or half of it, with
    pixels (a divisor of ``width``) up to ``most`` accumulator vectors in all, whichever holds
    more accumulators, at most all registers but :data:`SPARE_REGISTERS`. With 32 registers
    the full block always wins; with AVX2's 16, two vectors of channels leave room for 6
    pixels (a 14-pixel row gets 2 x 2 vectors), one vector for 12 (a 14-pixel row gets 7 x 1,
    the larger tile)."""
    block = channel_block(channels, lanes)
    sizes = (block, block // 2) if block == 2 * lanes else (block,)
    by_vectors = {-(-size // lanes): size for size in sizes}
    most = min(most, registers - SPARE_REGISTERS)
    limits = {v: min(most // v, (registers - v - 1) // v) for v in by_vectors}
    pixels, vectors = most_accumulators(width, limits)
    return pixels, by_vectors[vectors]


def _static(func: tirx.PrimFunc) -> bool:
    """Every parameter is a buffer of static shape."""
    try:
        return all(isinstance(d, tirx.IntImm) for p in func.params for d in p.shape)
    except AttributeError:  # a scalar parameter: a symbolic dimension is passed in
        return False


def channel_block(channels: int, lanes: int) -> int:
    """Channels per register tile: two or one full vectors when they divide the channels,
    else the largest divisor up to two vectors (LLVM splits odd vector lengths)."""
    for block in (2 * lanes, lanes, max(lanes // 2, 1)):
        if channels % block == 0:
            return block
    return largest_divisor(channels, 2 * lanes)


def _has_condition(sch: s_tir.Schedule, block) -> bool:
    return "if_then_else" in str(sch.get(block).body)


class ChannelsLastKernels(CPUScheduleRule):
    """Register-tiled, vectorized, parallel schedules for channels_last CPU kernels."""

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool):
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        if not _static(func):
            return None  # symbolic shapes (dynamic batch): leave to the generic path
        sch = s_tir.Schedule(func)
        root = find_block(sch, "root")
        if root is None:  # hand-written TIR without blocks (sort, scan): nothing to do
            return None
        blocks = sch.get_child_blocks(root)
        lanes, registers = simd_lanes(target), vector_registers(target)
        names = {sch.get(b).name_hint for b in blocks}
        for stage in ("input", "output"):
            if f"winograd_{stage}" in names:
                return schedule_winograd(func, sch, stage, lanes)
        reductions = [b for b in blocks if is_reduction(sch, b)]
        if not reductions:
            return schedule_injective(sch, blocks, lanes)
        if len(reductions) == 1 and sums_every_pixel(sch, reductions[0], lanes):
            trial = s_tir.Schedule(func)
            name = sch.get(reductions[0]).name_hint
            if schedule_global_sum(trial, find_block(trial, name), lanes):
                return trial
        others = [sch.get(b).name_hint for b in blocks if not is_reduction(sch, b)]
        if len(reductions) == 1 and tile_reduction(sch, reductions[0], lanes, registers):
            for name in others:  # stages neither inlined nor folded into the tile (e.g. pads)
                block = find_block(sch, name)
                if block is not None:
                    vectorize_block(sch, block, lanes)
            return sch
        return schedule_rows(s_tir.Schedule(func), lanes)


def schedule_winograd(func: tirx.PrimFunc, sch: s_tir.Schedule, stage: str, lanes: int):
    """A Winograd transform kernel (``stage``: input or output) by its rule in
    :mod:`bridge.schedules.winograd`; should that rule refuse (a fused shape it does not
    expect), the generic injective schedule: never a failed build."""
    if attempt(getattr(winograd, f"schedule_{stage}"), sch, lanes):
        return sch
    sch = s_tir.Schedule(func)
    return schedule_injective(sch, sch.get_child_blocks(sch.get_sblock("root")), lanes)


def schedule_injective(sch: s_tir.Schedule, blocks, lanes: int) -> s_tir.Schedule:
    """Inline intermediate stages, then fuse + parallelize + vectorize what remains. A
    per-channel factor (:data:`~bridge.quant.elementwise.CHANNEL_FACTOR`) stays a stage of
    its own: computed once per channel, before the loop that reads it per element."""
    for block in blocks[:-1]:
        if not sch.get(block).name_hint.startswith(CHANNEL_FACTOR):
            attempt(sch.compute_inline, block)
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        vectorize_block(sch, block, lanes)
    return sch


def tile_reduction(sch: s_tir.Schedule, block, lanes: int, registers: int = 32) -> bool:
    """Register-tile one reduction block whose last spatial axis is contiguous in its output
    (a tile for ``registers`` vector registers)."""
    kinds = iter_kinds(sch, block)
    loops = sch.get_loops(block)
    n_spatial = kinds.index(COMM_REDUCE)
    if len(loops) != len(kinds) or any(k != COMM_REDUCE for k in kinds[n_spatial:]):
        return False
    if n_spatial < 1 or not _contiguous_output_axis(sch, block, n_spatial):
        return False
    channels = loop_extent(sch.get(loops[n_spatial - 1]))
    width = loop_extent(sch.get(loops[n_spatial - 2])) if n_spatial >= 2 else 1
    vector = channel_block(channels, lanes)

    window = loop_extent(sch.get(loops[-1])) == 1  # depthwise: no input channels to sum
    for producer in sch.get_producers(block):  # pure copies (e.g. a zero-size pad): inline
        if not is_reduction(sch, producer) and (window or not _has_condition(sch, producer)):
            attempt(sch.compute_inline, producer)
    write_back = sch.cache_write(block, 0, "local")
    _inline_epilogue(sch, write_back)

    loops = sch.get_loops(block)
    spatial, reduce = loops[:n_spatial], loops[n_spatial:]
    if n_spatial >= 2:
        most = _accumulators(sch, block, lanes, reduce)
        tile, vector = register_tile(width, channels, lanes, registers, most)
    ch_outer, ch_inner = sch.split(spatial[-1], [None, vector])
    if n_spatial >= 2:
        px_outer, px_inner = sch.split(spatial[-2], [None, tile])
        outer = _outer_order(sch, block, [*spatial[:-2], px_outer], ch_outer)
        sch.reorder(*outer, *reduce, px_inner, ch_inner)
    else:
        px_inner = None
        outer = [ch_outer]
        sch.reorder(ch_outer, *reduce, ch_inner)
    fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    sch.parallel(fused)
    sch.reverse_compute_at(write_back, fused)
    sch.vectorize(ch_inner)
    if px_inner is not None:
        sch.unroll(px_inner)
    if window:
        _unroll_taps(sch, reduce)
    sch.vectorize(sch.get_loops(write_back)[-1])
    init = sch.decompose_reduction(block, reduce[0])
    sch.vectorize(sch.get_loops(init)[-1])
    return True


def _accumulators(sch: s_tir.Schedule, block, lanes: int, reduce: list) -> int:
    """Accumulator vectors per register tile: :data:`MAX_ACCUMULATORS`, or fewer where a short
    reduction (under :data:`SHORT_REDUCTION` products per output) would otherwise pay a
    workspace-pool allocation per tile: the tile's accumulators then stay under
    :data:`~bridge.schedules.stack.STACK_BYTES`, on the stack. Long reductions keep the larger
    tile, whose allocation is small beside its work."""
    if loops_product(sch, reduce) >= SHORT_REDUCTION:
        return MAX_ACCUMULATORS
    accumulator = tvm.DataType(sch.get(block).writes[0].source.dtype).bits // 8
    return max(1, min(MAX_ACCUMULATORS, (STACK_BYTES - 1) // (lanes * accumulator)))


def _outer_order(sch: s_tir.Schedule, block, pixels: list, ch_outer) -> list:
    """The tile loops, outermost first: pixel tiles outside channel blocks (each input pixel
    read once), unless :func:`weights_first` (each channel block's weights swept over every
    pixel while they sit in cache)."""
    shared = weights_first(sch, block, len(pixels), SWEPT_FLOAT_WEIGHTS)
    if shared is None:
        return [*pixels, ch_outer]
    inside = [p for i, p in enumerate(pixels) if i not in shared]
    return [*[pixels[i] for i in shared], ch_outer, *inside]


def schedule_rows(sch: s_tir.Schedule, lanes: int) -> s_tir.Schedule | None:
    """Row kernels (softmax's and layer norm's steps, sum/max/mean over the last axis): every
    reduction runs over the innermost axis of what it reads. Each row is computed whole under
    one parallel loop (the output's leading axes), its reductions accumulated in ``lanes``
    vector partial results (rfactor) and its elementwise steps vectorized; None when the kernel
    has another shape (TVM's generic rule then takes it)."""
    root = sch.get_sblock("root")
    reductions = [b for b in sch.get_child_blocks(root) if is_reduction(sch, b)]
    if not reductions or not all(_reduces_innermost(sch, b) for b in reductions):
        return None
    try:
        partials = [_vector_partials(sch, block, lanes) for block in reductions]
        output = sch.get_child_blocks(root)[-1]
        loops = sch.get_loops(output)
        if len(loops) < 2:
            return None
        row = sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0]
        for block in reversed(sch.get_child_blocks(root)[:-1]):
            sch.compute_at(block, row, preserve_unit_loops=True)
        sch.parallel(row)
        partial_names = {sch.get(b).name_hint for b in partials if b is not None}
        for block in sch.get_child_blocks(row):
            _vectorize_row_step(sch, block, row, lanes, sch.get(block).name_hint in partial_names)
    except Exception:  # a primitive refused (e.g. a step that does not feed the output)
        return None
    return sch


def _reduces_innermost(sch: s_tir.Schedule, block) -> bool:
    """One reduction iterator, the innermost, indexing the last axis of every input."""
    stmt = sch.get(block)
    kinds = iter_kinds(sch, block)
    if kinds[-1] != COMM_REDUCE or kinds.count(COMM_REDUCE) != 1:
        return False
    k = stmt.iter_vars[-1].var
    output = stmt.writes[0].source
    inputs = [r for r in stmt.reads if not r.source.same_as(output)]
    return bool(inputs) and all(r.region and uses(r.region[-1].min, k) for r in inputs)


def _vector_partials(sch: s_tir.Schedule, block, lanes: int):
    """Split the reduction into vector-wide partial results (an rfactor block), so the long
    part of it vectorizes; None when no vector width of 4+ lanes divides a longer extent."""
    k = sch.get_loops(block)[-1]
    extent = loop_extent(sch.get(k))
    width = vector_divisor(extent, lanes)
    if width is None or extent == width:
        return None
    _, lane = sch.split(k, [None, width])
    return sch.rfactor(lane, 0)


def _vectorize_row_step(sch: s_tir.Schedule, block, row, lanes: int, partial: bool) -> None:
    loops = sch.get_loops(block)
    inner = loops[[sch.get(loop).same_as(sch.get(row)) for loop in loops].index(True) + 1 :]
    if partial and not reads_bool(sch, block):
        # loops: lane (the rfactor axis, first), unit loops, the remaining reduction
        lane, reduce = inner[0], inner[-1]
        sch.reorder(reduce, lane)
        sch.vectorize(lane)
        init = sch.decompose_reduction(block, reduce)
        sch.vectorize(sch.get_loops(init)[-1])
    elif inner and not is_reduction(sch, block) and not reads_bool(sch, block):
        extent = loop_extent(sch.get(inner[-1]))
        width = vector_divisor(extent, lanes)
        if width is not None and extent > width:
            sch.vectorize(sch.split(inner[-1], [None, width])[1])
        elif extent and 1 < extent <= lanes:
            sch.vectorize(inner[-1])


def _contiguous_output_axis(sch: s_tir.Schedule, block, n_spatial: int) -> bool:
    """The last spatial iterator indexes the output's last axis and some input's last axis."""
    stmt = sch.get(block)
    last = stmt.iter_vars[n_spatial - 1].var
    out = stmt.writes[0].region
    if not out or not uses(out[-1].min, last):
        return False
    return any(r.region and uses(r.region[-1].min, last) for r in stmt.reads)


def _same_shape(sch: s_tir.Schedule, producer, consumer) -> bool:
    shape = lambda block: [int(d) for d in sch.get(block).writes[0].source.shape]  # noqa: E731
    return shape(producer) == shape(consumer)


def _inline_epilogue(sch: s_tir.Schedule, write_back) -> None:
    """Fold elementwise consumers (bias, BN, activation, residual add) into the write-back."""
    _merge_elementwise_chain(sch, write_back)
    while True:
        consumers = sch.get_consumers(write_back)
        # Only a sole consumer: inlining one of several would drop the buffer the others read.
        if len(consumers) != 1 or is_reduction(sch, consumers[0]):
            return
        # A consumer of another shape (a channel slice after a pool) would be written over the
        # producer's domain: out of bounds.
        if not _same_shape(sch, write_back, consumers[0]):
            return
        if not attempt(sch.reverse_compute_inline, consumers[0]):
            return


def _merge_elementwise_chain(sch: s_tir.Schedule, write_back) -> None:
    """Inline the epilogue's intermediate steps into their readers, so that an activation that
    reads its input twice (swish ``x * sigmoid(x)``, hard-swish) becomes one expression of
    the convolution's value instead of full-size buffers written and read back in between."""
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    names = [sch.get(b).name_hint for b in blocks]
    start = names.index(sch.get(write_back).name_hint) + 1
    for name in names[start:-1]:  # the kernel's output block stays
        block = find_block(sch, name)
        if (
            block is not None
            and not is_reduction(sch, block)
            and _same_shape(sch, write_back, block)
            and len(sch.get_consumers(block)) <= 2
        ):
            attempt(sch.compute_inline, block)


def _unroll_taps(sch: s_tir.Schedule, reduce) -> None:
    """Unroll a depthwise window's inner taps (up to 7) so that neighbouring output pixels
    share each loaded input vector."""
    if len(reduce) >= 2 and (loop_extent(sch.get(reduce[-2])) or 8) <= 7:
        sch.unroll(reduce[-2])
