"""bridge: Keras models to fast native libraries through Apache TVM, without TensorFlow.

>>> import bridge
>>> m = bridge.build("model.keras", target="llvm")
>>> y = m(x)
>>> m.export("out/model.so")
>>> m2 = bridge.load("out/model.so")
"""

from bridge import errors
from bridge.api import build, check_modeltype, to_relax
from bridge.runtime import Model, load

__version__ = "0.1.0"

__all__ = ["Model", "__version__", "build", "check_modeltype", "errors", "load", "to_relax"]
