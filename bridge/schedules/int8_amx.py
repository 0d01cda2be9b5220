"""Intel AMX tiles for the packed int8 dot kernels of :mod:`bridge.schedules.int8`.

On a CPU with AMX-INT8 (Sapphire Rapids and later Xeons) one ``tdpbusd`` multiplies a tile of
up to 16 pixels x 64 uint8 activations by 64 x 16 int8 weights into 16 x 16 int32 sums: 16,384
products per instruction, where ``vpdpbusd`` does 64. The kernels, weights and activations are
the VNNI ones (:func:`~bridge.schedules.int8.prepack_int8`: weights ``[O/16, KH, KW, C/4, 16,
4]``, whose ``[C/4, 16, 4]`` slab is exactly the tile ``tdpbusd`` wants, activations shifted
to uint8); only the schedule differs:

* a register tile is ``pixels`` (up to 15, dividing the row, so that its accumulators fit the
  stack: :data:`~bridge.schedules.stack.STACK_BYTES`) output pixels of one row by 16 output
  channels, reduced over the window and the input channels ``kt`` (up to 64) at a time;
* each step loads the activations (one row of the tile per pixel, strided by the channel
  count) and the weights into tiles and runs one ``tdpbusd`` per sums tile; the sums stay in
  their tiles over the whole window (every position of an undilated window in one update,
  :func:`_window_desc`; a dilated one stores them after each position) and are stored once
  (ResNet50 int8 -2.7% against a store per position, Emerald Rapids, 2 threads);
* the tile's first step configures the tiles (``ldtilecfg``, per thread) and zeroes them;
* the elementwise epilogue reads the tile's sums from the stack, as in the VNNI schedule.

Convolutions with a horizontal stride other than 1, under 16 input channels (the first
convolution), under :data:`MIN_DEPTH` products per output (where VNNI is faster) or under 4
pixels per row (a dense layer at batch 1) keep the VNNI schedule; a strided 1x1 convolution
reads a subsampled copy with stride 1 (:func:`~bridge.schedules.int8.dot_conv2d`), so it
takes tiles too. Linux
hands AMX state to a process only when asked (``arch_prctl(ARCH_REQ_XCOMP_PERM)``), so every
AMX kernel asks first (:func:`request_amx`): one system call per kernel call.
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx
from tvm.script import tirx as T
from tvm.sym.pattern import detect_linear_equation
from tvm.target.codegen import target_has_features

from bridge.schedules.common import largest_divisor, weights_first
from bridge.schedules.int8 import (
    VNNI,
    Int8Kernels,
    _copy_per_strip,
    _dot_block,
    _epilogue_output,
    _strip_copy,
    _vector_inner,
    _vectorize_rest,
    dot_kind,
)

LANES = 16  # output channels per sums tile (64 bytes of int32 per row)
MAX_PIXELS = 16  # rows per tile
MAX_KT = 64  # input channels per step (64 bytes per activation tile row)
MIN_KT = 16  # fewer input channels: a tdpbusd does too little, VNNI does better
MIN_PIXELS = 4
# products summing fewer terms (window x input channels) stay on VNNI: per kernel, interleaved,
# 2 threads, batch 8, Sapphire Rapids: depth 16-192 took 1.1-2.4x VNNI's time (the tile set-up
# and the sums' trip through memory outweigh the product), 256-4608 0.38-1.0x
MIN_DEPTH = 256
MAX_SUMS = 4  # sums tiles per register tile (tiles 0-3); activations: tile 4; weights: 5-7
A_TILE, B_TILES = 4, (5, 6, 7)
PARALLEL_STRIPS = 8  # pixel strips from which the strips alone run in parallel
ANNOTATION = "bridge.amx"
# Linux: arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) through syscall(2)
SYS_ARCH_PRCTL, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA = 158, 0x1023, 18


def has_amx(target: tvm.target.Target) -> bool:
    """The target is an x86 CPU with AMX-INT8 tiles (and the VNNI kernels they replace)."""
    if dot_kind(target) is not VNNI:
        return False
    try:
        return bool(target_has_features("amx-int8", target)) and bool(
            target_has_features("amx-tile", target)
        )
    except Exception:  # a target LLVM cannot describe
        return False


def tile_config(pixels: int, kt: int, sums: int) -> list[int]:
    """The 64-byte ``ldtilecfg`` operand as 16 little-endian int32 words: palette 1; tiles
    ``0..sums-1`` the sums (``pixels`` rows of 16 int32), tile 4 the activations (``pixels``
    rows of ``kt`` bytes), tiles 5-7 the weights (``kt / 4`` rows of 16 x 4 bytes)."""
    shape = {t: (pixels, LANES * 4) for t in range(sums)}
    shape[A_TILE] = (pixels, kt)
    shape.update({t: (kt // 4, LANES * 4) for t in B_TILES})
    words = [0] * 16
    words[0] = 1  # palette 1, start row 0
    for tile, (rows, row_bytes) in shape.items():
        words[4 + tile // 2] |= row_bytes << 16 * (tile % 2)  # bytes 16 + 2t: u16 per tile
        words[12 + tile // 4] |= rows << 8 * (tile % 4)  # bytes 48 + t: u8 per tile
    return words


def _intrin(name: str, *args) -> tirx.PrimExpr:
    return T.call_llvm_intrin("void", f"llvm.x86.{name}", *args)


def _init_desc(pixels: int, sums: int):
    @T.prim_func(s_tir=True)
    def desc(c: T.handle) -> None:
        sc = T.int32()
        C = T.match_buffer(c, (pixels, LANES * sums), "int32", strides=[sc, 1], offset_factor=1)
        with T.sblock("root"):
            T.reads()
            T.writes(C[0:pixels, 0 : LANES * sums])
            for i, j in T.grid(pixels, LANES * sums):
                with T.sblock("init"):
                    vi, vj = T.axis.remap("SS", [i, j])
                    C[vi, vj] = T.int32(0)

    return desc


def _init_impl(pixels: int, kt: int, sums: int):
    """Configure the tiles (the configuration written into the sums' first row, which the
    last step's store overwrites) and zero the sums tiles, which hold the sums from here to
    the store."""
    words = tile_config(pixels, kt, sums)

    @T.prim_func(s_tir=True)
    def impl(c: T.handle) -> None:
        sc = T.int32()
        C = T.match_buffer(c, (pixels, LANES * sums), "int32", strides=[sc, 1], offset_factor=1)
        with T.sblock("root"):
            T.reads()
            T.writes(C[0:pixels, 0 : LANES * sums])
            C[0, 0] = T.int32(words[0])
            C[0, 1] = T.int32(words[1])
            C[0, 2] = T.int32(words[2])
            C[0, 3] = T.int32(words[3])
            C[0, 4] = T.int32(words[4])
            C[0, 5] = T.int32(words[5])
            C[0, 6] = T.int32(words[6])
            C[0, 7] = T.int32(words[7])
            C[0, 8] = T.int32(words[8])
            C[0, 9] = T.int32(words[9])
            C[0, 10] = T.int32(words[10])
            C[0, 11] = T.int32(words[11])
            C[0, 12] = T.int32(words[12])
            C[0, 13] = T.int32(words[13])
            C[0, 14] = T.int32(words[14])
            C[0, 15] = T.int32(words[15])
            T.evaluate(_intrin("ldtilecfg", T.address_of(C[0, 0])))
            for t in T.unroll(sums):
                T.evaluate(_intrin("tilezero", T.Cast("uint8", t)))

    return impl


def _update_desc(pixels: int, channels: int, sums: int):
    groups = channels // 4

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        sa, sb, sc, sh, sw = T.int32(), T.int32(), T.int32(), T.int32(), T.int32()
        A = T.match_buffer(a, (pixels, channels), "uint8", strides=[sa, 1], offset_factor=1)
        B = T.match_buffer(
            b,
            (sums, 1, 1, groups, LANES, 4),
            "int8",
            strides=[sb, sh, sw, LANES * 4, 4, 1],
            offset_factor=1,
        )
        C = T.match_buffer(c, (pixels, LANES * sums), "int32", strides=[sc, 1], offset_factor=1)
        with T.sblock("root"):
            T.reads(
                C[0:pixels, 0 : LANES * sums],
                A[0:pixels, 0:channels],
                B[0:sums, 0:1, 0:1, 0:groups, 0:LANES, 0:4],
            )
            T.writes(C[0:pixels, 0 : LANES * sums])
            for i, j, k, g in T.grid(pixels, LANES * sums, groups, 4):
                with T.sblock("update"):
                    vi, vj, vk, vg = T.axis.remap("SSRR", [i, j, k, g])
                    C[vi, vj] = C[vi, vj] + T.cast(A[vi, vk * 4 + vg], "int32") * T.cast(
                        B[vj // LANES, 0, 0, vk, vj % LANES, vg], "int32"
                    )

    return desc


def _update_impl(pixels: int, channels: int, kt: int, sums: int):
    """All input channels of one window position, ``kt`` at a time: the activations into
    tile 4, each sums tile's weights into tiles 5-7 in turn, one ``tdpbusd`` per sums tile;
    then the sums stored (the last window position's store leaves the final sums)."""
    groups = channels // 4

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        sa, sb, sc, sh, sw = T.int32(), T.int32(), T.int32(), T.int32(), T.int32()
        A = T.match_buffer(a, (pixels, channels), "uint8", strides=[sa, 1], offset_factor=1)
        B = T.match_buffer(
            b,
            (sums, 1, 1, groups, LANES, 4),
            "int8",
            strides=[sb, sh, sw, LANES * 4, 4, 1],
            offset_factor=1,
        )
        C = T.match_buffer(c, (pixels, LANES * sums), "int32", strides=[sc, 1], offset_factor=1)
        with T.sblock("root"):
            T.reads(
                C[0:pixels, 0 : LANES * sums],
                A[0:pixels, 0:channels],
                B[0:sums, 0:1, 0:1, 0:groups, 0:LANES, 0:4],
            )
            T.writes(C[0:pixels, 0 : LANES * sums])
            for s in T.serial(channels // kt):
                T.evaluate(
                    _intrin(
                        "tileloadd64",
                        T.uint8(A_TILE),
                        T.address_of(A[0, s * kt]),
                        T.Cast("int64", sa),
                    )
                )
                for t in T.unroll(sums):
                    T.evaluate(
                        _intrin(
                            "tileloadd64",
                            T.Cast("uint8", 5 + t % 3),
                            T.address_of(B[t, 0, 0, s * (kt // 4), 0, 0]),
                            T.int64(LANES * 4),
                        )
                    )
                    T.evaluate(
                        _intrin(
                            "tdpbusd",
                            T.Cast("uint8", t),
                            T.uint8(A_TILE),
                            T.Cast("uint8", 5 + t % 3),
                        )
                    )
            for t in T.unroll(sums):
                T.evaluate(
                    _intrin(
                        "tilestored64",
                        T.Cast("uint8", t),
                        T.address_of(C[0, t * LANES]),
                        T.Cast("int64", sc * 4),
                    )
                )

    return impl


def _window_desc(pixels: int, channels: int, sums: int, kh: int, kw: int):
    """:func:`_update_desc` over the whole window: ``kh`` rows of ``pixels + kw - 1``
    activations (stride 1, no dilation), the weights of every window position."""
    groups = channels // 4
    cols = pixels + kw - 1

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        sr, sa, sb, sc, sh, sw = T.int32(), T.int32(), T.int32(), T.int32(), T.int32(), T.int32()
        A = T.match_buffer(a, (kh, cols, channels), "uint8", strides=[sr, sa, 1], offset_factor=1)
        B = T.match_buffer(
            b,
            (sums, kh, kw, groups, LANES, 4),
            "int8",
            strides=[sb, sh, sw, LANES * 4, 4, 1],
            offset_factor=1,
        )
        C = T.match_buffer(c, (pixels, LANES * sums), "int32", strides=[sc, 1], offset_factor=1)
        with T.sblock("root"):
            T.reads(
                C[0:pixels, 0 : LANES * sums],
                A[0:kh, 0:cols, 0:channels],
                B[0:sums, 0:kh, 0:kw, 0:groups, 0:LANES, 0:4],
            )
            T.writes(C[0:pixels, 0 : LANES * sums])
            for r, q, i, j, k, g in T.grid(kh, kw, pixels, LANES * sums, groups, 4):
                with T.sblock("update"):
                    vi, vj, vr, vq, vk, vg = T.axis.remap("SSRRRR", [i, j, r, q, k, g])
                    C[vi, vj] = C[vi, vj] + T.cast(A[vr, vi + vq, vk * 4 + vg], "int32") * T.cast(
                        B[vj // LANES, vr, vq, vk, vj % LANES, vg], "int32"
                    )

    return desc


def _window_impl(pixels: int, channels: int, kt: int, sums: int, kh: int, kw: int):
    """:func:`_update_impl` for every window position in turn with the sums in their tiles
    throughout, stored once at the end (per window position, the stores cost as much as the
    products where a position has 64 input channels)."""
    groups = channels // 4
    cols = pixels + kw - 1

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        sr, sa, sb, sc, sh, sw = T.int32(), T.int32(), T.int32(), T.int32(), T.int32(), T.int32()
        A = T.match_buffer(a, (kh, cols, channels), "uint8", strides=[sr, sa, 1], offset_factor=1)
        B = T.match_buffer(
            b,
            (sums, kh, kw, groups, LANES, 4),
            "int8",
            strides=[sb, sh, sw, LANES * 4, 4, 1],
            offset_factor=1,
        )
        C = T.match_buffer(c, (pixels, LANES * sums), "int32", strides=[sc, 1], offset_factor=1)
        with T.sblock("root"):
            T.reads(
                C[0:pixels, 0 : LANES * sums],
                A[0:kh, 0:cols, 0:channels],
                B[0:sums, 0:kh, 0:kw, 0:groups, 0:LANES, 0:4],
            )
            T.writes(C[0:pixels, 0 : LANES * sums])
            for r, q, s in T.grid(kh, kw, channels // kt):
                T.evaluate(
                    _intrin(
                        "tileloadd64",
                        T.uint8(A_TILE),
                        T.address_of(A[r, q, s * kt]),
                        T.Cast("int64", sa),
                    )
                )
                for t in T.unroll(sums):
                    T.evaluate(
                        _intrin(
                            "tileloadd64",
                            T.Cast("uint8", 5 + t % 3),
                            T.address_of(B[t, r, q, s * (kt // 4), 0, 0]),
                            T.int64(LANES * 4),
                        )
                    )
                    T.evaluate(
                        _intrin(
                            "tdpbusd",
                            T.Cast("uint8", t),
                            T.uint8(A_TILE),
                            T.Cast("uint8", 5 + t % 3),
                        )
                    )
            for t in T.unroll(sums):
                T.evaluate(
                    _intrin(
                        "tilestored64",
                        T.Cast("uint8", t),
                        T.address_of(C[0, t * LANES]),
                        T.Cast("int64", sc * 4),
                    )
                )

    return impl


_REGISTERED: set[tuple[int, ...]] = set()


def intrinsics(
    pixels: int, channels: int, kt: int, sums: int, window: tuple[int, int] | None = None
) -> tuple[str, str]:
    """The (init, update) tensor intrinsics of a ``pixels`` x ``16 * sums`` register tile
    over ``channels`` input channels, ``kt`` per step; with ``window`` ``(kh, kw)`` the update
    spans the whole window (:func:`_window_desc`). Registered on first use."""
    key = (pixels, channels, kt, sums, *(window or ()))
    suffix = "_".join(str(k) for k in key)
    init, update = f"bridge_amx_init_{suffix}", f"bridge_amx_update_{suffix}"
    if key not in _REGISTERED:
        s_tir.TensorIntrin.register(
            init, _init_desc(pixels, sums), _init_impl(pixels, kt, sums), override=True
        )
        if window is None:
            desc, impl = (
                _update_desc(pixels, channels, sums),
                _update_impl(pixels, channels, kt, sums),
            )
        else:
            desc = _window_desc(pixels, channels, sums, *window)
            impl = _window_impl(pixels, channels, kt, sums, *window)
        s_tir.TensorIntrin.register(update, desc, impl, override=True)
        _REGISTERED.add(key)
    return init, update


def horizontal_stride(sch: s_tir.Schedule, block) -> int | None:
    """The dot's horizontal stride: the coefficient of its output column in the column it reads
    from the activations (None where that is not linear)."""
    stmt = sch.get(block)
    column = stmt.reads[0].region[2].min
    coefficients = detect_linear_equation(column, [stmt.iter_vars[2].var])
    if len(coefficients) != 2 or not isinstance(coefficients[0], tirx.IntImm):
        return None
    return int(coefficients[0])


def _tile(sch: s_tir.Schedule, block):
    """Split and order the dot's loops for AMX: ``(n, y, x/pixels)`` parallel outside (with
    the output channels' register tiles too when there are few strips), the window, then the
    register tile ``(pixels, 16 x sums, C/4, 4)`` that one update tensorizes. Returns the
    parallel loop, whether it runs by strip, the tile's pixel loop, the window's first loop
    and the intrinsics' parameters."""
    if horizontal_stride(sch, block) != 1:
        raise ValueError("a tile's pixels are one row of activations: stride 1 only")
    n, y, x, o, rh, rw, rc, rg = sch.get_loops(block)
    pixels = largest_divisor(int(sch.get(x).extent), MAX_PIXELS)
    groups = int(sch.get(rc).extent)
    kt = 4 * largest_divisor(groups, MAX_KT // 4)
    tiles = int(sch.get(o).extent) // LANES
    sums = largest_divisor(tiles, MAX_SUMS)
    depth = 4 * groups * int(sch.get(rh).extent) * int(sch.get(rw).extent)
    if pixels < MIN_PIXELS or kt < MIN_KT or depth < MIN_DEPTH or int(sch.get(rg).extent) != 4:
        raise ValueError("tile too small for AMX")
    o_outer, o_tile = sch.split(o, [None, sums * LANES])
    x_outer, x_inner = sch.split(x, [None, pixels])
    strips = int(sch.get(n).extent) * int(sch.get(y).extent) * int(sch.get(x_outer).extent)
    first = weights_first(sch, block, 3) is not None
    by_strip = strips >= PARALLEL_STRIPS and not first
    outer = (o_outer, n, y, x_outer) if first else (n, y, x_outer, o_outer)
    sch.reorder(*outer, rh, rw, x_inner, o_tile, rc, rg)
    fused = sch.fuse(n, y, x_outer) if by_strip else sch.fuse(*outer)
    sch.parallel(fused)
    return fused, by_strip, x_inner, rh, (pixels, 4 * groups, kt, sums)


def schedule_amx(sch: s_tir.Schedule, whole_window: bool = True) -> None:
    """:func:`~bridge.schedules.int8.schedule_dot` with AMX tiles for the register tile; the
    sums of a whole strip of pixels (all output channels) go to memory, and the elementwise
    epilogue runs over the strip."""
    root = sch.get_sblock("root")
    block = _dot_block(sch)
    if str(sch.get(block).reads[0].source.dtype) != "uint8":
        raise ValueError("AMX multiplies uint8 activations")
    names = [sch.get(b).name_hint for b in sch.get_child_blocks(root)]
    epilogue = names[names.index(sch.get(block).name_hint) + 1 :]
    output = _epilogue_output(sch, block, epilogue)
    if epilogue and output is None:
        raise ValueError("no epilogue output")
    for name in epilogue[: epilogue.index(output)] if output else []:
        sch.compute_inline(sch.get_sblock(name))
    fused, by_strip, x_inner, rh, params = _tile(sch, block)
    if output is not None:
        out = sch.get_sblock(output)
        sch.reverse_compute_at(out, fused)
        _vector_inner(sch, out, LANES)
    if by_strip and _strip_copy(sch):
        _copy_per_strip(sch, fused)
    loops = [sch.get(loop) for loop in sch.get_loops(block)]
    first = next(i for i, loop in enumerate(loops) if loop.same_as(sch.get(rh)))
    window = (int(loops[first].extent), int(loops[first + 1].extent))
    whole_window = whole_window and window != (1, 1)
    init_name, update_name = intrinsics(*params, window if whole_window else None)
    init = sch.decompose_reduction(block, rh)
    sch.tensorize(sch.get_loops(init)[-2], init_name)
    sch.tensorize(rh if whole_window else x_inner, update_name)
    _vectorize_rest(sch, names, fused, LANES)
    sch.annotate(root, ANNOTATION, 1)


class AmxKernels(Int8Kernels):
    """:class:`~bridge.schedules.int8.Int8Kernels` on AMX tiles where the target has them and
    the kernel's shape suits them; other kernels are left to the rules after this one."""

    def apply(self, func: tirx.PrimFunc, target: tvm.target.Target, _tunable: bool):
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        if not has_amx(target) or "int8_dot" not in str(func):
            return None
        # the window in one update where it matches (no dilation), else one per position
        for whole_window in (True, False):
            sch = s_tir.Schedule(func)
            try:
                schedule_amx(sch, whole_window)
            except Exception:
                continue
            return sch
        return None


def _asks_for_amx(func: tirx.PrimFunc) -> tirx.PrimFunc:
    realize = func.body
    if not isinstance(realize, s_tir.SBlockRealize) or ANNOTATION not in realize.block.annotations:
        return func
    block = realize.block
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
        tirx.SeqStmt([ask, block.body]),
        block.init,
        block.alloc_buffers,
        block.match_buffers,
        annotations,
    )
    return func.with_body(s_tir.SBlockRealize(realize.iter_values, realize.predicate, body))


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
