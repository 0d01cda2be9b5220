"""Recurrent layers: SimpleRNN, LSTM, GRU (reset_after both ways), RNN over SimpleRNNCell,
LSTMCell, GRUCell or StackedRNNCells, and Bidirectional.

The input projection ``x @ kernel + bias`` is one matmul over all steps; the time loop is then
unrolled into the Relax graph (sequence lengths are static), each step adding
``h @ recurrent_kernel`` and applying the gates. A zero initial state skips the first step's
recurrent matmul. Initial states come as call inputs (``initial_state=``); a Keras mask
(``Embedding(mask_zero=True)``, ``Masking``) makes masked steps keep the previous state, and
output the previous output (or zeros with ``zero_output_for_mask``, which Bidirectional sets
when it returns sequences), as Keras does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tvm import relax
from tvm.relax import op as R

from bridge.convert.activations import activation_problem, apply_activation
from bridge.convert.registry import register

GATES = {"SimpleRNN": 1, "LSTM": 4, "GRU": 3}
CELLS = {"SimpleRNNCell": "SimpleRNN", "LSTMCell": "LSTM", "GRUCell": "GRU"}
STATES = {"SimpleRNN": 1, "LSTM": 2, "GRU": 1}
MERGE_MODES = ("concat", "sum", "mul", "ave", None)
Expr = relax.Expr


@dataclass(frozen=True)
class CellSpec:
    kind: str  # "SimpleRNN", "LSTM" or "GRU"
    config: dict[str, Any]  # the cell's (or the layer's) config: units, activations, bias
    prefix: str  # of its weight names


@dataclass(frozen=True)
class RNNSpec:
    """One recurrent layer: its cells (several for StackedRNNCells) and loop options."""

    cells: list[CellSpec]
    config: dict[str, Any]  # the layer's: return_sequences, return_state, go_backwards, ...

    def option(self, key: str, default: bool = False) -> bool:
        return bool(self.config.get(key, default))

    @property
    def state_count(self) -> int:
        return sum(STATES[c.kind] for c in self.cells)


def _entry(entry: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
    """(class_name, config) of a nested layer or cell entry."""
    entry = entry or {}
    return entry.get("class_name", ""), entry.get("config", {})


def rnn_spec(class_name: str, config: dict[str, Any], prefix: str = "") -> RNNSpec | str:
    """The layer's spec, or why it is not supported."""
    if class_name in GATES:
        return RNNSpec([CellSpec(class_name, config, prefix)], config)
    if class_name != "RNN":
        return f"wrapped layer {class_name!r} is not supported (only {[*GATES, 'RNN']})"
    cell_class, cell_config = _entry(config.get("cell"))
    entries = [(cell_class, cell_config)]
    if cell_class == "StackedRNNCells":
        entries = [_entry(e) for e in cell_config.get("cells", [])]
    if not entries or any(name not in CELLS for name, _ in entries):
        names = [name for name, _ in entries]
        return f"cells {names} are not supported (only {list(CELLS)} and StackedRNNCells of them)"
    stacked = len(entries) > 1 or cell_class == "StackedRNNCells"
    cells = [
        CellSpec(CELLS[name], cfg, f"{prefix}cell{i}/" if stacked else prefix)
        for i, (name, cfg) in enumerate(entries)
    ]
    return RNNSpec(cells, config)


def _cell_weights(cell: CellSpec) -> list[str]:
    names = ["kernel", "recurrent_kernel"]
    if cell.config.get("use_bias", True):
        names.append("bias")
    return [cell.prefix + n for n in names]


def _check_spec(spec: RNNSpec | str) -> list[str]:
    if isinstance(spec, str):
        return [spec]
    reasons = []
    for cell in spec.cells:
        reasons += activation_problem(cell.config.get("activation", "tanh"))
        if cell.kind != "SimpleRNN":
            reasons += activation_problem(cell.config.get("recurrent_activation", "sigmoid"))
    if spec.config.get("time_major"):
        reasons.append("time_major=True is not supported")
    if spec.config.get("stateful"):
        reasons.append("stateful=True is not supported (bridge starts every call from zero states)")
    return reasons


def _rnn_weights(config: dict[str, Any], class_name: str) -> list[str]:
    spec = rnn_spec(class_name, config)
    return [] if isinstance(spec, str) else [n for c in spec.cells for n in _cell_weights(c)]


