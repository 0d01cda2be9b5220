"""Elementwise integer operators with TFLite's arithmetic: ADD, SUB, MUL and table lookups.

Quantizations are ``(scale, zero_point)`` pairs; ``clamp`` is the fused activation's range in
the output's integers (:func:`bridge.quant.fixed_point.activation_range`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax, te, tirx, topi

from bridge.quant import fixed_point

TABLE = 256  # entries of an 8-bit lookup table
LOOKUP = "bridge_lookup"  # the lookup kernel's name and block (lookup_compute)
ADD = "bridge_add"  # the linear ADD's kernel and block (linear_add_compute)
CHANNEL_FACTOR = "bridge_channel_factor"  # a per-channel factor block (_channel_factors)
EIGHT_BIT = ("int8", "uint8")
ADD_HEADROOM = 20  # TFLite's left shift for 8-bit ADD operands
Quant = tuple[float, int]
Operand = tuple[relax.Expr, Quant]  # an 8-bit tensor and its (scale, zero_point)


def add(
    a: Operand, b: Operand, out: Quant, clamp: tuple[int, int], dtype: str, linear: bool = True
) -> relax.Expr:
    """TFLite's integer ADD: each input less its zero point, shifted left by 20 bits and
    scaled to twice the larger input scale (reference rounding), summed, then scaled to the
    output (``MultiplyByQuantizedMultiplierSmallerThanOneExp``: the reference rounding of
    :func:`bridge.quant.fixed_point.requantize`, whose one fused rounding step saves the
    high multiply's separate shift and the zero point's add); broadcasting as Relax's
    ``add``. Where one int32 linear form gives the same result for every pair of 8-bit
    inputs (:func:`linear_add_form`), that form instead (``linear=False``: never)."""
    form = None
    if linear and _dtype(a[0]) == _dtype(b[0]) == dtype and dtype in EIGHT_BIT:
        form = linear_add_form(a[1], b[1], out, clamp, dtype)
    if form is not None:
        return linear_add(a[0], b[0], form, clamp, dtype)
    operands, multiplier = add_multipliers(a[1], b[1], out)
    scaled = [scale_operand(x, zp, m) for (x, (_, zp)), m in zip((a, b), operands, strict=True)]
    total = relax.op.add(*scaled)  # int32: each operand is below 2**28
    return fixed_point.requantize(total, multiplier, int(out[1]), clamp, dtype, "double")


def add_multipliers(
    qa: Quant, qb: Quant, out: Quant
) -> tuple[list[fixed_point.Multiplier], fixed_point.Multiplier]:
    """TFLite's ADD parameters: each input's multiplier to twice the larger input scale, and
    the sum's (with its 20 bits of headroom) to the output scale."""
    twice = 2 * np.float64(max(np.float32(qa[0]), np.float32(qb[0])))
    operands = [fixed_point.quantize_multiplier(np.float64(q[0]) / twice) for q in (qa, qb)]
    real = twice / ((1 << ADD_HEADROOM) * np.float64(out[0]))
    return operands, fixed_point.quantize_multiplier(real)


@dataclass(frozen=True)
class LinearForm:
    """``clamp((a * first + b * second + addend) >> shift)``, in int32, for 8-bit ``a``, ``b``."""

    first: int
    second: int
    addend: int
    shift: int


LINEAR_SEARCH = 6  # each slope tried within this many units of its real value
LINEAR_SHIFTS = 3  # and the largest shifts that keep every sum in int32, this many of them


