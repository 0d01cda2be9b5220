"""bridge: Keras models to fast native libraries through Apache TVM, without TensorFlow.

>>> import bridge
>>> m = bridge.build("model.keras", target="llvm")
>>> y = m(x)
>>> m.export("out/model.so")
>>> m2 = bridge.load("out/model.so")

The top level is lazy: ``import bridge`` loads the runtime (``load``, ``Model``) and the errors
only; the compiler side (``build``, ``tune``, the readers, h5py, ``tvm.relax``) loads on first
use of a name that needs it (PEP 562), so a process that only loads libraries never imports it.
"""

from __future__ import annotations

import importlib as _importlib
import os as _os
from typing import TYPE_CHECKING

from bridge.cores import usable_cores as _usable_cores

# TVM sizes its CPU thread pool from TVM_NUM_THREADS when the first parallel kernel runs, and
# otherwise uses half the logical cores on x86 (one thread on a 2-vCPU machine). Default to
# every core this process may run on; an explicit TVM_NUM_THREADS wins.
_os.environ.setdefault("TVM_NUM_THREADS", str(_usable_cores()))
# TVM pins its pool's threads to cores (and, with the pinned main thread, other libraries'
# pools created later): LiteRT called in the same process ran 2x slower (MobileNetV2 fp32,
# 2.2 -> 4.4 ms on 2 cores) for no gain to bridge's own kernels. Leave threads to the OS
# scheduler; TVM_BIND_THREADS=1 restores the pinning.
_os.environ.setdefault("TVM_BIND_THREADS", "0")

from bridge import errors
from bridge.runtime import Model, load

__version__ = "0.1.0"

# Public name -> the module that defines it, imported when the name is first used.
_LAZY = {
    "build": "bridge.api",
    "tune": "bridge.api",
    "to_relax": "bridge.api",
    "check_modeltype": "bridge.api",
    "compare": "bridge.compare",
    "inspect": "bridge.api",
    "converter": "bridge.convert.registry",
    "support_table": "bridge.convert.support",
    "layers_markdown": "bridge.convert.support",
    "presets": "bridge.targets",
}

if TYPE_CHECKING:
    from bridge.api import build, check_modeltype, inspect, to_relax, tune
    from bridge.compare import compare
    from bridge.convert.registry import converter
    from bridge.convert.support import layers_markdown, support_table
    from bridge.targets import presets


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'bridge' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "Model",
    "__version__",
    "build",
    "check_modeltype",
    "compare",
    "converter",
    "errors",
    "inspect",
    "layers_markdown",
    "load",
    "presets",
    "support_table",
    "to_relax",
    "tune",
]
