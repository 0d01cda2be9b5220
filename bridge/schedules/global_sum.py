"""Sums over every pixel into one value per channel (global average pooling, squeeze-and-excite's
mean) at batch 1: split over the pixels, not over the channels.

The register-tile rule (:func:`bridge.schedules.cpu.tile_reduction`) runs a reduction's output
channels in parallel. With a single output pixel that leaves a handful of parallel iterations
(9 for 144 channels), each sweeping the whole map with a stride of the channel count: rows the
other core wrote, read 16 bytes at a time. Here the pixels are cut into :data:`CHUNKS` runs of
whole rows (``rfactor``): in parallel each run adds its pixels in memory order into a row of
per-channel partial sums, and the partial sums are then added up, channels vectorized, with
what follows the sum (a mean's divide) per vector of channels. Integer sums are exact, so the
result is the same bit for bit; float sums add in another order (runs of rows, then the runs).
"""

from __future__ import annotations

import math

from tvm import s_tir

from bridge.schedules.common import (
    COMM_REDUCE,
    attempt,
    iter_kinds,
    largest_divisor,
    loop_extent,
)

CHUNKS = 8  # runs of pixels summed in parallel (a divisor of the pixel count, at least 2)
MIN_PIXELS = 64  # fewer pixels per channel: the per-channel rule is as good


def sums_every_pixel(sch: s_tir.Schedule, block, lanes: int) -> bool:
    """``block`` (the kernel's only reduction) sums at least :data:`MIN_PIXELS` pixels, in
    whole rows that split into runs, into one output position per channel (every spatial
    axis but the contiguous channel axis of extent 1), ``lanes`` divides the channels and
    only elementwise blocks follow: what :func:`schedule_global_sum` takes. Changes nothing."""
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
    return largest_divisor(extents[n_spatial], CHUNKS) >= 2 and _elementwise_chain(sch, block)


def schedule_global_sum(sch: s_tir.Schedule, block, lanes: int) -> bool:
    """Schedule ``block``, which :func:`sums_every_pixel`, once its elementwise producers (the
    8-bit map's widening) are inlined; False if one is not (it may have inlined others: give
    it a schedule of its own)."""
    for producer in sch.get_producers(block):
        attempt(sch.compute_inline, producer)
    if sch.get_producers(block):
        return False
    kinds = iter_kinds(sch, block)
    n_spatial = kinds.index(COMM_REDUCE)
    loops = sch.get_loops(block)
    spatial, reduce = loops[:n_spatial], loops[n_spatial:]
    chunks = largest_divisor(loop_extent(sch.get(reduce[0])), CHUNKS)  # whole rows per run
    run, _ = sch.split(reduce[0], [chunks, None])
    partial = sch.rfactor(run, 0)
    _schedule_partial(sch, partial, len(spatial), lanes)
    _schedule_total(sch, block, len(spatial), lanes)
    return True


def _elementwise_chain(sch: s_tir.Schedule, block) -> bool:
    """The blocks after ``block`` (a mean's divide, a cast) form one chain of spatial blocks."""
    consumers = sch.get_consumers(block)
    while consumers:
        if len(consumers) > 1 or COMM_REDUCE in iter_kinds(sch, consumers[0]):
            return False
        consumers = sch.get_consumers(consumers[0])
    return True


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
    """The runs' partial sums added per channel, channels vectorized (a few hundred adds),
    and the blocks after it (a mean's divide) computed per vector of channels."""
    loops = sch.get_loops(block)
    channel, runs = loops[n_spatial - 1], loops[n_spatial:]
    ch_outer, ch_inner = sch.split(channel, [None, vector])
    sch.reorder(ch_outer, *runs, ch_inner)
    sch.vectorize(ch_inner)
    consumers = sch.get_consumers(block)
    while consumers:
        sch.reverse_compute_at(consumers[0], ch_outer)
        sch.vectorize(sch.get_loops(consumers[0])[-1])
        consumers = sch.get_consumers(consumers[0])
    init = sch.decompose_reduction(block, runs[0])
    sch.vectorize(sch.get_loops(init)[-1])
