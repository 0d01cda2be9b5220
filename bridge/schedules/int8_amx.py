"""Intel AMX tiles for the packed int8 dot kernels of :mod:`bridge.schedules.int8`.

On a CPU with AMX-INT8 (Sapphire Rapids and later Xeons) one ``tdpbusd`` multiplies a tile of
up to 16 pixels x 64 uint8 activations by 64 x 16 int8 weights into 16 x 16 int32 sums: 16,384
products per instruction, where ``vpdpbusd`` does 64. The kernels, weights and activations are
the VNNI ones (:func:`~bridge.schedules.int8.prepack_int8`: weights ``[O/16, KH, KW, C/4, 16,
4]``, whose ``[C/4, 16, 4]`` slab is exactly the tile ``tdpbusd`` wants, activations shifted
to uint8); only the schedule differs:

* a register tile is ``pixels`` (up to 15, dividing the row, so that its accumulators fit the
  stack: :data:`~bridge.schedules.stack.STACK_BYTES`) output pixels of one row, or of two
  rows where the output's rows pair up, by 16 output channels per sums tile, reduced over
  the window and the input channels ``kt`` (up to 64) at a time (:class:`Tile`);
* one update (:func:`_update_desc`) runs the whole window: at each position and step it
  loads each row's activations (one tile row per pixel, strided by the channel count) and
  each sums column's weights into tiles and runs one ``tdpbusd`` per pair. With two rows a
  weights tile (read from L2: a layer's weights outgrow L1) serves two products instead of
  one. The sums stay in their tiles over the whole window and are stored once. Measured
  (ResNet50 int8, Emerald Rapids, 2 threads): storing once -2.7% against a store per
  window position, two rows a further -2.3%;
* the tiles are configured (``ldtilecfg``: per thread) at the top of a parallel iteration, a
  strip of pixels, unless the thread's are configured so already (:func:`_configures_tiles`),
  and each register tile's first step zeroes its sums;
* the elementwise epilogue reads the tile's sums from the stack, as in the VNNI schedule;
* a small map (7x7: 7 of a tile's 16 rows used) is read as one flat row of pixels
  (:func:`~bridge.schedules.int8._flat_dot`: 49 of 64 rows), two tiles of 16 per register
  tile, each parallel iteration an image and a register tile of channels, its epilogue
  merged in (:func:`_merge_image`). ResNet50 int8 batch 1 (7x7 stage) 0.96-0.97x, batch 8
  0.94x (Xeon with AMX, 2 threads).

Convolutions with a horizontal stride other than 1, under 16 input channels (the first
convolution), under :data:`MIN_DEPTH` (64) products per output (where VNNI is faster) or under 4
pixels per row (a dense layer at batch 1) keep the VNNI schedule; a strided 1x1 convolution
reads a subsampled copy with stride 1 (:func:`~bridge.schedules.int8.dot_conv2d`), so it
takes tiles too. Linux
hands AMX state to a process only when asked (``arch_prctl(ARCH_REQ_XCOMP_PERM)``), so every
AMX kernel asks first (:func:`request_amx`): one system call per kernel call.
"""

from __future__ import annotations

import functools
from dataclasses import astuple, dataclass

import tvm
import tvm_ffi
from tvm import s_tir, tirx
from tvm.script import tirx as T
from tvm.sym.pattern import detect_linear_equation

from bridge.schedules.common import largest_divisor, weights_first
from bridge.schedules.int8 import (
    AMX_MIN_CHANNELS,
    AMX_MIN_DEPTH,
    AMX_MIN_PIXELS,
    AMX_ROWS,
    DOT,
    FLAT,
    Int8Kernels,
    _copy_per_strip,
    _dot_block,
    _epilogue_output,
    _strip_copy,
    _vector_inner,
    _vectorize_rest,
    has_amx,
)

