"""Recurrent layers: SimpleRNN, LSTM, GRU (reset_after both ways) and Bidirectional.

The time loop is unrolled into the Relax graph (sequence lengths are static): the input
projection ``x @ kernel + bias`` is one matmul over all steps, then each step adds
``h @ recurrent_kernel`` and applies the gates. The first step starts from zero states, so its
recurrent matmul is skipped.
"""

from __future__ import annotations

from typing import Any

from tvm import relax
from tvm.relax import op as R

from bridge.convert.activations import activation_problem, apply_activation
from bridge.convert.registry import register

GATES = {"SimpleRNN": 1, "LSTM": 4, "GRU": 3}
MERGE_MODES = ("concat", "sum", "mul", "ave", None)
MAX_STEPS = 10_000
Expr = relax.Expr


def _rnn_weights(config: dict[str, Any]) -> list[str]:
    names = ["kernel", "recurrent_kernel"]
    return [*names, "bias"] if config.get("use_bias", True) else names


def _check_rnn(config: dict[str, Any]) -> list[str]:
    reasons = list(activation_problem(config.get("activation", "tanh")))
    if "recurrent_activation" in config:  # LSTM, GRU
        reasons += activation_problem(config["recurrent_activation"])
    if config.get("time_major"):
        reasons.append("time_major=True is not supported")
    if config.get("stateful"):
        reasons.append("stateful=True is not supported (bridge starts every call from zero states)")
    return reasons


