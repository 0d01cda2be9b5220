"""Recurrent layers: SimpleRNN, LSTM, GRU (reset_after both ways), RNN over SimpleRNNCell,
LSTMCell, GRUCell or StackedRNNCells, ConvLSTM1D/2D/3D, and Bidirectional.

The input projection ``x @ kernel + bias`` (ConvLSTM: the input convolution) is one op over
all steps. The time loop then takes one of two forms:

* on CPUs, a single SimpleRNN/LSTM/GRU cell runs as one TIR loop kernel
  (:mod:`bridge.convert.time_loop`): compile time does not grow with the sequence length;
* otherwise (CUDA builds, StackedRNNCells, ConvLSTM, activations the kernel lacks) the loop is
  unrolled into the Relax graph (sequence lengths are static), each step adding
  ``h @ recurrent_kernel`` and applying the gates; a zero initial state skips the first step's
  recurrent matmul.

Initial states come as call inputs (``initial_state=``); a Keras mask
(``Embedding(mask_zero=True)``, ``Masking``) makes masked steps keep the previous state, and
output the previous output (or zeros with ``zero_output_for_mask``, which Bidirectional sets
when it returns sequences), as Keras does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from tvm import relax
from tvm.relax import op as R

from bridge.convert.activations import activation_name, activation_problem, apply_activation
from bridge.convert.context import dtype_of
from bridge.convert.registry import register, register_parts
from bridge.convert.spatial import (
    DATA_LAYOUT,
    KERNEL_LAYOUT,
    channels_first,
    ntuple,
    paddings,
    to_channels_first,
    to_channels_last,
)
from bridge.convert.time_loop import KERNEL_ACTIVATIONS, LoopSpec, scan_kernel
from bridge.keras.weights import snake_case

GATES = {"SimpleRNN": 1, "LSTM": 4, "GRU": 3, "ConvLSTM": 4}
CELLS = {"SimpleRNNCell": "SimpleRNN", "LSTMCell": "LSTM", "GRUCell": "GRU"}
register_parts(*CELLS, "StackedRNNCells", within="RNN")  # converted with the RNN holding them
STATES = {"SimpleRNN": 1, "LSTM": 2, "GRU": 1, "ConvLSTM": 2}
CONV_LSTM = {"ConvLSTM1D": 1, "ConvLSTM2D": 2, "ConvLSTM3D": 3}
CONV_OPS = {1: R.nn.conv1d, 2: R.nn.conv2d, 3: R.nn.conv3d}
LAYERS = ("SimpleRNN", "LSTM", "GRU", "RNN", *CONV_LSTM)
MAX_UNROLLED_STEPS = 10_000  # unrolled loops grow ops and translation time with the steps
MERGE_MODES = ("concat", "sum", "mul", "ave", None)
Expr = relax.Expr


@dataclass(frozen=True)
class CellSpec:
    kind: str  # "SimpleRNN", "LSTM", "GRU" or "ConvLSTM"
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
    if class_name in ("SimpleRNN", "LSTM", "GRU"):
        return RNNSpec([CellSpec(class_name, config, prefix)], config)
    if class_name in CONV_LSTM:
        return RNNSpec([CellSpec("ConvLSTM", config, prefix)], config)
    if class_name != "RNN":
        return f"wrapped layer {class_name!r} is not supported (only {list(LAYERS)})"
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
        self.units = units = int(config["filters" if kind == "ConvLSTM" else "units"])
        prefix = spec.prefix
        width = GATES[kind] * units
        window = ()
        if kind == "ConvLSTM":  # Keras stores the kernel size as one entry per spatial axis
            size = config["kernel_size"]
            window = tuple(int(k) for k in (size if isinstance(size, (list, tuple)) else [size]))
        self.kernel = ctx.weight(prefix + "kernel", (*window, features, width))
        self.recurrent = ctx.weight(prefix + "recurrent_kernel", (*window, units, width))
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
        """``x @ kernel + bias`` (any leading dimensions); ConvLSTM: the input convolution of
        every step of ``x`` (batch, time, *spatial, channels) at once."""
        if self.kind != "ConvLSTM":
            return self._add(self._emit(R.matmul(x, self.kernel)), self.input_bias)
        batch, steps, *rest = self.ctx.shape(x)
        folded = self._emit(R.reshape(x, (batch * steps, *rest)))
        y = self._conv(folded, self.kernel, self.config.get("padding", "valid"), True)
        y = self._add(y, self.input_bias)
        return self._emit(R.reshape(y, (batch, steps, *self.ctx.shape(y)[1:])))

    def _conv(self, x: Expr, kernel: Expr, padding: str, strided: bool) -> Expr:
        """ConvLSTM's convolutions, channels_last: the input one with the layer's strides and
        dilation, the recurrent one with neither and 'same' padding."""
        n = len(self.ctx.shape(x)) - 2
        window = self.ctx.shape(kernel)[:n]
        strides = ntuple(self.config.get("strides", 1), n) if strided else (1,) * n
        dilation = ntuple(self.config.get("dilation_rate", 1), n) if strided else (1,) * n
        befores, afters = paddings(padding, self.ctx.shape(x)[1:-1], window, strides, dilation)
        conv = CONV_OPS[n](
            x,
            kernel,
            strides=strides,
            padding=befores + afters,
            dilation=dilation,
            data_layout=DATA_LAYOUT[n],
            kernel_layout=KERNEL_LAYOUT[n],
        )
        return self._emit(conv)

    def _recurrent(self, h: Expr) -> Expr:
        if self.kind == "ConvLSTM":
            return self._conv(h, self.recurrent, "same", False)
        return self._emit(R.matmul(h, self.recurrent))

    def step(self, xt: Expr, state: list[Expr] | None) -> list[Expr]:
        """The new state list ([h] or [h, c]) after one step from the projected input ``xt``;
        ``state`` None means zeros."""
        h = state[0] if state else None
        recurrent = None if h is None else self._recurrent(h)
        if self.kind == "SimpleRNN":
            return [self.act(self._add(xt, recurrent))]
        if self.kind in ("LSTM", "ConvLSTM"):
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
    """``new`` where the step is unmasked, else ``old`` (zeros if None); ``keep`` is
    (batch, 1), broadcast over the state's other axes."""
    old = ctx.emit(R.zeros_like(new)) if old is None else old
    while len(ctx.shape(keep)) < len(ctx.shape(new)):
        keep = ctx.emit(R.expand_dims(keep, -1))
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


