"""The flatbuffer as TVM's frontend should see it after bridge's rewrites, without re-encoding.

``ModelView``/``SubGraphView``/``TensorView``/``BufferView`` subclass the ``tflite`` package's
accessor classes (TVM checks ``isinstance(model, tflite.Model)``) and override only what the
rewrites change: folded operators vanish, rewritten constants read as float32 tensors with new
buffers, buffers stored after the flatbuffer (models over 2 GiB) read as ordinary ones, and the
subgraph's outputs can be replaced by chosen tensors.
"""

from __future__ import annotations

import numpy as np
import tflite

from bridge.tflite.reader import TFLiteFile
from bridge.tflite.weights import Rewrites

FLOAT32 = 0


class BufferView(tflite.Buffer):
    """A buffer whose bytes bridge supplies."""

    def __init__(self, data: np.ndarray):
        self._data = np.ascontiguousarray(data).view(np.uint8).reshape(-1)

    def Data(self, j):
        return int(self._data[j])

    def DataAsNumpy(self):
        return self._data

    def DataLength(self):
        return int(self._data.size)

    def DataIsNone(self):
        return False

    def Offset(self):
        return 0

    def Size(self):
        return 0


class TensorView(tflite.Tensor):
    """A tensor turned into a dense float32 constant held in buffer ``buffer``."""

    def __init__(self, base: tflite.Tensor, buffer: int):
        self._tab = base._tab
        self._buffer = buffer

    def Type(self):
        return FLOAT32

    def Buffer(self):
        return self._buffer

    def Quantization(self):
        return None

    def Sparsity(self):
        return None


class SubGraphView(tflite.SubGraph):
    def __init__(self, base, operators: list[int], tensors: dict[int, int], outputs: list[int]):
        self._tab = base._tab
        self._base = base
        self._operators = operators
        self._tensors = tensors  # tensor index -> buffer index of its new value
        self._outputs = np.asarray(outputs, dtype=np.int32)

    def Operators(self, j):
        return self._base.Operators(self._operators[j])

    def OperatorsLength(self):
        return len(self._operators)

    def Tensors(self, j):
        tensor = self._base.Tensors(j)
        buffer = self._tensors.get(int(j))
        return tensor if buffer is None else TensorView(tensor, buffer)

    def Outputs(self, j):
        return int(self._outputs[j])

    def OutputsAsNumpy(self):
        return self._outputs

    def OutputsLength(self):
        return len(self._outputs)


class ModelView(tflite.Model):
    def __init__(self, source: TFLiteFile, rewrites: Rewrites, outputs: list[int]):
        base = source.model
        self._tab = base._tab
        self._base = base
        count = base.BuffersLength()
        self._buffers: dict[int, BufferView] = {}
        for index, (start, length) in source.buffer_data.items():
            if base.Buffers(index).Offset() > 1:  # stored after the flatbuffer
                stored = np.frombuffer(source.data, np.uint8, length, start)
                self._buffers[index] = BufferView(stored)
        tensors = {}
        for k, (tensor, value) in enumerate(sorted(rewrites.constants.items())):
            tensors[tensor] = count + k
            self._buffers[count + k] = BufferView(value.astype(np.float32))
        self._count = count + len(rewrites.constants)
        kept = [op.index for op in source.ops if op.index not in rewrites.dropped]
        self._main = SubGraphView(base.Subgraphs(0), kept, tensors, outputs)

    def Subgraphs(self, j):
        return self._main if j == 0 else self._base.Subgraphs(j)

    def Buffers(self, j):
        view = self._buffers.get(int(j))
        return view if view is not None else self._base.Buffers(j)

    def BuffersLength(self):
        return self._count