LANES = 16  # output channels per sums tile (64 bytes of int32 per row)
MAX_PIXELS = AMX_ROWS  # rows per tile
MAX_KT = 64  # input channels per step (64 bytes per activation tile row)
MIN_KT = AMX_MIN_CHANNELS  # fewer input channels: a tdpbusd does too little, VNNI does better
MIN_PIXELS = AMX_MIN_PIXELS
MIN_DEPTH = AMX_MIN_DEPTH  # products summing fewer terms stay on VNNI
MAX_SUMS = 4  # sums tiles per register tile (tiles 0-3); activations: tile 4; weights: 5-7
A_TILE, B_TILES = 4, (5, 6, 7)
# two rows of pixels per register tile (where the output has an even number of rows): sums
# tiles 0-3 as 2 rows x 2, activations 4-5 (one per row), weights 6-7, so each weights tile
# loaded (from L2: a layer's weights outgrow L1) serves two products instead of one
ROWS = 2
ROW_A_TILES, ROW_B_TILES = (4, 5), (6, 7)
PARALLEL_STRIPS = 8  # pixel strips from which the strips alone run in parallel
ANNOTATION = "bridge.amx"
# Linux: arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) through syscall(2)
SYS_ARCH_PRCTL, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA = 158, 0x1023, 18