def _loop_spec(ctx, spec: RNNSpec, x: Expr, mask: Expr | None) -> LoopSpec | None:
    """The loop kernel's spec when it can run this layer (CPU, one SimpleRNN/LSTM/GRU cell,
    activations it computes, float32), else None: the loop is unrolled into the graph."""
    if ctx.device != "cpu" or len(spec.cells) != 1 or dtype_of(x) != "float32":
        return None
    cell = spec.cells[0]
    if cell.kind not in ("SimpleRNN", "LSTM", "GRU"):
        return None
    names = [activation_name(cell.config.get("activation", "tanh"))]
    if cell.kind != "SimpleRNN":
        names.append(activation_name(cell.config.get("recurrent_activation", "sigmoid")))
    if any(name not in KERNEL_ACTIVATIONS for name in names):
        return None
    return LoopSpec(
        kind=cell.kind,
        reset_after=bool(cell.config.get("reset_after", True)),
        units=int(cell.config["units"]),
        backwards=spec.option("go_backwards"),
        masked=mask is not None,
        zero_output=spec.option("zero_output_for_mask"),
        activation=names[0],
        recurrent_activation=names[-1] if cell.kind != "SimpleRNN" else "sigmoid",
        keras_major=ctx.keras_major,
    )


def _run_kernel(
    ctx, spec: RNNSpec, loop: LoopSpec, x: Expr, mask: Expr | None, initial: list[Expr]
) -> tuple[Expr, list[Expr]]:
    """The layer as one call of the loop kernel (see ``bridge.convert.time_loop``)."""
    cell_spec = spec.cells[0]
    cell = _Cell(ctx, cell_spec, ctx.shape(x)[-1])
    batch, steps = ctx.shape(x)[:2]
    width, units = loop.width, loop.units
    kernel = ctx.weight(cell_spec.prefix + "recurrent_kernel", (units, width))
    rbias = cell.recurrent_bias
    if rbias is None:
        rbias = ctx.const(np.zeros((width,), dtype="float32"))
    if mask is None:
        keep = ctx.emit(R.ones((batch, steps), "float32"))
    else:
        keep = ctx.emit(R.astype(mask, "float32"))
    zeros = ctx.emit(R.zeros((batch, units), "float32"))
    h0 = initial[0] if initial else zeros
    c0 = initial[1] if initial and loop.states == 2 else zeros
    function = ctx.bb.add_func(scan_kernel(loop), f"{loop.kind.lower()}_scan")
    state = relax.TensorType((batch, units), "float32")
    result = ctx.emit(
        R.call_tir(
            function,
            [cell.project(x), kernel, rbias, keep, h0, c0],
            [relax.TensorType((batch, steps, units), "float32"), state, state],
        )
    )
    sequence = ctx.emit(relax.TupleGetItem(result, 0))
    states = [ctx.emit(relax.TupleGetItem(result, i)) for i in range(1, 1 + loop.states)]
    if spec.option("return_sequences"):
        return sequence, states
    last = ctx.emit(R.strided_slice(sequence, [1], [steps - 1], [steps]))
    return ctx.emit(R.reshape(last, (batch, units))), states


