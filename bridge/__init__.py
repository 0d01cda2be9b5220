"""bridge: Keras models to fast native libraries through Apache TVM, without TensorFlow.

>>> import bridge
>>> m = bridge.build("model.keras", target="llvm")
>>> y = m(x)
>>> m.export("out/model.so")
>>> m2 = bridge.load("out/model.so")
"""

import os as _os

from bridge.cores import usable_cores as _usable_cores

# TVM sizes its CPU thread pool from TVM_NUM_THREADS when the first parallel kernel runs, and
# otherwise uses half the logical cores on x86 (one thread on a 2-vCPU machine). Default to
# every core this process may run on; an explicit TVM_NUM_THREADS wins.
_os.environ.setdefault("TVM_NUM_THREADS", str(_usable_cores()))

from bridge import errors
from bridge.api import build, check_modeltype, to_relax, tune
from bridge.convert.registry import converter
from bridge.runtime import Model, load

__version__ = "0.1.0"

__all__ = [
    "Model",
    "__version__",
    "build",
    "check_modeltype",
    "converter",
    "errors",
    "load",
    "to_relax",
    "tune",
]