def linear_add_form(
    qa: Quant, qb: Quant, out: Quant, clamp: tuple[int, int], dtype: str
) -> LinearForm | None:
    """An int32 linear form that gives TFLite's integer ADD (:func:`add_table`) for all
    65536 pairs of 8-bit inputs, or None. The reference arithmetic is two 64-bit rescales of
    20-bit-headroom operands and a 64-bit rounding multiply (about 70 vector instructions per
    16 outputs of a residual epilogue); its result is ``clamp(round(a * s_a + b * s_b + c))``
    up to roundings far below one output step, so integer slopes near ``s * 2**shift`` and an
    addend reproduce it almost always: each pair bounds the addend from both sides (its
    output times ``2**shift``, and the next; one side only where the clamp holds), and a
    nonempty intersection is a form, checked again on every pair. XNNPACK's ADD has this
    shape, though rounded its own way; here the table decides, so bridge's ADD stays
    bit-exact with TFLite's reference."""
    table = add_table(qa, qb, out, clamp, dtype)
    low, high = fixed_point.INT_RANGE[dtype]
    x = np.arange(low, high + 1, dtype=np.int64)
    slopes = [np.float64(q[0]) / np.float64(out[0]) for q in (qa, qb)]
    above, below = table > clamp[0], table < clamp[1]
    extent = max(abs(low), abs(high))
    steps = sorted(
        (
            (i, j)
            for i in range(-LINEAR_SEARCH, LINEAR_SEARCH + 1)
            for j in range(-LINEAR_SEARCH, LINEAR_SEARCH + 1)
        ),
        key=lambda d: (abs(d[0]) + abs(d[1]), d),
    )

    def centre(shift: int) -> list[int]:
        return [round(float(s) * (1 << shift)) for s in slopes]

    def fits(shift: int) -> bool:  # every sum of the search below 2**31, both slopes positive
        slope = centre(shift)
        zero = (abs(int(out[1])) + 2 * extent) << shift
        reach = extent * (sum(slope) + 2 * LINEAR_SEARCH) + zero
        return reach < 1 << 31 and min(slope) > LINEAR_SEARCH

    shifts = [shift for shift in range(30, 4, -1) if fits(shift)][:LINEAR_SHIFTS]
    for shift in shifts:
        unit, middle = 1 << shift, centre(shift)
        for i, j in steps:
            first, second = middle[0] + i, middle[1] + j
            partial = x[:, None] * first + x[None, :] * second
            floor = (table * unit - partial)[above].max(initial=-(1 << 40))
            ceiling = ((table + 1) * unit - partial)[below].min(initial=1 << 40)
            if floor >= ceiling:
                continue
            total = partial + int(floor)
            if np.abs(total).max() >= 1 << 31:
                break
            if np.array_equal(np.clip(total >> shift, *clamp), table):
                return LinearForm(int(first), int(second), int(floor), shift)
    return None


def add_table(qa: Quant, qb: Quant, out: Quant, clamp: tuple[int, int], dtype: str) -> np.ndarray:
    """TFLite's integer ADD (reference rounding, as :func:`add` computes it) for every pair
    of 8-bit inputs: ``table[a - min, b - min]``, int64."""
    low, high = fixed_point.INT_RANGE[dtype]
    x = np.arange(low, high + 1, dtype=np.int64)
    operands, multiplier = add_multipliers(qa, qb, out)
    wide = (-(1 << 62), 1 << 62)
    scaled = [
        multiply_table((x - int(q[1])) << ADD_HEADROOM, m, 0, wide, "int64")
        for q, m in zip((qa, qb), operands, strict=True)
    ]
    total = scaled[0][:, None] + scaled[1][None, :]
    return multiply_table(total, multiplier, int(out[1]), clamp, "int64")