def _inner(entry: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(class_name, config) of a wrapped layer entry."""
    return entry.get("class_name", ""), entry.get("config", {})


def _sublayers(config: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Bidirectional's forward and backward layers; Keras 2 stores only the forward one."""
    forward = _inner(config.get("layer") or {})
    if config.get("backward_layer"):
        return [forward, _inner(config["backward_layer"])]
    flipped = {**forward[1], "go_backwards": not forward[1].get("go_backwards", False)}
    return [forward, (forward[0], flipped)]


def _check_bidirectional(config: dict[str, Any]) -> list[str]:
    reasons = []
    if config.get("merge_mode", "concat") not in MERGE_MODES:
        reasons.append(f"merge_mode={config.get('merge_mode')!r} is not supported")
    for class_name, inner in _sublayers(config):
        if class_name not in GATES:
            reasons.append(f"wrapped layer {class_name!r} is not supported (only {list(GATES)})")
        else:
            reasons += _check_rnn(inner)
    return reasons


def _bidirectional_weights(config: dict[str, Any]) -> list[str]:
    (_, forward), (_, backward) = _sublayers(config)
    return [f"forward/{n}" for n in _rnn_weights(forward)] + [
        f"backward/{n}" for n in _rnn_weights(backward)
    ]


class _Cell:
    """One recurrent layer's weights and activations, emitting one time step at a time."""

    def __init__(self, ctx, class_name: str, config: dict[str, Any], features: int, prefix: str):
        self.ctx = ctx
        self.kind = class_name
        self.config = config
        self.units = units = int(config["units"])
        width = GATES[class_name] * units
        self.kernel = ctx.weight(prefix + "kernel", (features, width))
        self.recurrent = ctx.weight(prefix + "recurrent_kernel", (units, width))
        self.input_bias = self.recurrent_bias = None
        if ctx.has_weight(prefix + "bias"):
            if class_name == "GRU" and config.get("reset_after", True):
                bias = ctx.weight(prefix + "bias", (2, width))
                self.input_bias = self._row(bias, 0)
                self.recurrent_bias = self._row(bias, 1)
            else:
                self.input_bias = ctx.weight(prefix + "bias", (width,))
        if class_name == "GRU" and not config.get("reset_after", True):
            # (r * h) @ U_h needs the candidate's recurrent kernel apart from the gates'.
            self.recurrent_h = self._columns(self.recurrent, 2 * units, 3 * units)
            self.recurrent = self._columns(self.recurrent, 0, 2 * units)

    def _emit(self, expr: Expr) -> Expr:
        return self.ctx.emit(expr)

    def _row(self, x: Expr, i: int) -> Expr:
        row = self._emit(R.strided_slice(x, [0], [i], [i + 1]))
        return self._emit(R.reshape(row, (self.ctx.shape(x)[1],)))

    def _columns(self, x: Expr, begin: int, end: int) -> Expr:
        return self._emit(R.strided_slice(x, [1], [begin], [end]))

    def act(self, x: Expr) -> Expr:
        return apply_activation(self.ctx, x, self.config.get("activation", "tanh"))

    def rec_act(self, x: Expr) -> Expr:
        return apply_activation(self.ctx, x, self.config.get("recurrent_activation", "sigmoid"))

    def _add(self, a: Expr, b: Expr | None) -> Expr:
        return a if b is None else self._emit(R.add(a, b))

    def _mul(self, a: Expr, b: Expr) -> Expr:
        return self._emit(R.multiply(a, b))

    def _split(self, x: Expr, parts: int) -> list[Expr]:
        pieces = self._emit(R.split(x, parts, axis=-1))
        return [self._emit(relax.TupleGetItem(pieces, i)) for i in range(parts)]

    def projected_steps(self, x: Expr) -> list[Expr]:
        """``x @ kernel + bias`` for every step, as (batch, gates*units) tensors in time order."""
        batch, steps, _ = self.ctx.shape(x)
        xw = self._add(self._emit(R.matmul(x, self.kernel)), self.input_bias)
        width = self.ctx.shape(xw)[-1]
        pieces = self._emit(R.split(xw, steps, axis=1))
        return [
            self._emit(R.reshape(self._emit(relax.TupleGetItem(pieces, t)), (batch, width)))
            for t in range(steps)
        ]

    def step(self, xt: Expr, state: list[Expr] | None) -> list[Expr]:
        """The new state list ([h] or [h, c]) after one step; ``state`` None means zeros."""
        h = state[0] if state else None
        recurrent = None if h is None else self._emit(R.matmul(h, self.recurrent))
        if self.kind == "SimpleRNN":
            return [self.act(self._add(xt, recurrent))]
        if self.kind == "LSTM":
            i, f, g, o = self._split(self._add(xt, recurrent), 4)
            c = self._mul(self.rec_act(i), self.act(g))
            if state:
                c = self._add(c, self._mul(self.rec_act(f), state[1]))
            return [self._mul(self.rec_act(o), self.act(c)), c]
        return self._gru_step(xt, h, recurrent)

    def _gru_step(self, xt: Expr, h: Expr | None, recurrent: Expr | None) -> list[Expr]:
        xz, xr, xh = self._split(xt, 3)
        if self.config.get("reset_after", True):
            if recurrent is None:
                recurrent = self.recurrent_bias  # h = 0: only the recurrent bias (or nothing)
            else:
                recurrent = self._add(recurrent, self.recurrent_bias)
            rz, rr, rh = self._split(recurrent, 3) if recurrent is not None else (None,) * 3
            z = self.rec_act(self._add(xz, rz))
            r = self.rec_act(self._add(xr, rr))
            candidate = self.act(self._add(xh, None if rh is None else self._mul(r, rh)))
        else:
            rz, rr = self._split(recurrent, 2) if recurrent is not None else (None, None)
            z = self.rec_act(self._add(xz, rz))
            r = self.rec_act(self._add(xr, rr))
            reset = None if h is None else self._emit(R.matmul(self._mul(r, h), self.recurrent_h))
            candidate = self.act(self._add(xh, reset))
        # h' = z * h + (1 - z) * candidate = candidate + z * (h - candidate)
        if h is None:
            keep = self._emit(R.subtract(relax.const(1.0, "float32"), z))
            return [self._mul(keep, candidate)]
        return [self._add(candidate, self._mul(z, self._emit(R.subtract(h, candidate))))]


def run_rnn(
    ctx, class_name: str, config: dict[str, Any], x: Expr, prefix: str = ""
) -> tuple[Expr, list[Expr]]:
    """(output, final states) of one recurrent layer over ``x`` (batch, time, features).

    The output is the last step's ``h``, or with ``return_sequences`` every step's, in the order
    the steps were processed (reversed in time for ``go_backwards``, as Keras returns them).
    """
    if ctx.shape(x)[1] > MAX_STEPS:  # unrolled: ops and translation time grow with the steps
        raise ValueError(f"{ctx.shape(x)[1]} time steps; recurrent layers unroll up to {MAX_STEPS}")
    cell = _Cell(ctx, class_name, config, ctx.shape(x)[-1], prefix)
    steps = cell.projected_steps(x)
    if config.get("go_backwards", False):
        steps = steps[::-1]
    state: list[Expr] | None = None
    outputs = []
    for xt in steps:
        state = cell.step(xt, state)
        outputs.append(state[0])
    if config.get("return_sequences", False):
        output = ctx.emit(R.stack(outputs, axis=1))
    else:
        output = outputs[-1]
    return output, state


def _single_input(ctx, inputs: list[Expr]) -> Expr:
    if len(inputs) > 1:
        ctx.fail("initial states passed as inputs are not supported")
    return inputs[0]


@register("SimpleRNN", "LSTM", "GRU", weights=_rnn_weights, check=_check_rnn)
def recurrent(ctx, inputs):
    output, state = run_rnn(ctx, ctx.layer.class_name, ctx.config, _single_input(ctx, inputs))
    return [output, *state] if ctx.config.get("return_state", False) else output


@register("Bidirectional", weights=_bidirectional_weights, check=_check_bidirectional)
def bidirectional(ctx, inputs):
    """Both directions; the backward sequence is put back in time order before merging."""
    x = _single_input(ctx, inputs)
    (fw_class, fw_config), (bw_class, bw_config) = _sublayers(ctx.config)
    forward, fw_state = run_rnn(ctx, fw_class, fw_config, x, "forward/")
    backward, bw_state = run_rnn(ctx, bw_class, bw_config, x, "backward/")
    if fw_config.get("return_sequences", False):
        backward = ctx.emit(R.flip(backward, axis=1))
    mode = ctx.config.get("merge_mode", "concat")
    if mode is None:
        merged = [forward, backward]
    elif mode == "concat":
        merged = [ctx.emit(R.concat([forward, backward], axis=-1))]
    elif mode == "sum":
        merged = [ctx.emit(R.add(forward, backward))]
    elif mode == "mul":
        merged = [ctx.emit(R.multiply(forward, backward))]
    else:
        total = ctx.emit(R.add(forward, backward))
        merged = [ctx.emit(R.multiply(total, relax.const(0.5, "float32")))]
    if fw_config.get("return_state", False):
        return [*merged, *fw_state, *bw_state]
    return merged if len(merged) > 1 else merged[0]
