"""Winograd convolutions F(4x4, 3x3) and F(2x2, 3x3) for 3x3 stride-1 convolutions with
constant weights (CPU).

A direct 3x3 convolution spends 9 multiply-adds per output pixel and input channel. Winograd's
minimal filtering computes an ``m x m`` output tile from an ``(m + 2) x (m + 2)`` input tile
with ``(m + 2)^2`` products per input channel instead of ``9 m^2`` (F(4, 3): 36 instead of 144),
at the price of two cheap linear transforms:

* input transform (``winograd_input``): every input tile ``d`` -> ``B^T d B``, giving
  ``V[(m + 2)^2, tiles, in]``;
* product (``winograd_product``): ``(m + 2)^2`` independent matrix products ``V[e] @ U[e]`` with
  the weights transformed once at compile time, ``U = G g G^T``, packed like every other
  weight (``[(m + 2)^2, out / block, in, block]``) so the default register-tiled reduction
  schedule applies;
* output transform (``winograd_output``): ``A^T M A`` per tile, written as NHWC; the
  convolution's epilogue (bias, batch norm, activation, residual add) fuses into it.

The transforms are written as explicit sums of the matrices' non-zero entries, chosen by the
tile position (a branch per position); the schedules here unroll those positions so every
branch is decided at compile time. ResNet-style networks spend about half their operations in
such convolutions. Transformed weights are larger (F(4, 3): 4x, F(2, 3): 1.8x) and are read
once per tile row of products, so a variant is used only where at least ``MIN_TILES`` tiles
share them: F(4, 3) on larger feature maps, F(2, 3) on small ones (ResNet50's 7x7 stage at
batch 1), the direct kernel below that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from tvm import relax, s_tir, te, tirx, topi

from bridge.schedules.common import find_block, vector_divisor, vectorize_block

MIN_TILES = 16  # tiles (batch x tile rows x tile columns) sharing each transformed weight
MIN_CHANNELS = 16  # input channels: the transforms' cost is amortized over the product's
OUT_EWISE_FUSABLE, OPAQUE = 4, 8  # TVM's OpPatternKind values


@dataclass(frozen=True)
class Variant:
    """F(m x m, 3x3): output tile ``m``, input tile ``m + 2``; ``B^T``, ``G``, ``A^T``."""

    tile: int
    b_t: np.ndarray
    g: np.ndarray
    a_t: np.ndarray

    @property
    def taps(self) -> int:
        return self.tile + 2


# Lavin & Gray's matrices. F(4, 3) (points 0, +-1, +-2, infinity): 4x fewer products, weights
# 4x larger. F(2, 3) (0, +-1, infinity): 2.25x fewer, weights 1.8x larger, for small maps.
F4 = Variant(
    4,
    np.array(
        [
            [4, 0, -5, 0, 1, 0],
            [0, -4, -4, 1, 1, 0],
            [0, 4, -4, -1, 1, 0],
            [0, -2, -1, 2, 1, 0],
            [0, 2, -1, -2, 1, 0],
            [0, 4, 0, -5, 0, 1],
        ],
        dtype=np.float64,
    ),
    np.array(
        [
            [1 / 4, 0, 0],
            [-1 / 6, -1 / 6, -1 / 6],
            [-1 / 6, 1 / 6, -1 / 6],
            [1 / 24, 1 / 12, 1 / 6],
            [1 / 24, -1 / 12, 1 / 6],
            [0, 0, 1],
        ],
        dtype=np.float64,
    ),
    np.array(
        [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
        dtype=np.float64,
    ),
)
F2 = Variant(
    2,
    np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=np.float64),
    np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=np.float64),
    np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=np.float64),
)
LARGEST_FIRST = (F4, F2)  # the order :func:`choose` tries variants in, by default
VARIANTS = {v.tile: v for v in LARGEST_FIRST}


def choose(
    weights: np.ndarray, attrs, data_shape: tuple[int, ...], variants: tuple = LARGEST_FIRST
) -> Variant | None:
    """For a 3x3, stride-1, undilated convolution with enough input channels: the largest
    output tile among ``variants`` that still gives ``MIN_TILES`` tiles; None when none pays."""
    kh, kw, ci, _ = weights.shape
    if (kh, kw) != (3, 3) or [int(s) for s in attrs.strides] != [1, 1]:
        return None
    if [int(d) for d in attrs.dilation] != [1, 1] or ci < MIN_CHANNELS:
        return None
    padding = [int(p) for p in attrs.padding]
    for variant in variants:
        if _tile_count(data_shape, padding, variant.tile) >= MIN_TILES:
            return variant
    return None


def _out_size(data_shape, padding) -> tuple[int, int]:
    top, left, bottom, right = padding
    return data_shape[1] + top + bottom - 2, data_shape[2] + left + right - 2


def _tile_count(data_shape, padding, tile: int) -> int:
    out_h, out_w = _out_size(data_shape, padding)
    if out_h < 1 or out_w < 1:
        return 0
    return data_shape[0] * -(-out_h // tile) * -(-out_w // tile)


def payoff(
    weights_shape: tuple[int, ...], data_shape: tuple[int, ...], padding, variant: Variant
) -> tuple[int, int]:
    """``(multiply-adds saved per call, bytes added to the weights)`` by ``variant`` over the
    direct convolution (the transforms' cost aside)."""
    _, _, ci, co = weights_shape
    out_h, out_w = _out_size(data_shape, padding)
    direct = data_shape[0] * out_h * out_w * 9 * ci * co
    product = _tile_count(data_shape, padding, variant.tile) * variant.taps**2 * ci * co
    return direct - product, (variant.taps**2 - 9) * ci * co * 4


def transform_weights(weights: np.ndarray, block: int, variant: Variant = F4) -> np.ndarray:
    """HWIO 3x3 weights -> ``U`` as ``[taps^2, out / block, in, block]`` (float32)."""
    _, _, ci, co = weights.shape
    g = variant.g
    u = np.einsum("ea,abio,fb->efio", g, weights.astype(np.float64), g)  # [taps, taps, in, out]
    u = u.reshape(variant.taps**2, ci, co // block, block).transpose(0, 2, 1, 3)
    return np.ascontiguousarray(u, dtype=np.float32)


def rewrite(
    builder: relax.BlockBuilder,
    data: relax.Expr,
    weights: np.ndarray,
    attrs,
    block: int,
    variant: Variant,
    const=lambda array, how: relax.const(array),
):
    """Emit the three Winograd kernels for ``conv2d(data, weights)``; the last one's call.
    ``const(array, how)`` makes the transformed weights' constant."""
    shape = tuple(int(d) for d in data.ty.shape.values)
    padding = [int(p) for p in attrs.padding]
    out_h, out_w = _out_size(shape, padding)
    m = variant.tile
    tiles = (-(-out_h // m), -(-out_w // m))
    v = builder.emit(
        builder.call_te(
            winograd_input,
            data,
            padding=padding,
            tiles=tiles,
            tile=m,
            primfunc_name_hint="winograd_input",
            primfunc_attrs={"op_pattern": OPAQUE},
        )
    )
    product = builder.emit(
        builder.call_te(
            winograd_product,
            v,
            const(transform_weights(weights, block, variant), f"winograd F({m}x{m}, 3x3)"),
            primfunc_name_hint="winograd_product",
            primfunc_attrs={"op_pattern": OUT_EWISE_FUSABLE},
        )
    )
    return builder.call_te(
        winograd_output,
        product,
        batch=shape[0],
        size=(out_h, out_w),
        tiles=tiles,
        tile=m,
        primfunc_name_hint="winograd_output",
        # Fusable with elementwise consumers (the epilogue), never into the next kernel.
        primfunc_attrs={"op_pattern": OUT_EWISE_FUSABLE},
    )


def _terms(left: np.ndarray, right: np.ndarray, row: int, col: int) -> list[tuple[float, int, int]]:
    """The non-zero coefficients of entry (row, col) of ``left @ X @ right^T``."""
    return [
        (float(left[row, a] * right[col, b]), a, b)
        for a in range(left.shape[1])
        for b in range(right.shape[1])
        if left[row, a] * right[col, b] != 0.0
    ]


def _weighted_sum(terms, value) -> tirx.PrimExpr:
    total = None
    for coefficient, a, b in terms:
        x = value(a, b)
        term = x if coefficient == 1.0 else (-x if coefficient == -1.0 else x * coefficient)
        total = term if total is None else total + term
    return total


def _select(index: tirx.PrimExpr, values: list[tirx.PrimExpr]) -> tirx.PrimExpr:
    """``values[index]`` as a chain of branches (folded once ``index`` is unrolled)."""
    expr = values[-1]
    for position in range(len(values) - 2, -1, -1):
        expr = tirx.if_then_else(index == position, values[position], expr)
    return expr


def winograd_input(x: te.Tensor, padding, tiles, tile: int) -> te.Tensor:
    """``V[e, tile, c]``: the input transform ``B^T d B`` of every input tile ``d``."""
    variant, taps = VARIANTS[tile], tile + 2
    n, h, w, c = (int(d) for d in x.shape)
    top, left, _, _ = padding
    rows, cols = tiles
    bottom, right = tile * rows + 2 - h - top, tile * cols + 2 - w - left
    xp = topi.nn.pad(x, [0, top, left, 0], [0, bottom, right, 0], name="winograd_pad")
    per_image = rows * cols
    b_t = variant.b_t
    entries = [_terms(b_t, b_t, e // taps, e % taps) for e in range(taps * taps)]

    def body(e, p, ch):
        b, y, z = p // per_image, p % per_image // cols, p % cols
        values = [
            _weighted_sum(terms, lambda i, j: xp[b, y * tile + i, z * tile + j, ch])
            for terms in entries
        ]
        return _select(e, values)

    return te.compute((taps * taps, n * per_image, c), body, name="winograd_input")


def winograd_product(v: te.Tensor, u: te.Tensor) -> te.Tensor:
    """``M[e, tile, o] = sum_c V[e, tile, c] U[e, o, c]`` (U packed by output block)."""
    taps, count, ci = (int(d) for d in v.shape)
    _, groups, _, block = (int(d) for d in u.shape)
    rc = te.reduce_axis((0, ci), "rc")
    return te.compute(
        (taps, count, groups * block),
        lambda e, p, o: te.sum(v[e, p, rc] * u[e, o // block, rc, o % block], axis=rc),
        name="winograd_product",
    )


def winograd_output(m: te.Tensor, batch: int, size, tiles, tile: int) -> te.Tensor:
    """The output transform ``A^T M A`` of every tile, cropped to the NHWC output."""
    a_t, taps = VARIANTS[tile].a_t, tile + 2
    rows, cols = tiles
    per_image = rows * cols
    entries = [[_terms(a_t, a_t, i, j) for j in range(tile)] for i in range(tile)]

    def body(b, y, z, o):
        p = b * per_image + y // tile * cols + z // tile

        def value(eps, nu):
            return m[eps * taps + nu, p, o]

        per_row = [_select(z % tile, [_weighted_sum(t, value) for t in row]) for row in entries]
        return _select(y % tile, per_row)

    return te.compute((batch, *size, int(m.shape[2])), body, name="winograd_output")


def _vector_width(sch: s_tir.Schedule, loop, lanes: int) -> int:
    return vector_divisor(int(sch.get(loop).extent), lanes) or 1


def schedule_input(sch: s_tir.Schedule, lanes: int) -> None:
    """Per tile (parallel), all transform entries unrolled, channels vectorized; the padded
    copy is written first by its own parallel loop."""
    block = sch.get_sblock("winograd_input")
    e, p, c = sch.get_loops(block)
    c_outer, c_inner = sch.split(c, [None, _vector_width(sch, c, lanes)])
    sch.reorder(p, c_outer, e, c_inner)
    sch.parallel(p)
    sch.unroll(e)
    sch.vectorize(c_inner)
    pad = find_block(sch, "winograd_pad")
    if pad is not None:
        vectorize_block(sch, pad, lanes)


def schedule_output(sch: s_tir.Schedule, lanes: int) -> None:
    """The epilogue inlined, then per tile (parallel) the 4x4 positions unrolled, output
    channels vectorized."""
    reads = sch.get(sch.get_sblock("winograd_output")).reads
    taps = math.isqrt(int(reads[0].source.shape[0]))
    root = sch.get_sblock("root")
    for block in sch.get_child_blocks(root)[:-1]:
        sch.compute_inline(block)
    block = sch.get_child_blocks(root)[-1]
    b, y, z, o = sch.get_loops(block)
    y_outer, y_inner = sch.split(y, [None, taps - 2])
    z_outer, z_inner = sch.split(z, [None, taps - 2])
    o_outer, o_inner = sch.split(o, [None, _vector_width(sch, o, lanes)])
    sch.reorder(b, y_outer, z_outer, o_outer, y_inner, z_inner, o_inner)
    sch.parallel(sch.fuse(b, y_outer, z_outer))
    sch.unroll(y_inner)
    sch.unroll(z_inner)
    sch.vectorize(o_inner)