def linear_add(
    a: relax.Expr, b: relax.Expr, form: LinearForm, clamp: tuple[int, int], dtype: str
) -> relax.Expr:
    """``clamp((a * first + b * second + addend) >> shift)`` as ``dtype`` (two int32
    products, two adds, a shift and the clamp: :func:`linear_add_form`), broadcasting as
    Relax's ``add``. In a block builder it is one kernel of its own (:func:`linear_add_compute`)
    taking both 8-bit tensors, so fusion puts all of it after the convolution that produces
    one input; as Relax operators, the widening product of the other input would fuse into
    *its* producer, which would then write it out as int32, four times the bytes."""
    builder = relax.BlockBuilder.current()
    if builder is not None and not _nested_builder():
        compute = functools.partial(linear_add_compute, form=form, clamp=clamp, dtype=dtype)
        return builder.call_te(compute, a, b, primfunc_name_hint=ADD)
    terms = [
        relax.op.multiply(relax.op.astype(x, "int32"), _i32(slope))
        for x, slope in ((a, form.first), (b, form.second))
    ]
    total = relax.op.add(relax.op.add(*terms), _i32(form.addend))
    shifted = relax.op.right_shift(total, _i32(form.shift))
    return relax.op.astype(relax.op.clip(shifted, int(clamp[0]), int(clamp[1])), dtype)


def linear_add_compute(
    a: te.Tensor, b: te.Tensor, form: LinearForm, clamp: tuple[int, int], dtype: str
) -> te.Tensor:
    """:func:`linear_add` as TE stages (``topi``'s broadcasting ``add``), its last named
    ``ADD``."""
    terms = [
        topi.multiply(topi.cast(x, "int32"), tirx.const(slope, "int32"))
        for x, slope in ((a, form.first), (b, form.second))
    ]
    total = topi.add(topi.add(*terms), tirx.const(form.addend, "int32"))
    clipped = topi.clip(topi.right_shift(total, tirx.const(form.shift, "int32")), *clamp)
    return te.compute(clipped.shape, lambda *i: tirx.Cast(dtype, clipped(*i)), name=ADD)


def scale_operand(x: relax.Expr, zero_point: int, multiplier: fixed_point.Multiplier) -> relax.Expr:
    """:func:`bridge.quant.fixed_point.scale_input` with ADD's 20 bits of headroom, of an 8-bit
    tensor, exactly, in int32 lanes instead of int64 (a residual ADD fused into a convolution
    runs this per output): with ``c = x - zp`` (``|c| <= 255``) and the significand
    ``m = hi * 2**11 + lo``, ``((c << 20) * m + 2**30) >> 31 == c * hi + ((c * lo + 2**10) >> 11)``
    (``c * hi * 2**11`` is a whole multiple of the divisor), and ``|c * hi| < 2**28``; then
    ``RoundingDivideByPOT`` as the reference (halves away from zero). The sum of two such
    operands stays below 2**29."""
    significand, right = int(multiplier.significand[0]), -int(multiplier.shift[0])
    bits = 31 - ADD_HEADROOM
    hi, lo = significand >> bits, significand & ((1 << bits) - 1)
    centred = relax.op.astype(x, "int32")
    if zero_point:
        centred = relax.op.subtract(centred, _i32(int(zero_point)))
    fraction = relax.op.right_shift(
        relax.op.add(relax.op.multiply(centred, _i32(lo)), _i32(1 << (bits - 1))), _i32(bits)
    )
    return _divide_by_pot(relax.op.add(relax.op.multiply(centred, _i32(hi)), fraction), right)


def subtract(a: Operand, b: Operand, out: Quant, clamp: tuple[int, int], dtype: str) -> relax.Expr:
    """TFLite's integer SUB: its ADD with the second input's multiplier negated, which is the
    ADD of ``-(b - zp_b)``: ``~b`` (still 8-bit: ``-b - 1`` for int8, ``255 - b`` for uint8)
    with the zero point that makes it so (``-zp_b - 1``, ``255 - zp_b``)."""
    x, (scale, zero_point) = b
    flipped = -int(zero_point) - 1 if dtype == "int8" else 255 - int(zero_point)
    return add(a, (relax.op.bitwise_not(x), (scale, flipped)), out, clamp, dtype)