def _directions(config: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Bidirectional's forward and backward layers; Keras 2 stores only the forward one."""
    forward = _entry(config.get("layer"))
    if config.get("backward_layer"):
        return [forward, _entry(config["backward_layer"])]
    flipped = {**forward[1], "go_backwards": not forward[1].get("go_backwards", False)}
    return [forward, (forward[0], flipped)]


def bidirectional_specs(config: dict[str, Any]) -> list[RNNSpec | str]:
    """Forward and backward specs; masked outputs are zeros when sequences are returned, since
    Keras' Bidirectional sets ``zero_output_for_mask = return_sequences`` on both."""
    specs = []
    for (class_name, inner), prefix in zip(_directions(config), ("forward/", "backward/")):
        zero = bool(inner.get("return_sequences", False))
        specs.append(rnn_spec(class_name, {**inner, "zero_output_for_mask": zero}, prefix))
    return specs


def _check_bidirectional(config: dict[str, Any]) -> list[str]:
    reasons = []
    if config.get("merge_mode", "concat") not in MERGE_MODES:
        reasons.append(f"merge_mode={config.get('merge_mode')!r} is not supported")
    for spec in bidirectional_specs(config):
        reasons += _check_spec(spec)
    return reasons


def _bidirectional_weights(config: dict[str, Any]) -> list[str]:
    specs = bidirectional_specs(config)
    if any(isinstance(s, str) for s in specs):
        return []
    return [n for s in specs for c in s.cells for n in _cell_weights(c)]


class _Cell:
    """One cell's weights and activations, emitting one time step at a time."""

    def __init__(self, ctx, spec: CellSpec, features: int):
        self.ctx = ctx
        self.kind = kind = spec.kind
        self.config = config = spec.config
        self.units = units = int(config["units"])
        prefix = spec.prefix
        width = GATES[kind] * units
        self.kernel = ctx.weight(prefix + "kernel", (features, width))
        self.recurrent = ctx.weight(prefix + "recurrent_kernel", (units, width))
        self.input_bias = self.recurrent_bias = None
        if ctx.has_weight(prefix + "bias"):
            if kind == "GRU" and config.get("reset_after", True):
                bias = ctx.weight(prefix + "bias", (2, width))
                self.input_bias = self._row(bias, 0)
                self.recurrent_bias = self._row(bias, 1)
            else:
                self.input_bias = ctx.weight(prefix + "bias", (width,))
        if kind == "GRU" and not config.get("reset_after", True):
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

    def project(self, x: Expr) -> Expr:
        """``x @ kernel + bias`` (any leading dimensions)."""
        return self._add(self._emit(R.matmul(x, self.kernel)), self.input_bias)

    def step(self, xt: Expr, state: list[Expr] | None) -> list[Expr]:
        """The new state list ([h] or [h, c]) after one step from the projected input ``xt``;
        ``state`` None means zeros."""
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


def _time_slices(ctx, x: Expr, keep_time_axis: bool = False) -> list[Expr]:
    """``x`` (batch, time, ...) split into its steps, (batch, ...) each (or (batch, 1, ...))."""
    shape = ctx.shape(x)
    pieces = ctx.emit(R.split(x, shape[1], axis=1))
    steps = [ctx.emit(relax.TupleGetItem(pieces, t)) for t in range(shape[1])]
    if keep_time_axis:
        return steps
    return [ctx.emit(R.reshape(s, (shape[0], *shape[2:]))) for s in steps]


def _masked(ctx, keep: Expr, new: Expr, old: Expr | None) -> Expr:
    """``new`` where the step is unmasked, else ``old`` (zeros if None)."""
    old = ctx.emit(R.zeros_like(new)) if old is None else old
    return ctx.emit(R.where(keep, new, old))


def split_states(spec: RNNSpec, states: list[Expr]) -> list[list[Expr] | None]:
    """A flat initial-state list ([h, c] per cell, cells in order) as per-cell lists."""
    if not states:
        return [None] * len(spec.cells)
    per_cell, at = [], 0
    for cell in spec.cells:
        per_cell.append(states[at : at + STATES[cell.kind]])
        at += STATES[cell.kind]
    return per_cell


def run_rnn(
    ctx, spec: RNNSpec, x: Expr, mask: Expr | None = None, initial: list[Expr] | None = None
) -> tuple[Expr, list[Expr]]:
    """(output, final states flattened) of one recurrent layer over ``x`` (batch, time, ...).

    The output is the last step's, or with ``return_sequences`` every step's, in the order the
    steps were processed (reversed in time for ``go_backwards``, as Keras returns them).
    """
    features = ctx.shape(x)[-1]
    cells = []
    for cell_spec in spec.cells:
        cells.append(_Cell(ctx, cell_spec, features))
        features = cells[-1].units
    steps = _time_slices(ctx, cells[0].project(x))
    keeps = _time_slices(ctx, mask, keep_time_axis=True) if mask is not None else None
    if spec.option("go_backwards"):
        steps = steps[::-1]
        keeps = keeps[::-1] if keeps is not None else None
    zero_output = spec.option("zero_output_for_mask")
    states = split_states(spec, initial or [])
    outputs = []
    for t, xt in enumerate(steps):
        new_states, inner = [], xt
        for i, cell in enumerate(cells):
            if i > 0:
                inner = cell.project(inner)
            new_states.append(cell.step(inner, states[i]))
            inner = new_states[-1][0]
        output = new_states[-1][0]
        if keeps is not None:
            keep = keeps[t]
            previous = None if zero_output or states[-1] is None else states[-1][0]
            output = _masked(ctx, keep, output, previous)
            new_states = [
                [_masked(ctx, keep, n, o[j] if o else None) for j, n in enumerate(new)]
                for new, o in zip(new_states, states)
            ]
        states = new_states
        outputs.append(output)
    sequences = spec.option("return_sequences")
    output = ctx.emit(R.stack(outputs, axis=1)) if sequences else outputs[-1]
    return output, [s for cell_states in states for s in cell_states]


def _sequence_mask(ctx, initial: list[Expr]) -> Expr | None:
    """The input's mask; Keras 3 passes none implicitly to a call that has initial states."""
    if initial and ctx.keras_major >= 3 and not ctx.explicit_masks:
        return None
    return ctx.mask(0)


def _initial_states(ctx, inputs: list[Expr], count: int) -> list[Expr]:
    """Initial states passed as ``initial_state=`` (Keras 3) or as extra inputs (Keras 2)."""
    states = list(inputs[1:]) + ctx.call_tensors("initial_state")
    if states and len(states) != count:
        ctx.fail(f"{len(states)} initial states given, the layer has {count}")
        return []
    return states


def _check_layer(class_name: str):
    return lambda config: _check_spec(rnn_spec(class_name, config))


def _weights_of(class_name: str):
    return lambda config: _rnn_weights(config, class_name)


def _register_rnn(class_name: str):
    @register(
        class_name,
        weights=_weights_of(class_name),
        check=_check_layer(class_name),
        masks="custom",
    )
    def recurrent(ctx, inputs):
        spec = rnn_spec(ctx.layer.class_name, ctx.config)
        initial = _initial_states(ctx, inputs, spec.state_count)
        mask = _sequence_mask(ctx, initial)
        output, state = run_rnn(ctx, spec, inputs[0], mask, initial)
        if spec.option("return_sequences"):
            ctx.set_masks([mask])
        return [output, *state] if spec.option("return_state") else output

    return recurrent


for _name in (*GATES, "RNN"):
    _register_rnn(_name)


@register(
    "Bidirectional", weights=_bidirectional_weights, check=_check_bidirectional, masks="custom"
)
def bidirectional(ctx, inputs):
    """Both directions (initial states: the forward layer's, then the backward one's); the
    backward sequence is put back in time order before merging."""
    x = inputs[0]
    forward_spec, backward_spec = bidirectional_specs(ctx.config)
    count = forward_spec.state_count
    initial = _initial_states(ctx, inputs, 2 * count)
    mask = _sequence_mask(ctx, initial)
    forward, fw_state = run_rnn(ctx, forward_spec, x, mask, initial[:count])
    backward, bw_state = run_rnn(ctx, backward_spec, x, mask, initial[count:])
    sequences = forward_spec.option("return_sequences")
    if sequences:
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
    if sequences:
        ctx.set_masks([mask] * len(merged))
    if forward_spec.option("return_state"):
        return [*merged, *fw_state, *bw_state]
    return merged if len(merged) > 1 else merged[0]
