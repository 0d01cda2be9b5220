"""Sums over every pixel into one value per channel (global average pooling, squeeze-and-excite's
mean) at batch 1: split over the pixels, not over the channels.

The register-tile rule (:func:`bridge.schedules.cpu.tile_reduction`) runs a reduction's output
channels in parallel. With a single output pixel that leaves a handful of parallel iterations
(9 for 144 channels), each sweeping the whole map with a stride of the channel count: rows the
other core wrote, read 16 bytes at a time. Here the pixels are cut into :data:`CHUNKS` runs of
whole rows (``rfactor``): in parallel each run adds its pixels in memory order into a row of
per-channel partial sums, and the partial sums are then added up, channels vectorized. Integer
sums are exact, so the result is the same bit for bit (float sums associate differently).
"""

from __future__ import annotations

import contextlib
import math

from tvm import s_tir

from bridge.schedules.common import COMM_REDUCE, iter_kinds, largest_divisor, loop_extent

CHUNKS = 8  # runs of pixels summed in parallel (a divisor of the pixel count, at least 2)
MIN_PIXELS = 64  # fewer pixels per channel: the per-channel rule is as good


def schedule_global_sum(sch: s_tir.Schedule, block, lanes: int) -> bool:
    """Schedule ``block`` (the kernel's only reduction, writing its output) when it sums at
    least :data:`MIN_PIXELS` pixels of an integer map into one output position per channel
    (every spatial axis but the contiguous channel axis of extent 1) and ``lanes`` divides
    the channels; False otherwise (its elementwise producers may then be inlined already:
    try it on a schedule of its own)."""
    kinds = iter_kinds(sch, block)
    loops = sch.get_loops(block)
    if COMM_REDUCE not in kinds or len(loops) != len(kinds):
        return False
    n_spatial = kinds.index(COMM_REDUCE)
    extents = [loop_extent(sch.get(loop)) for loop in loops]
    if n_spatial < 1 or None in extents or any(k != COMM_REDUCE for k in kinds[n_spatial:]):
        return False
    channels, pixels = extents[n_spatial - 1], math.prod(extents[n_spatial:])
    if math.prod(extents[: n_spatial - 1]) != 1 or channels % lanes or pixels < MIN_PIXELS:
        return False
    if not str(sch.get(block).writes[0].source.dtype).startswith(("int", "uint")):
        return False
    for producer in sch.get_producers(block):  # the 8-bit map's widening
        _inline(sch, producer)
    if sch.get_consumers(block) or sch.get_producers(block):
        return False
    chunks = largest_divisor(extents[n_spatial], CHUNKS)  # whole rows per run
    if chunks < 2:
        return False
    spatial, reduce = loops[:n_spatial], loops[n_spatial:]
    run, _ = sch.split(reduce[0], [chunks, None])
    partial = sch.rfactor(run, 0)
    _schedule_partial(sch, partial, len(spatial), lanes)
    _schedule_total(sch, block, len(spatial), lanes)
    return True


def _inline(sch: s_tir.Schedule, block) -> None:
    with contextlib.suppress(Exception):  # a producer that does not inline: the rule declines
        sch.compute_inline(block)


def _schedule_partial(sch: s_tir.Schedule, partial, n_spatial: int, lanes: int) -> None:
    """Each run (parallel) adds its pixels, in memory order, channels vectorized. The partial
    block keeps the original loops: the ``n_spatial`` output axes (channels last), the run,
    then the rest of the pixel loops."""
    loops = sch.get_loops(partial)
    channel, run, pixels = loops[n_spatial - 1], loops[n_spatial], loops[n_spatial + 1 :]
    ch_outer, ch_inner = sch.split(channel, [None, lanes])
    sch.reorder(run, *pixels, ch_outer, ch_inner)
    sch.parallel(run)
    sch.vectorize(ch_inner)
    init = sch.decompose_reduction(partial, pixels[0])
    sch.vectorize(sch.get_loops(init)[-1])


def _schedule_total(sch: s_tir.Schedule, block, n_spatial: int, vector: int) -> None:
    """The runs' partial sums added per channel, channels vectorized (a few hundred adds)."""
    loops = sch.get_loops(block)
    channel, runs = loops[n_spatial - 1], loops[n_spatial:]
    ch_outer, ch_inner = sch.split(channel, [None, vector])
    sch.reorder(ch_outer, *runs, ch_inner)
    sch.vectorize(ch_inner)
    init = sch.decompose_reduction(block, runs[0])
    sch.vectorize(sch.get_loops(init)[-1])