def multiply(a: Operand, b: Operand, out: Quant, clamp: tuple[int, int], dtype: str) -> relax.Expr:
    """TFLite's integer MUL: the product of the inputs less their zero points, requantized
    by ``scale_a * scale_b / output_scale`` (reference rounding). When both inputs are
    functions of one 8-bit tensor (swish: ``x * LOGISTIC(x)``), the whole product is a
    function of that tensor too: one table lookup (:func:`multiply_table`)."""
    real = np.float64(a[1][0]) * np.float64(b[1][0]) / np.float64(out[0])
    multiplier = fixed_point.quantize_multiplier(real)
    unary = _common_source(a[0], b[0])
    if unary is not None:
        x, tables, low = unary
        centred = [t.astype(np.int64) - int(zp) for t, (_, zp) in zip(tables, (a[1], b[1]))]
        table = multiply_table(centred[0] * centred[1], multiplier, int(out[1]), clamp, dtype)
        return lookup(x, table, low)
    centred = [
        relax.op.subtract(relax.op.astype(x, "int32"), relax.const(int(zp), "int32"))
        for x, (_, zp) in (a, b)
    ]
    if narrow_multiplier(multiplier):
        scaled = _channel_scaled(a, b, centred, multiplier, int(out[1]), clamp, dtype)
        if scaled is not None:
            return scaled
    product = relax.op.multiply(*centred)
    if narrow_multiplier(multiplier):
        return requantize_product(product, multiplier, int(out[1]), clamp, dtype)
    return fixed_point.requantize(product, multiplier, int(out[1]), clamp, dtype, "double")


PRODUCT_BOUND = 255 * 255  # |(a - zp_a) * (b - zp_b)| of two 8-bit values


def narrow_multiplier(multiplier: fixed_point.Multiplier) -> bool:
    """One multiplier below 1 with a full Q31 significand: :func:`requantize_product`
    applies."""
    significand, shift = int(multiplier.significand[0]), int(multiplier.shift[0])
    return multiplier.significand.size == 1 and shift <= 0 and (1 << 30) <= significand < (1 << 31)


def requantize_product(
    product: relax.Expr, multiplier: fixed_point.Multiplier, zero_point: int, clamp, dtype: str
) -> relax.Expr:
    """:func:`bridge.quant.fixed_point.requantize` (reference rounding) of an int32 product
    of two centred 8-bit values (``|p| <= 255**2 < 2**16``), exactly, in int32 lanes instead
    of int64: with the significand ``m = hi * 2**16 + mid * 2**8 + lo`` (``hi < 2**15``),
    ``(p * m + 2**30) >> 31 == (p * hi + ((p * mid + ((p * lo) >> 8)) >> 8) + 2**14) >> 15``
    (each dropped fraction is below one unit of an integer sum, so the floors agree), and no
    partial sum leaves int32 (``|p * hi| < 65025 * 2**15``)."""
    significand, right = int(multiplier.significand[0]), -int(multiplier.shift[0])
    hi, mid, lo = significand >> 16, (significand >> 8) & 0xFF, significand & 0xFF
    low = relax.op.right_shift(relax.op.multiply(product, _i32(lo)), _i32(8))
    middle = relax.op.right_shift(relax.op.add(relax.op.multiply(product, _i32(mid)), low), _i32(8))
    high = relax.op.add(relax.op.multiply(product, _i32(hi)), middle)
    y = _divide_by_pot(relax.op.right_shift(relax.op.add(high, _i32(1 << 14)), _i32(15)), right)
    if zero_point:
        y = relax.op.add(y, _i32(zero_point))
    return relax.op.astype(relax.op.clip(y, int(clamp[0]), int(clamp[1])), dtype)


