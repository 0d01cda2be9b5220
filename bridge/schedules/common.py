"""Schedule helpers shared by the CPU rules (:mod:`bridge.schedules.cpu`) and the Winograd
transforms (:mod:`bridge.schedules.winograd`): loop extents, iterator kinds, block lookup and the
fused, parallel, vectorized loop of an injective block."""

from __future__ import annotations

import math

import numpy as np
import tvm
from tvm import relax, s_tir, tirx

DATA_PAR, COMM_REDUCE = 0, 2


def loop_extent(loop) -> int | None:
    return int(loop.extent) if isinstance(loop.extent, tirx.IntImm) else None


def iter_kinds(sch: s_tir.Schedule, block) -> list[int]:
    return [int(iv.iter_type) for iv in sch.get(block).iter_vars]


def is_reduction(sch: s_tir.Schedule, block) -> bool:
    return COMM_REDUCE in iter_kinds(sch, block)


def largest_divisor(extent: int, limit: int) -> int:
    return next(d for d in range(min(limit, extent), 0, -1) if extent % d == 0)


def most_accumulators(width: int, limits: dict[int, int]) -> tuple[int, int]:
    """``(pixels, vectors)`` of the register tile holding the most accumulators: for each
    count of vectors of output channels, up to ``limits[vectors]`` pixels (a divisor of the
    row's ``width``, at least one); more vectors on a tie (fewer broadcasts per product)."""
    choices = [(largest_divisor(width, max(1, most)), vectors) for vectors, most in limits.items()]
    return max(choices, key=lambda choice: (choice[0] * choice[1], choice[1]))


def find_block(sch: s_tir.Schedule, name: str):
    """The block named ``name``, or None (inlined away, or never there). Looked up among the
    blocks first: a failed ``get_sblock`` renders the whole function into its error, and
    rendering a tensorized kernel logs TVMScript printer warnings to stderr."""
    if name not in block_names(sch):
        return None
    try:
        return sch.get_sblock(name)
    except Exception:  # more than one block of that name
        return None


def all_blocks(sch: s_tir.Schedule) -> list:
    """Every block of the function ``sch`` works on, the root included (none without
    blocks: hand-written TIR such as the lookup-table kernels)."""
    gv = sch.func_working_on or next(iter(sch.mod.functions))
    realize = sch.mod[gv].body
    if not isinstance(realize, s_tir.SBlockRealize):
        return []
    found, stack = [], [sch.get_sblock(realize.block.name_hint)]
    while stack:
        block = stack.pop()
        found.append(block)
        stack.extend(sch.get_child_blocks(block))
    return found


def block_names(sch: s_tir.Schedule) -> set[str]:
    """The names of every block of the function ``sch`` works on (none without blocks)."""
    return {sch.get(block).name_hint for block in all_blocks(sch)}


def loops_product(sch: s_tir.Schedule, loops) -> int:
    """The product of ``loops``' (static) extents: a kernel's work, or a tile's reduction."""
    return math.prod(int(sch.get(loop).extent) for loop in loops)


# Weights from which a kernel sweeps each block of output channels over all pixels (if its
# input is smaller). Below it the pixel order wins: MobileNetV2's 0.1-0.6 MiB int8 1x1
# convolutions ran 4-25% slower channel block first (the next kernel then reads rows the other
# core wrote), and ResNet50 int8 2-4% slower at 256 KiB. Float kernels sweep from 256 KiB
# (EfficientNetB0's and ResNet50's 0.3-0.9 MiB 1x1 convolutions over 14x14 and 7x7 maps, read
# from memory by both cores otherwise): EfficientNetB0 and ResNet50 fp32 0.98x, MobileNetV2
# unchanged (Xeon, 2 threads, batch 1).
SWEPT_WEIGHTS = 1 << 20
SWEPT_FLOAT_WEIGHTS = 1 << 18


def uses(expr, var) -> bool:
    """Whether ``expr`` refers to ``var``."""
    return any(v.same_as(var) for v in tirx.analysis.undefined_vars(expr))