def tile_config(pixels: int, kt: int, sums: int, rows: int = 1) -> list[int]:
    """The 64-byte ``ldtilecfg`` operand as 16 little-endian int32 words: palette 1; tiles
    ``0..rows * sums - 1`` the sums (``pixels`` rows of 16 int32), then the activations
    (``pixels`` rows of ``kt`` bytes: tile 4, or 4-5 for two rows) and the weights (``kt /
    4`` rows of 16 x 4 bytes: tiles 5-7, or 6-7)."""
    a_tiles, b_tiles = _tiles(rows)
    shape = {t: (pixels, LANES * 4) for t in range(rows * sums)}
    shape.update({t: (pixels, kt) for t in a_tiles})
    shape.update({t: (kt // 4, LANES * 4) for t in b_tiles})
    words = [0] * 16
    words[0] = 1  # palette 1, start row 0
    for tile, (tile_rows, row_bytes) in shape.items():
        words[4 + tile // 2] |= row_bytes << 16 * (tile % 2)  # bytes 16 + 2t: u16 per tile
        words[12 + tile // 4] |= tile_rows << 8 * (tile % 4)  # bytes 48 + t: u8 per tile
    return words


def _tiles(rows: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(activation tiles, weight tiles) of a register tile of ``rows`` rows."""
    return ((A_TILE,), B_TILES) if rows == 1 else (ROW_A_TILES, ROW_B_TILES)


def _intrin(name: str, *args) -> tirx.PrimExpr:
    return T.call_llvm_intrin("void", f"llvm.x86.{name}", *args)


def _load(tile, element, stride) -> tirx.PrimExpr:
    """``tileloadd``: the tile's rows from ``element``'s address on, ``stride`` bytes apart."""
    return _intrin(
        "tileloadd64", T.Cast("uint8", tile), T.address_of(element), T.Cast("int64", stride)
    )


def _dot(sums, a, b) -> tirx.PrimExpr:
    """``tdpbusd``: tile ``sums`` += tile ``a`` (uint8) x tile ``b`` (int8)."""
    return _intrin("tdpbusd", T.Cast("uint8", sums), T.Cast("uint8", a), T.Cast("uint8", b))


@dataclass(frozen=True)
class Tile:
    """One register tile's shape: ``rows`` x ``pixels`` output pixels by ``16 x sums``
    channels, reduced over ``channels`` input channels ``kt`` at a time and the whole
    ``kh x kw`` window (vertical stride ``sh``, dilation ``dh``, ``dw``; horizontal stride
    1: a tile row's pixels are one row of activations at a constant stride). A flat map
    (:func:`~bridge.schedules.int8._flat_dot`) has one row of activations: its tile rows and
    window rows step along it, ``ch`` and ``cr`` pixels each."""

    pixels: int
    channels: int
    kt: int
    sums: int
    kh: int = 1
    kw: int = 1
    rows: int = 1
    sh: int = 1
    dh: int = 1
    dw: int = 1
    ch: int = 0
    cr: int = 0

    @property
    def name(self) -> str:
        return "_".join(str(v) for v in astuple(self))

    @property
    def activations(self) -> tuple[int, int, int]:
        """The activations one update reads: rows, columns, channels."""
        height = (self.rows - 1) * self.sh + (self.kh - 1) * self.dh + 1
        cols = (self.rows - 1) * self.ch + (self.kh - 1) * self.cr + self.pixels
        return height, cols + (self.kw - 1) * self.dw, self.channels

    def at(self, h, i, r, q, c) -> tuple:
        """The activation (row, column, channel ``c``) tile row ``h``'s pixel ``i`` reads at
        window position ``(r, q)`` (terms of a zero step left out: the matched block has none)."""
        row = sum(v * k for v, k in ((h, self.sh), (r, self.dh)) if k)
        col = sum((v * k for v, k in ((h, self.ch), (r, self.cr), (q, self.dw)) if k), i)
        return row, col, c


def _init_desc(tile: Tile):
    rows, pixels, width = tile.rows, tile.pixels, LANES * tile.sums

    @T.prim_func(s_tir=True)
    def desc(c: T.handle) -> None:
        sr, sc = T.int32(), T.int32()
        C = T.match_buffer(c, (rows, pixels, width), "int32", strides=[sr, sc, 1], offset_factor=1)
        with T.sblock("root"):
            T.reads()
            T.writes(C[0:rows, 0:pixels, 0:width])
            # loops of one iteration are not in the block being matched: none here either
            if rows == 1:
                for i, j in T.grid(pixels, width):
                    with T.sblock("init"):
                        vi, vj = T.axis.remap("SS", [i, j])
                        C[0, vi, vj] = T.int32(0)
            else:
                for h, i, j in T.grid(rows, pixels, width):
                    with T.sblock("init"):
                        vh, vi, vj = T.axis.remap("SSS", [h, i, j])
                        C[vh, vi, vj] = T.int32(0)

    return desc


def _init_impl(tile: Tile):
    """Zero the sums tiles, which hold the sums from here to the store (the tiles were
    configured at the top of the parallel loop's body: :func:`_configures_tiles`)."""
    rows, pixels, width = tile.rows, tile.pixels, LANES * tile.sums

    @T.prim_func(s_tir=True)
    def impl(c: T.handle) -> None:
        sr, sc = T.int32(), T.int32()
        C = T.match_buffer(c, (rows, pixels, width), "int32", strides=[sr, sc, 1], offset_factor=1)
        with T.sblock("root"):
            T.reads()
            T.writes(C[0:rows, 0:pixels, 0:width])
            for t in T.unroll(rows * tile.sums):
                T.evaluate(_intrin("tilezero", T.Cast("uint8", t)))

    return impl


def _update_desc(tile: Tile):
    """``C[h, i, j] += A[h * sh + r * dh, i + q * dw, k] * B[j / 16, r, q, k / 4, j % 16, k %
    4]`` over the window and the input channels. Loops of one iteration (one row, a 1x1
    window) are left out, as the schedule's block has none."""
    rows, pixels, width, sums = tile.rows, tile.pixels, LANES * tile.sums, tile.sums
    kh, kw, groups = tile.kh, tile.kw, tile.channels // 4
    height, cols, channels = tile.activations
    window = kh * kw > 1

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        sr, sa, sb, sbh, sbw = T.int32(), T.int32(), T.int32(), T.int32(), T.int32()
        cr, sc = T.int32(), T.int32()
        A = T.match_buffer(
            a, (height, cols, channels), "uint8", strides=[sr, sa, 1], offset_factor=1
        )
        B = T.match_buffer(
            b,
            (sums, kh, kw, groups, LANES, 4),
            "int8",
            strides=[sb, sbh, sbw, LANES * 4, 4, 1],
            offset_factor=1,
        )
        C = T.match_buffer(c, (rows, pixels, width), "int32", strides=[cr, sc, 1], offset_factor=1)
        with T.sblock("root"):
            T.reads(
                C[0:rows, 0:pixels, 0:width],
                A[0:height, 0:cols, 0:channels],
                B[0:sums, 0:kh, 0:kw, 0:groups, 0:LANES, 0:4],
            )
            T.writes(C[0:rows, 0:pixels, 0:width])
            if window and rows > 1:
                for r, q, h, i, j, k, g in T.grid(kh, kw, rows, pixels, width, groups, 4):
                    with T.sblock("update"):
                        vh, vi, vj, vr, vq, vk, vg = T.axis.remap("SSSRRRR", [h, i, j, r, q, k, g])
                        C[vh, vi, vj] = C[vh, vi, vj] + T.cast(
                            A[tile.at(vh, vi, vr, vq, vk * 4 + vg)], "int32"
                        ) * T.cast(B[vj // LANES, vr, vq, vk, vj % LANES, vg], "int32")
            elif window:
                for r, q, i, j, k, g in T.grid(kh, kw, pixels, width, groups, 4):
                    with T.sblock("update"):
                        vi, vj, vr, vq, vk, vg = T.axis.remap("SSRRRR", [i, j, r, q, k, g])
                        C[0, vi, vj] = C[0, vi, vj] + T.cast(
                            A[tile.at(0, vi, vr, vq, vk * 4 + vg)], "int32"
                        ) * T.cast(B[vj // LANES, vr, vq, vk, vj % LANES, vg], "int32")
            elif rows > 1:
                for h, i, j, k, g in T.grid(rows, pixels, width, groups, 4):
                    with T.sblock("update"):
                        vh, vi, vj, vk, vg = T.axis.remap("SSSRR", [h, i, j, k, g])
                        C[vh, vi, vj] = C[vh, vi, vj] + T.cast(
                            A[tile.at(vh, vi, 0, 0, vk * 4 + vg)], "int32"
                        ) * T.cast(B[vj // LANES, 0, 0, vk, vj % LANES, vg], "int32")
            else:
                for i, j, k, g in T.grid(pixels, width, groups, 4):
                    with T.sblock("update"):
                        vi, vj, vk, vg = T.axis.remap("SSRR", [i, j, k, g])
                        C[0, vi, vj] = C[0, vi, vj] + T.cast(
                            A[tile.at(0, vi, 0, 0, vk * 4 + vg)], "int32"
                        ) * T.cast(B[vj // LANES, 0, 0, vk, vj % LANES, vg], "int32")

    return desc


def _update_impl(tile: Tile):
    """Every window position and input step in turn: each row's activations into its tile
    (4, or 4-5), each sums column's weights into a tile (5-7 in turn, or 6-7) and one
    ``tdpbusd`` per row with it; the sums stay in their tiles throughout and are stored once
    at the end."""
    rows, pixels, width, sums, kt = tile.rows, tile.pixels, LANES * tile.sums, tile.sums, tile.kt
    kh, kw, groups = tile.kh, tile.kw, tile.channels // 4
    height, cols, channels = tile.activations
    (a_first, *_), b_tiles = _tiles(rows)
    b_first, b_count = b_tiles[0], len(b_tiles)

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        sr, sa, sb, sbh, sbw = T.int32(), T.int32(), T.int32(), T.int32(), T.int32()
        cr, sc = T.int32(), T.int32()
        A = T.match_buffer(
            a, (height, cols, channels), "uint8", strides=[sr, sa, 1], offset_factor=1
        )
        B = T.match_buffer(
            b,
            (sums, kh, kw, groups, LANES, 4),
            "int8",
            strides=[sb, sbh, sbw, LANES * 4, 4, 1],
            offset_factor=1,
        )
        C = T.match_buffer(c, (rows, pixels, width), "int32", strides=[cr, sc, 1], offset_factor=1)
        with T.sblock("root"):
            T.reads(
                C[0:rows, 0:pixels, 0:width],
                A[0:height, 0:cols, 0:channels],
                B[0:sums, 0:kh, 0:kw, 0:groups, 0:LANES, 0:4],
            )
            T.writes(C[0:rows, 0:pixels, 0:width])
            for r, q, s in T.grid(kh, kw, channels // kt):
                for h in T.unroll(rows):
                    T.evaluate(_load(a_first + h, A[tile.at(h, 0, r, q, s * kt)], sa))
                for t in T.unroll(sums):
                    T.evaluate(
                        _load(
                            b_first + t % b_count,
                            B[t, r, q, s * (kt // 4), 0, 0],
                            LANES * 4,
                        )
                    )
                    for h in T.unroll(rows):
                        T.evaluate(_dot(h * sums + t, a_first + h, b_first + t % b_count))
            for h in T.unroll(rows):
                for t in T.unroll(sums):
                    T.evaluate(
                        _intrin(
                            "tilestored64",
                            T.Cast("uint8", h * sums + t),
                            T.address_of(C[h, 0, t * LANES]),
                            T.Cast("int64", sc * 4),
                        )
                    )

    return impl


_REGISTERED: set[Tile] = set()


def intrinsics(tile: Tile) -> tuple[str, str]:
    """The (init, update) tensor intrinsics of ``tile``, registered on first use."""
    init, update = f"bridge_amx_init_{tile.name}", f"bridge_amx_update_{tile.name}"
    if tile not in _REGISTERED:
        s_tir.TensorIntrin.register(init, _init_desc(tile), _init_impl(tile), override=True)
        s_tir.TensorIntrin.register(update, _update_desc(tile), _update_impl(tile), override=True)
        _REGISTERED.add(tile)
    return init, update


def horizontal_stride(sch: s_tir.Schedule, block) -> int | None:
    """The dot's horizontal stride: the coefficient of its output column in the column it reads
    from the activations (None where that is not linear)."""
    return _coefficient(sch, block, 2, 2)


def _coefficient(sch: s_tir.Schedule, block, axis: int, var: int) -> int | None:
    """The constant coefficient of the block's ``var``-th iterator in the index of axis
    ``axis`` of the activations it reads (None where that is not linear)."""
    stmt = sch.get(block)
    index = stmt.reads[0].region[axis].min
    coefficients = detect_linear_equation(index, [stmt.iter_vars[var].var])
    if len(coefficients) != 2 or not isinstance(coefficients[0], tirx.IntImm):
        return None
    return int(coefficients[0])


def _tile(sch: s_tir.Schedule, block, flat: bool, out=None):
    """Split and order the dot's loops for AMX: ``(n, y, x/pixels)`` parallel outside (with
    the output channels' register tiles too when there are few strips; a flat map's image
    and register tiles of channels, its epilogue ``out`` merged in: :func:`_merge_image`),
    then the register tile: the window, ``ROWS`` rows where they divide the output's, the
    pixels, ``16 x sums`` channels and the input channels, which one update tensorizes.
    Returns the parallel loop, whether it runs by strip, the loop the update tensorizes, the
    window's first loop (where the sums are zeroed) and the :class:`Tile`."""
    if horizontal_stride(sch, block) != 1:
        raise ValueError("a tile's pixels are one row of activations: stride 1 only")
    # the block's iterators: n, y, x, o, rh, rw, rc, rg; activations' axes: n, row, column, c
    steps = ((1, 1), (1, 4), (2, 5), (2, 1), (2, 4))  # sh, dh, dw, ch, cr: (axis, iterator)
    sh, dh, dw, ch, cr = (_coefficient(sch, block, axis, var) for axis, var in steps)
    if None in (sh, dh, dw, ch, cr):
        raise ValueError("rows or window positions read at no constant stride")
    n, y, x, o, rh, rw, rc, rg = sch.get_loops(block)
    kh, kw = int(sch.get(rh).extent), int(sch.get(rw).extent)
    pixels = largest_divisor(int(sch.get(x).extent), MAX_PIXELS)
    groups = int(sch.get(rc).extent)
    kt = 4 * largest_divisor(groups, MAX_KT // 4)
    rows = ROWS if int(sch.get(y).extent) % ROWS == 0 else 1
    sums = largest_divisor(int(sch.get(o).extent) // LANES, MAX_SUMS // rows)
    if pixels < MIN_PIXELS or kt < MIN_KT or 4 * groups * kh * kw < MIN_DEPTH:
        raise ValueError("tile too small for AMX")
    if int(sch.get(rg).extent) != 4:
        raise ValueError("weights not in groups of 4")
    o_outer, o_tile = sch.split(o, [None, sums * LANES])
    x_outer, x_inner = sch.split(x, [None, pixels])
    y_outer, inner = y, [x_inner]
    if rows > 1:
        y_outer, y_inner = sch.split(y, [None, rows])
        inner.insert(0, y_inner)
    strips = int(sch.get(n).extent) * int(sch.get(y_outer).extent) * int(sch.get(x_outer).extent)
    first = weights_first(sch, block, 3) is not None
    by_strip = strips >= PARALLEL_STRIPS and not first and not flat
    outer = (o_outer, n, y_outer, x_outer) if first else (n, y_outer, x_outer, o_outer)
    if flat:  # a whole image per parallel iteration: its outputs are no box of the sums
        outer = (o_outer, n) if first else (n, o_outer)
        sch.reorder(*outer, y_outer, x_outer, rh, rw, *inner, o_tile, rc, rg)
    else:
        sch.reorder(*outer, rh, rw, *inner, o_tile, rc, rg)
    fused = sch.fuse(n, y_outer, x_outer) if by_strip else sch.fuse(*outer)
    if flat and out is not None:
        fused = _merge_image(sch, out, fused, sums * LANES, first)
    sch.parallel(fused)
    tile = Tile(pixels, 4 * groups, kt, sums, kh, kw, rows, sh, dh, dw, ch, cr)
    return fused, by_strip, rh if kh * kw > 1 else inner[0], rh, tile


def _merge_image(sch: s_tir.Schedule, out, fused, channels: int, first: bool):
    """The epilogue ``out`` of a flat map's dot by image and ``channels`` output channels,
    those loops merged with the dot's parallel loop ``fused`` (the same image and channels,
    in the same order): each iteration requantizes the sums it made. The epilogue reads the
    sums at ``y * cols + x``, which ``reverse_compute_at`` cannot invert."""
    b, y, x, o = sch.get_loops(out)
    o_outer, o_inner = sch.split(o, [None, channels])
    order = (o_outer, b) if first else (b, o_outer)
    sch.reorder(*order, y, x, o_inner)
    return sch.merge(fused, sch.fuse(*order))


def schedule_amx(sch: s_tir.Schedule) -> None:
    """:func:`~bridge.schedules.int8.schedule_dot` with AMX tiles for the register tile; the
    sums of a whole strip of pixels (all output channels) go to memory, and the elementwise
    epilogue runs over the strip."""
    root = sch.get_sblock("root")
    block = _dot_block(sch)
    if str(sch.get(block).reads[0].source.dtype) != "uint8":
        raise ValueError("AMX multiplies uint8 activations")
    names = [sch.get(b).name_hint for b in sch.get_child_blocks(root)]
    epilogue = names[names.index(sch.get(block).name_hint) + 1 :]
    flat = sch.get(block).name_hint.startswith(FLAT)
    output = _epilogue_output(sch, block, epilogue, flat)
    if epilogue and output is None:
        raise ValueError("no epilogue output")
    for name in epilogue[: epilogue.index(output)] if output else []:
        sch.compute_inline(sch.get_sblock(name))
    out = None if output is None else sch.get_sblock(output)
    fused, by_strip, update_loop, rh, tile = _tile(sch, block, flat, out)
    if out is not None:
        if not flat:  # a flat map's epilogue is merged in already
            sch.reverse_compute_at(out, fused)
        _vector_inner(sch, out, LANES)
    if by_strip and _strip_copy(sch):
        _copy_per_strip(sch, fused)
    init_name, update_name = intrinsics(tile)
    init = sch.decompose_reduction(block, rh)
    sch.tensorize(sch.get_loops(init)[-3 if tile.rows > 1 else -2], init_name)
    sch.tensorize(update_loop, update_name)
    _vectorize_rest(sch, names, fused, LANES)
    sch.annotate(root, ANNOTATION, tile_config(tile.pixels, tile.kt, tile.sums, tile.rows))


class AmxKernels(Int8Kernels):
    """:class:`~bridge.schedules.int8.Int8Kernels` on AMX tiles where the target has them and
    the kernel's shape suits them; other kernels are left to the rules after this one."""

    def apply(self, func: tirx.PrimFunc, target: tvm.target.Target, _tunable: bool):
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        if not has_amx(target) or "int8_dot" not in str(func):
            return None
        sch = s_tir.Schedule(func)
        try:
            schedule_amx(sch)
        except Exception:
            return None
        return sch


def _asks_for_amx(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` (scheduled by :func:`schedule_amx`: its root annotated with the tile
    configuration) asking Linux for the tile state first, its tiles configured at the top of
    the parallel loop's body (:func:`_configures_tiles`)."""
    realize = func.body
    if not isinstance(realize, s_tir.SBlockRealize) or ANNOTATION not in realize.block.annotations:
        return func
    block = realize.block
    words = [int(w) for w in block.annotations[ANNOTATION]]
    ask = tirx.Evaluate(
        tirx.call_extern(
            "int64", "syscall", SYS_ARCH_PRCTL, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA
        )
    )
    annotations = {k: v for k, v in block.annotations.items() if k != ANNOTATION}
    body = s_tir.SBlock(
        block.iter_vars,
        block.reads,
        block.writes,
        block.name_hint,
        tirx.SeqStmt([ask, _configures_tiles(block.body, words)]),
        block.init,
        block.alloc_buffers,
        block.match_buffers,
        annotations,
    )
    return func.with_body(s_tir.SBlockRealize(realize.iter_values, realize.predicate, body))


def _configures_tiles(body: tirx.Stmt, words: list[int]) -> tirx.Stmt:
    """``body`` with the tiles configured at the top of each parallel loop's body that runs
    tiles: the configuration is per thread and the same for every tile of the kernel, so once
    per parallel iteration (a strip of pixels) instead of once per register tile (the 64-byte
    operand on the stack; measured: ResNet50 int8 -3.4%, Emerald Rapids, 2 threads). And only
    where the thread's tiles are configured otherwise: ``sttilecfg`` reads the configuration
    in place (3 ns here), which stays from one iteration, and one kernel, to the next, where
    ``ldtilecfg`` takes 75 ns (Xeon with AMX; ``scripts/amx_costs.py``), some 2,000 times per
    ResNet50 inference (the AMX kernels' parallel iterations, counted from their shapes)."""

    def loop(op: tirx.For) -> tirx.Stmt:
        if op.kind != tirx.ForKind.PARALLEL or not _runs_dot(op.body):
            return op
        config = tirx.decl_buffer((16,), "int32", name="amx_config")
        current = tirx.decl_buffer((16,), "int32", name="amx_current")
        stores = [
            tirx.BufferStore(config, tirx.const(word, "int32"), [tirx.const(i, "int32")])
            for i, word in enumerate(words)
        ]
        read = tirx.Evaluate(_intrin("sttilecfg", _first(current)))
        differs = [
            tirx.NE(tirx.BufferLoad(current, [tirx.const(i, "int32")]), tirx.const(word, "int32"))
            for i, word in enumerate(words)
        ]
        load = tirx.IfThenElse(
            functools.reduce(tirx.Or, differs),
            tirx.Evaluate(_intrin("ldtilecfg", _first(config))),
            None,
        )
        regions = [tirx.BufferRegion(b, [tvm.ir.Range(0, 16)]) for b in (config, current)]
        setup = s_tir.SBlock(
            [],
            [],
            regions,
            "amx_config",
            tirx.SeqStmt([*stores, read, load]),
            alloc_buffers=[config, current],
        )
        configured = tirx.SeqStmt([s_tir.SBlockRealize([], True, setup), op.body])
        return tirx.For(
            op.loop_var, op.min, op.extent, op.kind, configured, op.thread_binding, op.annotations
        )

    return tvm_ffi.structural_map(body, (tirx.For, loop))


def _first(buffer: tirx.Buffer) -> tirx.PrimExpr:
    """The address of ``buffer``'s first element."""
    return tirx.address_of(tirx.BufferLoad(buffer, [tirx.const(0, "int32")]))


def _runs_dot(stmt: tirx.Stmt) -> bool:
    """``stmt`` holds a block of the dot (the tiles' init or update)."""

    def block(op: s_tir.SBlock):
        return tvm_ffi.VisitInterrupt(op) if op.name_hint.startswith(DOT) else None

    return tvm_ffi.structural_walk(stmt, (s_tir.SBlock, block), order="pre") is not None


@tvm.transform.module_pass(opt_level=0, name="bridge.RequestAmx")
def request_amx(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
    """Every kernel :func:`schedule_amx` scheduled asks Linux for the AMX tile state first."""
    updates = {}
    for gv, func in mod.functions.items():
        if isinstance(func, tirx.PrimFunc):
            asked = _asks_for_amx(func)
            if not asked.same_as(func):
                updates[gv] = asked
    for gv, func in updates.items():
        mod[gv] = func
    return mod