def _channel_scaled(
    a: Operand, b: Operand, centred: list, multiplier, zero_point: int, clamp, dtype: str
) -> relax.Expr | None:
    """:func:`requantize_product` of ``a * b`` where one operand holds one value per channel
    (squeeze-and-excite's scale: ``(1, 1, 1, C)``) and the other is a full tensor, folding
    the channel's factor into the significand: with ``M = (b - zp_b) * m`` split as
    ``Mh * 2**16 + Ml`` (``0 <= Ml < 2**16``, both computed per channel, in int32),
    ``(p * m + 2**30) >> 31 == (x * Mh + ((x * Ml) >> 16) + 2**14) >> 15`` for the full
    operand's ``x = a - zp_a``, and the rounding divide by ``2**right`` (halves away from
    zero) joins the same shift: ``(t + 2**(14 + right) - 2**15 * [t < 0]) >> (15 + right)``.
    Exact where no sum leaves int32 (checked from the zero points); else None."""
    types = [_tensor_type(x) for x, _ in (a, b)]
    if any(ty is None or str(ty.dtype) not in EIGHT_BIT for ty in types):
        return None  # the int32 bounds below are for 8-bit operands
    shapes = [_static_shape(ty) for ty in types]
    if None in shapes or len(shapes[0]) != len(shapes[1]) or len(shapes[0]) < 2:
        return None
    full = next((i for i in (0, 1) if _per_channel(shapes[1 - i], shapes[i])), None)
    if full is None:
        return None
    x, channel = centred[full], centred[1 - full]
    x_max, c_max = (_centred_bound(str(types[i].dtype), (a, b)[i][1][1]) for i in (full, 1 - full))
    significand, right = int(multiplier.significand[0]), -int(multiplier.shift[0])
    high = c_max * significand >> 16
    if x_max * (high + 1) + x_max + (1 << 14) + (1 << (14 + right)) + (1 << 15) >= 1 << 31:
        return None
    factor_high, factor_low = _channel_factors(channel, significand)
    t = relax.op.add(
        relax.op.add(
            relax.op.multiply(x, factor_high),
            relax.op.right_shift(relax.op.multiply(x, factor_low), _i32(16)),
        ),
        _i32(1 << 14),
    )
    if right > 0:
        below = relax.op.bitwise_and(relax.op.right_shift(t, _i32(31)), _i32(-(1 << 15)))
        t = relax.op.add(relax.op.add(t, _i32(1 << (14 + right))), below)
    y = relax.op.right_shift(t, _i32(15 + right))
    if zero_point:
        y = relax.op.add(y, _i32(zero_point))
    return relax.op.astype(relax.op.clip(y, int(clamp[0]), int(clamp[1])), dtype)


def _channel_factors(channel: relax.Expr, significand: int) -> tuple[relax.Expr, relax.Expr]:
    """``(Mh, Ml)`` of :func:`_channel_scaled` for the centred per-channel operand: ``M = c *
    m = Mh * 2**16 + Ml`` in int32 pieces (``Mh = c * (m >> 16) + ((c * (m & 0xFFFF)) >>
    16)``). In a block builder each is a kernel of its own (block :data:`CHANNEL_FACTOR`) that
    fusion joins to the product's kernel and the CPU schedule computes once per channel
    before the product's loop, instead of once per element."""
    low = relax.op.multiply(channel, _i32(significand & 0xFFFF))
    high = relax.op.add(
        relax.op.multiply(channel, _i32(significand >> 16)), relax.op.right_shift(low, _i32(16))
    )
    factors = (high, relax.op.bitwise_and(low, _i32(0xFFFF)))
    builder = relax.BlockBuilder.current()
    if builder is None or _nested_builder():
        return factors
    return tuple(
        builder.call_te(_copy_compute, builder.emit(factor), primfunc_name_hint=CHANNEL_FACTOR)
        for factor in factors
    )


def _copy_compute(x: te.Tensor) -> te.Tensor:
    return te.compute(x.shape, lambda *i: x(*i), name=CHANNEL_FACTOR)