def weights_first(
    sch: s_tir.Schedule, block, pixel_axes: int, least: int = SWEPT_WEIGHTS
) -> list[int] | None:
    """Whether a tiled product should run channel blocks outside pixel tiles: its weights (the
    reads not indexed by the innermost of its ``pixel_axes`` leading iterators) reach ``least``
    bytes (:data:`SWEPT_WEIGHTS`, :data:`SWEPT_FLOAT_WEIGHTS`) and outweigh its input, as in
    ResNet50's late 3x3 and 1x1 convolutions (1-9 MiB of weights over a 7x7 or 14x14 map,
    otherwise re-read from past the L2 cache for every row of pixels). Returns the pixel axes
    the weights are indexed by (kept outside the channel blocks: Winograd's tile positions), or
    None for pixels first."""
    stmt = sch.get(block)
    pixel_vars = [iv.var for iv in stmt.iter_vars[:pixel_axes]]
    indexes = lambda read, var: any(uses(r.min, var) for r in read.region)  # noqa: E731
    nbytes = lambda r: int(np.prod([int(d) for d in r.source.shape])) * r.source.dtype.bits // 8  # noqa: E731
    weights, swept, data = [], 0, 0
    for read in stmt.reads:
        if indexes(read, pixel_vars[-1]):
            data += nbytes(read)
        else:
            weights.append(read)
            swept += nbytes(read)
    if swept < least or swept <= data:
        return None
    return [i for i, v in enumerate(pixel_vars) if any(indexes(r, v) for r in weights)]


def reads_bool(sch: s_tir.Schedule, block) -> bool:
    return any(region.source.dtype == "bool" for region in sch.get(block).reads)


MIN_ROWS = 8  # vector rows (below: one loop over all elements, parallel by vector)
# Kernels smaller than this run on one thread: a parallel launch and its join (~1 us at two
# threads) cost more than splitting saves (squeeze-excite vectors and their 1x1 convolutions)
SERIAL_PRODUCTS = 1 << 16  # multiply-adds of a reduction kernel
SERIAL_ELEMENTS = 1 << 13  # outputs of an elementwise kernel


def parallel_unless_small(sch: s_tir.Schedule, loop, work: int, limit: int) -> None:
    """``sch.parallel(loop)``, unless the kernel's ``work`` is under ``limit``
    (:data:`SERIAL_PRODUCTS` or :data:`SERIAL_ELEMENTS`): then it stays one thread's loop."""
    if work >= limit:
        sch.parallel(loop)


def vectorize_block(sch: s_tir.Schedule, block, lanes: int) -> None:
    """Parallel outside, SIMD inside, for a top-level spatial block (not for a block loading a
    bool buffer, e.g. attention masks: TVM 0.27's LLVM codegen loads bool vectors as int8 ones
    and then refuses to store them). The inner loop is a row of the trailing axes whose
    elements are a whole number of vectors (:func:`vector_row`), the outer loop the rest: each
    vector's indices are then a row's base plus a constant, where a single loop over all
    elements leaves TVM's vectorizer one division per lane and axis (8x slower for an
    ``(8, 224, 224, 3)`` image's QUANTIZE, 2.7x for a padding copy)."""
    loops = sch.get_loops(block)
    if not loops or any(k != DATA_PAR for k in iter_kinds(sch, block)):
        return
    vectorize = not reads_bool(sch, block)
    extents = [loop_extent(sch.get(loop)) for loop in loops]
    if any(extent is None for extent in extents):
        return
    total = math.prod(extents)
    row = vector_row(extents, lanes) if vectorize else None
    if row is not None:
        outer = sch.fuse(*loops[:-row]) if len(loops) - row > 1 else loops[0]
        inner = sch.fuse(*loops[-row:]) if row > 1 else loops[-1]
        parallel_unless_small(sch, outer, total, SERIAL_ELEMENTS)
        period = channel_period(sch, block, extents, lanes)
        if period > 1 and math.prod(extents[-row:]) % (period * lanes) == 0:
            _, unrolled, vector = sch.split(inner, [None, period, lanes])
            sch.unroll(unrolled)
            sch.vectorize(vector)
        else:
            sch.vectorize(sch.split(inner, [None, lanes])[1])
        return
    if vectorize and _pixels_of_few_channels(extents, lanes):
        # e.g. a 225x225x3 padded image: parallel rows, pixels in order, each pixel's
        # channels one short vector (a fused loop's vector would divide every lane's index)
        outer = sch.fuse(*loops[:-2]) if len(loops) > 3 else loops[0]
        parallel_unless_small(sch, outer, total, SERIAL_ELEMENTS)
        sch.vectorize(loops[-1])
        return
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    inner = largest_divisor(total, lanes)  # e.g. 15 lanes for a 225x225x3 padded image
    inner = inner if inner >= lanes // 4 else 1
    if vectorize and inner > 1 and total > inner:
        outer, vector = sch.split(fused, [None, inner])
        parallel_unless_small(sch, outer, total, SERIAL_ELEMENTS)
        sch.vectorize(vector)
    elif total > 1:
        parallel_unless_small(sch, fused, total, SERIAL_ELEMENTS)


MAX_PERIOD = 8  # vectors unrolled per repeat of a per-channel operand's lanes


