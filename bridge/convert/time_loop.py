"""Recurrent time loops as one TIR kernel (CPU): the whole sequence of a SimpleRNN, LSTM or GRU
layer runs in a single call, with the time loop a loop, so compile time does not grow with the
sequence length and no step pays a kernel launch.

The Relax graph computes the input projection ``x @ kernel + bias`` for all steps (one large
matmul); the kernel then runs step by step: the recurrent product ``h @ recurrent_kernel``
(vectorized over the gate columns, several register accumulators per column block, each block
of the kernel reused from L1 for every batch row), then the gates, elementwise and vectorized,
with ``tanh`` and ``sigmoid`` as rational approximations (Eigen's, a few float32 ulps) so that
they vectorize.
A Keras mask, initial states, ``go_backwards`` and ``zero_output_for_mask`` are handled inside.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tvm import tirx
from tvm.script import tirx as T

Act = Callable[[tirx.Expr], tirx.Expr]

# tanh(x) = x * P(x^2) / Q(x^2) on [-7.9, 7.9] (Eigen's float tanh; TVM's fast_tanh).
TANH_CLAMP = 7.90531110763549805
TANH_P = (
    -2.76076847742355e-16,
    2.00018790482477e-13,
    -8.60467152213735e-11,
    5.12229709037114e-08,
    1.48572235717979e-05,
    6.37261928875436e-04,
    4.89352455891786e-03,
)
TANH_Q = (1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03, 4.89352518554385e-03)


def _f(value: float) -> tirx.Expr:
    return tirx.const(value, "float32")


def _horner(x2: tirx.Expr, coefficients: tuple[float, ...]) -> tirx.Expr:
    result = _f(coefficients[0])
    for c in coefficients[1:]:
        result = result * x2 + _f(c)
    return result


def fast_tanh(x: tirx.Expr) -> tirx.Expr:
    x = tirx.max(tirx.min(x, _f(TANH_CLAMP)), _f(-TANH_CLAMP))
    x2 = x * x
    return x * _horner(x2, TANH_P) / _horner(x2, TANH_Q)


def fast_sigmoid(x: tirx.Expr) -> tirx.Expr:
    return _f(0.5) * fast_tanh(_f(0.5) * x) + _f(0.5)


def _clip01(x: tirx.Expr) -> tirx.Expr:
    return tirx.max(tirx.min(x, _f(1.0)), _f(0.0))


# Activations the kernel computes itself; a layer using any other runs unrolled.
KERNEL_ACTIVATIONS: dict[str, Callable[[int], Act]] = {
    "tanh": lambda major: fast_tanh,
    "sigmoid": lambda major: fast_sigmoid,
    "relu": lambda major: lambda x: tirx.max(x, _f(0.0)),
    "linear": lambda major: lambda x: x,
    # Keras 2: clip(0.2x + 0.5, 0, 1); Keras 3: relu6(x + 3) / 6
    "hard_sigmoid": lambda major: (
        (lambda x: _clip01(_f(0.2) * x + _f(0.5)))
        if major < 3
        else (lambda x: _clip01(x * _f(1.0 / 6.0) + _f(0.5)))
    ),
}


@dataclass(frozen=True)
class LoopSpec:
    """What one kernel computes (everything static but the batch and the number of steps: one
    kernel runs any sequence length, a symbolic one included)."""

    kind: str  # "SimpleRNN", "LSTM", "GRU"
    reset_after: bool  # GRU
    units: int
    backwards: bool
    masked: bool
    zero_output: bool  # masked steps output zeros instead of the previous output
    activation: str
    recurrent_activation: str
    keras_major: int

    @property
    def states(self) -> int:
        return 2 if self.kind == "LSTM" else 1

    @property
    def width(self) -> int:
        """Columns of the input projection (and of the recurrent kernel)."""
        return {"SimpleRNN": 1, "LSTM": 4, "GRU": 3}[self.kind] * self.units


# Batch rows per register tile of the recurrent product (ROWS x block accumulators).
ROWS = 4


def _lanes(n: int, limit: int = 16) -> int:
    return next(d for d in (limit, 8, 4, 2, 1) if d <= limit and n % d == 0)


def scan_kernel(spec: LoopSpec) -> tirx.PrimFunc:
    """The PrimFunc ``(xw, recurrent_kernel, recurrent_bias, mask, *initial) -> (sequence,
    *final)``: ``xw`` (B, T, width) the projected inputs in time order (B and T any sizes),
    ``recurrent_bias`` (width,) (zeros unless a GRU with reset_after has one), ``mask`` (B, T)
    float32 (1 keeps a step; ones when unmasked), states (B, units); ``sequence`` (B, T, units)
    is every step's output in processing order."""
    units, width = spec.units, spec.width
    act = KERNEL_ACTIVATIONS[spec.activation](spec.keras_major)
    rec_act = KERNEL_ACTIVATIONS[spec.recurrent_activation](spec.keras_major)
    # Recurrent columns multiplied by h directly (a reset_before GRU's candidate uses r * h).
    direct = 2 * units if spec.kind == "GRU" and not spec.reset_after else width
    lanes = _lanes(direct)
    block = lanes * next(d for d in (4, 2, 1) if (direct // lanes) % d == 0)  # one row
    tile = lanes * next(d for d in (2, 1) if (direct // lanes) % d == 0)  # ROWS rows
    u_lanes = _lanes(units)
    lstm, gru, reset_after = spec.kind == "LSTM", spec.kind == "GRU", spec.reset_after
    masked, zero_output, backwards = spec.masked, spec.zero_output, spec.backwards
    fzero, fone = _f(0.0), _f(1.0)

    def source(t, steps):
        return steps - 1 - t if backwards else t

    def ix(outer, inner):
        return outer * u_lanes + inner

    def pre(xw, acc, b, t, gate, outer, inner):
        """Gate ``gate``'s pre-activation at unit ``ix(outer, inner)``: input + recurrent."""
        column = gate * units + ix(outer, inner)
        return xw[b, source(t, xw.shape[1]), column] + acc[b, column]

    # The new states as expressions (no let bindings: TIR's vectorizer mishandles them here).
    def new_c(xw, acc, c, b, t, outer, inner):
        forget = rec_act(pre(xw, acc, b, t, 1, outer, inner)) * c[b, ix(outer, inner)]
        update = rec_act(pre(xw, acc, b, t, 0, outer, inner)) * act(
            pre(xw, acc, b, t, 2, outer, inner)
        )
        return forget + update

    def new_h(xw, acc, h, c, b, t, outer, inner):
        if lstm:
            cell = new_c(xw, acc, c, b, t, outer, inner)
            return rec_act(pre(xw, acc, b, t, 3, outer, inner)) * act(cell)
        if not gru:
            return act(pre(xw, acc, b, t, 0, outer, inner))
        z = rec_act(pre(xw, acc, b, t, 0, outer, inner))
        if reset_after:
            r = rec_act(pre(xw, acc, b, t, 1, outer, inner))
            column = 2 * units + ix(outer, inner)
            candidate = act(xw[b, source(t, xw.shape[1]), column] + r * acc[b, column])
        else:
            candidate = act(pre(xw, acc, b, t, 2, outer, inner))
        return z * h[b, ix(outer, inner)] + (fone - z) * candidate

    def keep(mask, b, t):
        return mask[b, source(t, mask.shape[1])] > _f(0.5)

    @T.prim_func(private=True)
    def rnn_scan(
        var_xw: T.handle,
        kernel: T.Buffer((units, width), "float32"),
        rbias: T.Buffer((width,), "float32"),
        var_mask: T.handle,
        var_h0: T.handle,
        var_c0: T.handle,
        var_seq: T.handle,
        var_h: T.handle,
        var_c: T.handle,
    ):
        T.func_attr({"tir.noalias": True, "tir.is_scheduled": True})
        batch = T.int64()
        steps = T.int64()
        xw = T.match_buffer(var_xw, (batch, steps, width), "float32")
        mask = T.match_buffer(var_mask, (batch, steps), "float32")
        h0 = T.match_buffer(var_h0, (batch, units), "float32")
        c0 = T.match_buffer(var_c0, (batch, units), "float32")
        seq = T.match_buffer(var_seq, (batch, steps, units), "float32")
        h = T.match_buffer(var_h, (batch, units), "float32")
        c = T.match_buffer(var_c, (batch, units), "float32")
        acc = T.decl_buffer((batch, width), "float32")
        gate = T.decl_buffer((batch, units), "float32")
        reg = T.decl_buffer((ROWS * block,), "float32", scope="local")
        for b, u in T.grid(batch, units):
            h[b, u] = h0[b, u]
            c[b, u] = c0[b, u]
        for t in range(steps):
            # acc = h @ kernel[:, :direct] (+ recurrent bias), a column block of the kernel at a
            # time (reused from L1 for every batch row): ROWS batch rows share each load of a
            # block of ``tile`` columns; each row left over (batch 1) takes ``block`` columns
            # with k split in ROWS partial sums, so the accumulators are independent either way
            # and the FMA units stay busy
            for jo in range(direct // tile):
                for bo in range(batch // ROWS):
                    for r in T.unroll(ROWS):
                        for j in T.vectorized(tile):
                            reg[r * tile + j] = rbias[jo * tile + j]
                    for k in range(units):
                        for r in T.unroll(ROWS):
                            for j in T.vectorized(tile):
                                reg[r * tile + j] = reg[r * tile + j] + (
                                    h[bo * ROWS + r, k] * kernel[k, jo * tile + j]
                                )
                    for r in T.unroll(ROWS):
                        for j in T.vectorized(tile):
                            acc[bo * ROWS + r, jo * tile + j] = reg[r * tile + j]
            for jo in range(direct // block):
                for b in range(batch // ROWS * ROWS, batch):
                    for j in T.vectorized(block):
                        reg[j] = rbias[jo * block + j]
                    for r in T.unroll(1, ROWS):
                        for j in T.vectorized(block):
                            reg[r * block + j] = fzero
                    for ko in range(units // ROWS):
                        for r in T.unroll(ROWS):
                            for j in T.vectorized(block):
                                reg[r * block + j] = (
                                    reg[r * block + j]
                                    + h[b, ko * ROWS + r] * kernel[ko * ROWS + r, jo * block + j]
                                )
                    for k in range(units // ROWS * ROWS, units):
                        for j in T.vectorized(block):
                            reg[j] = reg[j] + h[b, k] * kernel[k, jo * block + j]
                    for j in T.vectorized(block):
                        acc[b, jo * block + j] = reg[j]
                    for r in range(1, ROWS):
                        for j in T.vectorized(block):
                            acc[b, jo * block + j] = acc[b, jo * block + j] + reg[r * block + j]
            if gru and not reset_after:
                # r * h first, then acc[:, 2U:] = (r * h) @ kernel[:, 2U:]
                for b, uo in T.grid(batch, units // u_lanes):
                    for ui in T.vectorized(u_lanes):
                        gate[b, uo * u_lanes + ui] = (
                            rec_act(
                                xw[b, source(t, steps), units + uo * u_lanes + ui]
                                + acc[b, units + uo * u_lanes + ui]
                            )
                            * h[b, uo * u_lanes + ui]
                        )
                for jo in range(units // u_lanes):
                    for b in range(batch):
                        for j in T.vectorized(u_lanes):
                            reg[j] = rbias[2 * units + jo * u_lanes + j]
                        for k in range(units):
                            for j in T.vectorized(u_lanes):
                                reg[j] = (
                                    reg[j] + gate[b, k] * kernel[k, 2 * units + jo * u_lanes + j]
                                )
                        for j in T.vectorized(u_lanes):
                            acc[b, 2 * units + jo * u_lanes + j] = reg[j]
            for b in range(batch):
                for uo in range(units // u_lanes):
                    for ui in T.vectorized(u_lanes):
                        if masked:
                            if zero_output:
                                seq[b, t, ix(uo, ui)] = T.Select(
                                    keep(mask, b, t), new_h(xw, acc, h, c, b, t, uo, ui), fzero
                                )
                            else:
                                seq[b, t, ix(uo, ui)] = T.Select(
                                    keep(mask, b, t),
                                    new_h(xw, acc, h, c, b, t, uo, ui),
                                    h[b, ix(uo, ui)],
                                )
                            if lstm:
                                c[b, ix(uo, ui)] = T.Select(
                                    keep(mask, b, t),
                                    new_c(xw, acc, c, b, t, uo, ui),
                                    c[b, ix(uo, ui)],
                                )
                            if zero_output:
                                h[b, ix(uo, ui)] = T.Select(
                                    keep(mask, b, t), seq[b, t, ix(uo, ui)], h[b, ix(uo, ui)]
                                )
                            else:
                                h[b, ix(uo, ui)] = seq[b, t, ix(uo, ui)]
                        else:
                            seq[b, t, ix(uo, ui)] = new_h(xw, acc, h, c, b, t, uo, ui)
                            if lstm:
                                c[b, ix(uo, ui)] = new_c(xw, acc, c, b, t, uo, ui)
                            h[b, ix(uo, ui)] = seq[b, t, ix(uo, ui)]

    return rnn_scan