def _tensor_type(x: relax.Expr) -> relax.TensorType | None:
    """``x``'s tensor type, normalizing an unnormalized call in the current block builder."""
    ty = getattr(x, "ty", None)
    builder = relax.BlockBuilder.current()
    if ty is None and builder is not None:
        ty = getattr(builder.normalize(x), "ty", None)
    return ty if isinstance(ty, relax.TensorType) else None


def _static_shape(ty: relax.TensorType) -> tuple[int, ...] | None:
    values = getattr(getattr(ty, "shape", None), "values", None)
    if values is None or not all(isinstance(v, tirx.IntImm) for v in values):
        return None
    return tuple(int(v) for v in values)


def _per_channel(small: tuple[int, ...], full: tuple[int, ...]) -> bool:
    """``small`` holds one value per channel (and batch) of ``full``: every other axis 1, and
    ``full`` has more than one position per channel."""
    return (
        small[-1] == full[-1]
        and all(s == 1 for s in small[1:-1])
        and small[0] in (1, full[0])
        and int(np.prod(full[1:-1])) > 1
    )


def _centred_bound(dtype: str, zero_point: int) -> int:
    """The largest ``|x - zero_point|`` of an 8-bit ``dtype``."""
    low, high = fixed_point.INT_RANGE[dtype]
    return max(abs(low - int(zero_point)), abs(high - int(zero_point)))


def _i32(value: int) -> relax.Expr:
    return relax.const(value, "int32")


def _divide_by_pot(y: relax.Expr, right: int) -> relax.Expr:
    """``RoundingDivideByPOT`` of int32 ``y`` by ``2**right``: halves away from zero."""
    if right <= 0:
        return y
    down = relax.op.right_shift(y, _i32(31))  # -1 below zero
    return relax.op.right_shift(
        relax.op.add(relax.op.add(y, _i32(1 << (right - 1))), down), _i32(right)
    )


def multiply_table(
    product: np.ndarray, multiplier: fixed_point.Multiplier, zero_point: int, clamp, dtype: str
) -> np.ndarray:
    """:func:`bridge.quant.fixed_point.requantize` (reference rounding) of int64 products, in
    numpy: ``(p << left) * m`` rounded by ``(. + 2**30) >> 31``, then divided by
    ``2**right`` rounding halves away from zero, plus the zero point, clamped."""
    shift = int(multiplier.shift[0])
    left, right = max(shift, 0), max(-shift, 0)
    scaled = np.asarray(product, np.int64) << left
    high = (scaled * int(multiplier.significand[0]) + (1 << 30)) >> 31
    if right:
        high = (high + (1 << (right - 1)) - (high < 0)) >> right
    return np.clip(high + zero_point, int(clamp[0]), int(clamp[1])).astype(dtype)


def _common_source(a: relax.Expr, b: relax.Expr) -> tuple[relax.Expr, list, int] | None:
    """``(x, [values of a, values of b], low)`` when ``a`` and ``b`` are each ``x`` or a
    constant-table lookup of ``x`` (an 8-bit tensor), both tables indexed by ``x - low``."""
    sources = [lookup_source(a) or (a, None, None), lookup_source(b) or (b, None, None)]
    if sources[0][1] is None and sources[1][1] is None:
        return None
    x = sources[0][0]
    if not _bound(x).same_as(_bound(sources[1][0])):
        return None
    dtype = _dtype(x)
    if dtype not in ("int8", "uint8"):
        return None
    low, high = fixed_point.INT_RANGE[dtype]
    identity = np.arange(low, high + 1, dtype=np.int64)
    return x, [identity if t is None else t for _, t, _ in sources], low


def _dtype(x: relax.Expr) -> str | None:
    ty = getattr(x, "ty", None)
    return str(ty.dtype) if isinstance(ty, relax.TensorType) else None