def channel_period(sch: s_tir.Schedule, block, extents: list[int], lanes: int) -> int:
    """Vectors after which a per-channel operand's lanes repeat, where a row of whole vectors
    reads one (an operand of as many elements as the last axis: an RGB input's normalization
    ``(x - mean[c]) / std[c]``) and its channels neither fill whole vectors nor divide one: 3
    for 3 channels of 16 lanes. The row then runs that many vectors unrolled per step, so each
    vector's channels are constants, where one vector per step indexes the operand by each
    lane's channel: a modulo and a gather per vector (EfficientNetB0's input normalization
    81 -> 15 us). 1 otherwise."""
    channels = extents[-1]
    if channels <= 1 or channels % lanes == 0 or lanes % channels == 0:
        return 1
    shapes = [region.source.shape for region in sch.get(block).reads]
    if not any(
        all(isinstance(d, tirx.IntImm) for d in shape)
        and math.prod(int(d) for d in shape) == channels
        for shape in shapes
    ):
        return 1
    period = math.lcm(channels, lanes) // lanes
    return period if period <= MAX_PERIOD else 1


def _pixels_of_few_channels(extents: list[int], lanes: int) -> bool:
    """Rows of pixels of fewer channels than a vector's lanes (an image's 3), with at least
    :data:`MIN_ROWS` rows."""
    return (
        len(extents) >= 3
        and 1 < extents[-1] < lanes
        and extents[-2] > 1
        and math.prod(extents[:-2]) >= MIN_ROWS
    )


def vector_row(extents: list[int], lanes: int) -> int | None:
    """How many trailing axes make a row of whole vectors (the fewest whose extents'
    product ``lanes`` divides), if the axes before them leave at least :data:`MIN_ROWS`
    rows; else None."""
    product = 1
    for row in range(1, len(extents)):
        product *= extents[-row]
        if product % lanes == 0:
            return row if int(np.prod(extents[:-row])) >= MIN_ROWS else None
    return None


def vector_divisor(extent: int | None, lanes: int) -> int | None:
    """The largest power of two up to ``lanes`` dividing ``extent``, if at least 4."""
    width = lanes
    while extent and width >= 4:
        if extent % width == 0:
            return width
        width //= 2
    return None


# --- Relax operands the weight rewrites look for ------------------------------------------------


def tensor_constant(expr: relax.Expr) -> bool:
    """Whether ``expr`` is a constant tensor (not a scalar literal)."""
    return isinstance(expr, tvm.ir.expr.Constant) and isinstance(expr.value, tvm.runtime.Tensor)


def float32_constant(expr: relax.Expr, rank: int) -> np.ndarray | None:
    """The value of a float32 constant of ``rank`` dimensions, else None."""
    if not tensor_constant(expr):
        return None
    value = expr.value.numpy()
    return value if value.dtype == np.float32 and value.ndim == rank else None


def float32_out(attrs) -> bool:
    """Whether an operator's ``out_dtype`` attribute leaves it float32."""
    dtype = attrs.out_dtype
    return dtype is None or str(dtype) in ("", "void", "float32")


def static_shape(expr: relax.Expr) -> tuple[int, ...] | None:
    """The shape of the Relax tensor ``expr`` when every dimension is a constant; None for a
    symbolic dimension, an unknown shape or a value that is no tensor."""
    info = getattr(expr, "ty", None)
    if not isinstance(info, relax.TensorType) or not isinstance(info.shape, relax.ShapeExpr):
        return None
    if not all(isinstance(d, tvm.tirx.IntImm) for d in info.shape.values):
        return None
    return tuple(int(d) for d in info.shape.values)


def static_tensor(expr: relax.Expr, dtypes: tuple[str, ...]) -> bool:
    """Whether ``expr`` is a tensor of static shape (:func:`static_shape`) of one of
    ``dtypes``."""
    return static_shape(expr) is not None and str(expr.ty.dtype) in dtypes


def static_float32(expr: relax.Expr) -> bool:
    """Whether ``expr`` is a float32 tensor of static shape."""
    return static_tensor(expr, ("float32",))


def use_counts(func: relax.Function) -> dict:
    """How many times each variable of ``func`` is read."""
    counts: dict = {}

    def visit(expr):
        if isinstance(expr, relax.Var):
            counts[expr] = counts.get(expr, 0) + 1

    relax.analysis.post_order_visit(func.body, visit)
    for param in func.params:  # post_order_visit does not count definitions
        counts[param] = counts.get(param, 0)
    return counts


def attempt(action, *args) -> bool:
    """``action(*args)`` (a schedule primitive), True if it did not refuse."""
    try:
        action(*args)
        return True
    except Exception:  # a primitive refusing is an expected outcome: the block stays as is
        return False