def run_rnn(
    ctx, spec: RNNSpec, x: Expr, mask: Expr | None = None, initial: list[Expr] | None = None
) -> tuple[Expr, list[Expr]]:
    """(output, final states flattened) of one recurrent layer over ``x`` (batch, time, ...).

    The output is the last step's, or with ``return_sequences`` every step's, in the order the
    steps were processed (reversed in time for ``go_backwards``, as Keras returns them). On
    CPUs a single-cell layer runs as one loop kernel, otherwise the loop is unrolled.
    """
    loop = _loop_spec(ctx, spec, x, mask)
    if loop is not None:
        return _run_kernel(ctx, spec, loop, x, mask, initial or [])
    if ctx.shape(x)[1] > MAX_UNROLLED_STEPS:
        raise ValueError(
            f"{ctx.shape(x)[1]} time steps; this layer is unrolled, up to {MAX_UNROLLED_STEPS}"
        )
    conv = spec.cells[0].kind == "ConvLSTM" and channels_first(spec.config)
    if conv:  # (B, T, C, *spatial) -> (B, T, *spatial, C); states likewise, and back at the end
        x = ctx.emit(R.permute_dims(x, [0, 1, *range(3, len(ctx.shape(x))), 2]))
        initial = [to_channels_last(ctx, s) for s in initial or []]
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
    final = [s for cell_states in states for s in cell_states]
    if conv:
        final = [to_channels_first(ctx, s) for s in final]
        rank = len(ctx.shape(output))
        order = [0, 1, rank - 1, *range(2, rank - 1)] if sequences else None
        output = (
            ctx.emit(R.permute_dims(output, order)) if order else to_channels_first(ctx, output)
        )
    return output, final


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


def _cell_groups(group: str, cell: Any) -> list[str]:
    """Where a cell keeps its variables (Keras 3 layout): ``<group>`` itself, or for
    StackedRNNCells one group per cell, ``<group>/cells/<snake_case(class)>[_n]`` in cell order."""
    cell = cell if isinstance(cell, dict) else {}
    if cell.get("class_name") != "StackedRNNCells":
        return [group]
    counters: dict[str, int] = {}
    groups = []
    for entry in (cell.get("config") or {}).get("cells") or []:
        base = snake_case(entry.get("class_name", "") if isinstance(entry, dict) else "")
        count = counters.get(base, 0)
        groups.append(f"{group}/cells/{base}" + (f"_{count}" if count else ""))
        counters[base] = count + 1
    return groups


def _rnn_sublayers(config: dict[str, Any]) -> list[str]:
    return _cell_groups("cell", config.get("cell"))


def _bidirectional_sublayers(config: dict[str, Any]) -> list[str]:
    """Each direction's cell: ``forward_layer/cell``, ``backward_layer/cell`` (K2.15's extra,
    empty ``layer/cell/vars`` is not a weight source)."""
    groups = []
    for sub, key in (("forward_layer", "layer"), ("backward_layer", "backward_layer")):
        wrapped = config.get(key) or config.get("layer")
        inner = wrapped.get("config", {}) if isinstance(wrapped, dict) else {}
        groups += _cell_groups(
            f"{sub}/cell", inner.get("cell") if isinstance(inner, dict) else None
        )
    return groups


def _register_rnn(class_name: str):
    @register(
        class_name,
        weights=_weights_of(class_name),
        check=_check_layer(class_name),
        masks="custom",
        sublayers=_rnn_sublayers if class_name == "RNN" else ("cell",),
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


for _name in LAYERS:
    _register_rnn(_name)


@register(
    "Bidirectional",
    weights=_bidirectional_weights,
    check=_check_bidirectional,
    masks="custom",
    sublayers=_bidirectional_sublayers,
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