def lookup(x: relax.Expr, table: np.ndarray | relax.Expr, low: int) -> relax.Expr:
    """``table[x - low]``: any unary function of an 8-bit tensor as a 256-entry table (a
    numpy array, or a Relax tensor computed in the graph). A constant table of an 8-bit tensor
    is indexed by the tensor's bytes read as uint8 (an int8 tensor's table rotated by 128), in
    a kernel of its own (:func:`lookup_compute`) that
    :mod:`bridge.schedules.int8_elementwise` turns into byte permutations where the CPU has
    them; outside a block builder, a ``take``."""
    if isinstance(table, np.ndarray) and table.size == TABLE and low in (-128, 0):
        values = relax.const(table if low == 0 else np.roll(table, low))
        builder = relax.BlockBuilder.current()
        if builder is not None and not _nested_builder():
            return builder.call_te(lookup_compute, x, values, primfunc_name_hint=LOOKUP)
        index = x if low == 0 else relax.op.astype(x, "uint8")
        return relax.op.take(values, relax.op.astype(index, "int32"), axis=0)
    index = relax.op.astype(x, "int32")
    if low:
        index = relax.op.subtract(index, relax.const(int(low), "int32"))
    values = table if isinstance(table, relax.Expr) else relax.const(table)
    return relax.op.take(values, index, axis=0, mode="clip")  # in range anyway


def _nested_builder() -> bool:
    """A block builder is open inside another: TVM's TFLite frontend builds each IF branch and
    WHILE body in a builder of its own and keeps only its Relax function, so a kernel added
    there (``call_te``) would be lost; those lookups stay a ``take``."""
    return len(relax.BlockBuilder._stack) > 1  # TVM keeps no public depth


def lookup_compute(x: te.Tensor, table: te.Tensor) -> te.Tensor:
    """``table[uint8(x)]`` elementwise: the lookup kernel (its block is named ``LOOKUP``)."""

    def entry(*index):
        return table[tirx.Cast("int32", tirx.Cast("uint8", x(*index)))]

    return te.compute(x.shape, entry, name=LOOKUP)


def lookup_source(expr: relax.Expr) -> tuple[relax.Expr, np.ndarray, int] | None:
    """``(x, table, low)`` of a constant-table :func:`lookup` of an 8-bit ``x`` (the table in
    ``x - low`` order), or None for any other expression."""
    expr = _bound(expr)
    if _is_call(expr, "relax.call_tir") and str(expr.args[0].name_hint).startswith(LOOKUP):
        x, values = expr.args[1].fields
        if not isinstance(values, tvm.ir.expr.Constant) or values.ty.dtype not in EIGHT_BIT:
            return None
        table = values.value.numpy()
        if _dtype(x) == "int8":
            return x, np.roll(table, -128), -128
        return (x, table, 0) if _dtype(x) == "uint8" else None
    if not (_is_call(expr, "relax.take") and isinstance(expr.args[0], tvm.ir.expr.Constant)):
        return None
    values = expr.args[0].value.numpy()
    index = _bound(expr.args[1])
    if values.shape != (TABLE,) or not _is_call(index, "relax.astype"):
        return None
    x = _bound(index.args[0])
    if _cast_to(x) == "uint8" and _dtype(x.args[0]) == "int8":
        return x.args[0], np.roll(values, -128), -128
    if (_dtype(index.args[0]) or _cast_to(x)) == "uint8":
        return index.args[0], values, 0
    return None


def _cast_to(expr: relax.Expr) -> str | None:
    """The target dtype of an ``astype`` call, else None."""
    return str(expr.attrs.dtype) if _is_call(expr, "relax.astype") else None


def _bound(expr: relax.Expr) -> relax.Expr:
    """The value bound to ``expr`` in the block being built (the converters' inputs are
    normalized: nested calls become variables), else ``expr``."""
    builder = relax.BlockBuilder.current()
    if builder is None or not isinstance(expr, relax.Var):
        return expr
    value = builder.lookup_binding(expr)
    return expr if value is None else value


def _is_call(expr: relax.Expr, name: str) -> bool:
    return isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name == name
