"""Every layer's output from Keras itself, for ``bridge compare``: run where Keras is installed.

    python -m bridge.reference MODEL [WEIGHTS] x.npy|x.npz -o ref.npz

Imports Keras (3, or tf.keras 2.x) and numpy only, never TVM: it runs from a checkout on
``PYTHONPATH`` in an environment that has Keras but not TVM. The model is loaded with Keras's
``safe_mode`` and its config is checked first: a Lambda layer (Python bytecode) is refused, never
executed.

The ``.npz`` holds one array per output of every layer in model order, keyed by the layer's
name (output ``i > 0`` of a multi-output layer: ``name:i``; a nested model's layers as
``outer/inner``, bridge's names, before the nested model's own outputs), the inputs it ran on
as ``__input__:<input name>``, and ``__meta__``: a 0-d string array holding JSON (``format``,
``keras_version``, ``backend``, ``model``, ``inputs``, and ``layers``: ``[{"name", "class",
"outputs": [keys]}]`` in model order).
"""

from __future__ import annotations

import argparse
import json
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from bridge.errors import InputError, ModelFileError, Problem, UnsupportedModelError

META_KEY = "__meta__"
INPUT_PREFIX = "__input__:"
FORMAT = "bridge-reference"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"
TFLITE_MAGIC = b"TFL3"
LAMBDA_REASON = (
    "is a Lambda layer: its Python code is never executed from a model file; rewrite it with"
    " built-in Keras layers to get a reference"
)


def _quiet(text: str) -> None:
    """The default ``report``: stage messages go nowhere (the command prints them)."""


def _keras(path: Path | str = "model"):
    """The Keras module: Keras 3, or Keras 2 (tf.keras 2.x, also reached as ``keras``)."""
    try:
        import keras

        return keras
    except ImportError:
        pass
    try:
        from tensorflow import keras  # a TensorFlow without the keras package

        return keras
    except ImportError:
        reason = "reading it needs Keras 3 or tf.keras 2.x, not installed in this environment"
        raise ModelFileError(path, reason) from None


def _keras_version(keras) -> str:
    version = getattr(keras, "__version__", None)
    if version:
        return version
    import tensorflow

    return f"tf.keras {tensorflow.__version__}"


def _head(path: Path) -> bytes:
    if not path.is_file():
        raise ModelFileError(path, "is a folder" if path.is_dir() else "no such file")
    with path.open("rb") as handle:
        return handle.read(8)


def model_config(path: Path) -> dict:
    """The model's architecture as JSON, read without Keras (zip, HDF5 attribute or text)."""
    head = _head(path)
    try:
        if head.startswith(ZIP_MAGIC):
            with zipfile.ZipFile(path) as archive:
                return json.loads(archive.read("config.json"))
        if head.startswith(HDF5_MAGIC):
            import h5py  # Keras needs it too

            with h5py.File(path, "r") as handle:
                text = handle.attrs.get("model_config")
            if text is None:
                raise ModelFileError(path, "a weights-only HDF5 file: pass the architecture first")
            return json.loads(text.decode() if isinstance(text, bytes) else text)
        return json.loads(path.read_text())
    except ModelFileError:
        raise
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise ModelFileError(path, f"not a Keras model file ({exc})") from exc


def refuse_lambda(config: Any, path: Path) -> None:
    """Raise naming the first Lambda layer anywhere in ``config`` (nested models included)."""
    if isinstance(config, dict):
        if config.get("class_name") == "Lambda":
            name = config.get("config", {}).get("name") or config.get("name") or "?"
            raise UnsupportedModelError(str(path), [Problem(name, "Lambda", LAMBDA_REASON)])
        for value in config.values():
            refuse_lambda(value, path)
    elif isinstance(config, list):
        for value in config:
            refuse_lambda(value, path)


def load_model(model: Path, weights: Path | None = None):
    """The Keras model (safe mode, not compiled), its weights loaded from ``weights`` if given."""
    refuse_lambda(model_config(model), model)
    keras = _keras(model)
    try:
        if _head(model).startswith((ZIP_MAGIC, HDF5_MAGIC)):
            loaded = keras.models.load_model(str(model), compile=False, safe_mode=True)
        else:
            loaded = keras.models.model_from_json(model.read_text())
        if weights is not None:
            loaded.load_weights(str(weights))
    except Exception as exc:  # Keras's own message, on one line
        what = weights if weights is not None and "weight" in str(exc).lower() else model
        raise ModelFileError(what, f"Keras cannot load it ({_one_line(exc)})") from exc
    return loaded


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def _flatten(value: Any) -> list:
    if isinstance(value, dict):
        return [t for key in sorted(value) for t in _flatten(value[key])]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _flatten(item)]
    return [value]


def input_names(model) -> list[str]:
    """The names of the model's Input layers, in input order (bridge's input names)."""
    return [tensor._keras_history[0].name for tensor in model.inputs]


def read_inputs(path: Path, names: list[str]) -> list[np.ndarray]:
    """``x.npy`` (one input) or ``x.npz`` keyed by input names (or ``input_0``, ...); never
    unpickled."""
    if not path.is_file():
        raise InputError(f"{path}: {'is a folder' if path.is_dir() else 'no such file'}")
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"{path}: not a .npy or .npz array file ({_one_line(exc)})") from exc
    if isinstance(data, np.ndarray):
        if len(names) != 1:
            raise InputError(f"{path}: one array, the model takes {len(names)} inputs")
        return [data]
    found = []
    for index, name in enumerate(names):
        for key in (name, f"{INPUT_PREFIX}{name}", f"input_{index}"):
            if key in data.files:
                found.append(data[key])
                break
        else:
            raise InputError(f"{path}: no array for input {name!r} (keys: {data.files})")
    return found


def _as_saved(value: Any) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype.kind == "f" and array.dtype != np.float64:
        return array.astype(np.float32)  # float16 / bfloat16 widened
    if array.dtype.kind == "V":  # ml_dtypes' bfloat16 seen as void
        return array.astype(np.float32)
    return array


def _model_nodes(model) -> set[int] | None:
    """The ids of the call nodes of ``model``'s own graph (a Sequential's inner functional's),
    or None where Keras keeps no such list."""
    graph = getattr(model, "_functional", None) or model
    by_depth = getattr(graph, "_nodes_by_depth", None)
    if not by_depth:
        return None
    return {id(node) for nodes in by_depth.values() for node in nodes}


def _first_call(layer, nodes: set[int] | None) -> tuple[list, list] | None:
    """(input tensors, output tensors) of ``layer``'s first call in the model's graph (a nested
    model's ``output`` is its inner graph's, and a shared layer has one call per use); the inputs
    are empty where Keras keeps no call nodes."""
    if nodes is not None:
        for node in getattr(layer, "_inbound_nodes", []):
            if id(node) in nodes:
                outs = getattr(node, "output_tensors", None)
                ins = getattr(node, "input_tensors", None)
                return _flatten(ins if ins is not None else []), _flatten(
                    outs if outs is not None else node.outputs
                )
        return None
    try:
        return [], _flatten(layer.output)
    except (AttributeError, ValueError, RuntimeError):
        return None


def _is_nested_model(layer, inputs: list) -> bool:
    """A model used as a layer whose inner layers can be run from its call's inputs."""
    return (
        bool(inputs)
        and bool(getattr(layer, "layers", None))
        and bool(getattr(layer, "inputs", None))
    )


def layer_outputs(model, inputs: list[np.ndarray], report=_quiet) -> tuple[dict, list[dict]]:
    """Every layer's outputs on ``inputs`` in model order, the layers inside a nested model
    right before its own outputs (keyed ``outer/inner``, as bridge names them; a shared nested
    model: its first call): (arrays by key, [{"name", "class", "outputs"}])."""
    keras = _keras()
    layers, tensors, nested = [], [], []
    nodes = _model_nodes(model)
    for layer in model.layers:
        if type(layer).__name__ == "InputLayer":
            continue
        call = _first_call(layer, nodes)
        if call is None:  # not called in this graph
            continue
        ins, outs = call
        keys = [layer.name if i == 0 else f"{layer.name}:{i}" for i in range(len(outs))]
        layers.append({"name": layer.name, "class": type(layer).__name__, "outputs": keys})
        tensors.extend(outs)
        if _is_nested_model(layer, ins):
            nested.append((len(layers), layer, len(tensors), len(ins)))
            tensors.extend(ins)
    report(f"running {len(layers)} layers")
    extractor = keras.Model(inputs=model.inputs, outputs=tensors)
    values = _flatten(extractor(list(inputs), training=False))
    arrays, ordered, taken = {}, [], 0
    for position, layer, start, count in nested:  # inner layers first: they run before it
        ordered.extend(layers[taken : position - 1])
        taken = position - 1
        inner, inner_layers = layer_outputs(layer, values[start : start + count], report)
        prefix = f"{layer.name}/"
        arrays |= {prefix + key: value for key, value in inner.items()}
        ordered.extend(
            {
                **entry,
                "name": prefix + entry["name"],
                "outputs": [prefix + k for k in entry["outputs"]],
            }
            for entry in inner_layers
        )
    ordered.extend(layers[taken:])
    inner_inputs = {i for _, _, start, count in nested for i in range(start, start + count)}
    outer = [v for i, v in enumerate(values) if i not in inner_inputs]
    keys = [key for entry in layers for key in entry["outputs"]]
    arrays |= {key: _as_saved(v) for key, v in zip(keys, outer)}
    return arrays, ordered


def _litert(model: str | Path):
    """A LiteRT interpreter for ``model`` (builtin kernels, no delegate, one thread, every
    tensor preserved), tensors allocated."""
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError:
        reason = "a LiteRT reference needs ai-edge-litert (pip install ai-edge-litert)"
        raise ModelFileError(model, reason) from None
    interpreter = Interpreter(
        model_path=str(model),
        num_threads=1,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        experimental_preserve_all_tensors=True,
    )
    interpreter.allocate_tensors()
    return interpreter


def _litert_version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("ai-edge-litert")
    except importlib.metadata.PackageNotFoundError:
        return "?"


def litert_reference(
    model: str | Path, inputs: list[np.ndarray]
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Every tensor LiteRT computes for a ``.tflite`` model on ``inputs`` (in input order), by
    tensor name, with the meta of a reference file (``ai-edge-litert``; builtin kernels, no
    delegate, one thread, every tensor preserved)."""
    interpreter = _litert(model)
    details = interpreter.get_input_details()
    if len(inputs) != len(details):
        raise InputError(f"{model}: {len(inputs)} input(s) given, it takes {len(details)}")
    for detail, array in zip(details, inputs):
        interpreter.set_tensor(detail["index"], np.asarray(array).astype(detail["dtype"]))
    interpreter.invoke()
    names = {d["index"]: d["name"] for d in interpreter.get_tensor_details()}
    arrays: dict[str, np.ndarray] = {}
    layers = []
    for op in interpreter._get_ops_details():
        keys = [names[t] for t in op["outputs"] if t >= 0 and names.get(t) not in arrays]
        for t in op["outputs"]:
            if t >= 0 and names.get(t) in keys:
                arrays[names[t]] = np.array(interpreter.get_tensor(int(t)))
        if keys:
            layers.append({"name": keys[0], "class": op["op_name"], "outputs": keys})
    meta = {
        "format": FORMAT,
        "version": 1,
        "runtime": "LiteRT",
        "runtime_version": _litert_version(),
        "model": Path(model).name,
        "inputs": [d["name"] for d in details],
        "layers": layers,
    }
    return arrays, meta


def save_reference(out: Path, arrays: dict, inputs: dict, meta: dict) -> Path:
    """Write a reference ``.npz``: layer outputs, ``__input__:<name>`` and ``__meta__``."""
    payload = {f"{INPUT_PREFIX}{n}": a for n, a in inputs.items()} | arrays
    payload[META_KEY] = np.array(json.dumps(meta))
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("wb") as handle:
        np.savez_compressed(handle, **payload)
    return out


def write_reference(
    model: str | Path,
    weights: str | Path | None,
    inputs: str | Path,
    out: str | Path,
    report=_quiet,
) -> Path:
    """Run ``model`` in Keras (a ``.tflite``: LiteRT) on ``inputs`` and write the reference
    ``.npz`` to ``out``."""
    model, out = Path(model), Path(out)
    if _head(model)[4:8] == TFLITE_MAGIC:
        names = _litert(model).get_input_details()
        names = [d["name"] for d in names]
        feeds = read_inputs(Path(inputs), names)
        arrays, meta = litert_reference(model, feeds)
        return save_reference(out, arrays, dict(zip(names, feeds)), meta)
    keras_model = load_model(model, Path(weights) if weights is not None else None)
    names = input_names(keras_model)
    arrays = read_inputs(Path(inputs), names)
    dtypes = [getattr(t, "dtype", "float32") for t in keras_model.inputs]
    arrays = [a.astype(_dtype_name(d)) for a, d in zip(arrays, dtypes)]
    values, layers = layer_outputs(keras_model, arrays, report)
    keras = _keras()
    meta = {
        "format": FORMAT,
        "version": 1,
        "keras_version": _keras_version(keras),
        "backend": _backend(keras),
        "model": model.name,
        "inputs": names,
        "layers": layers,
    }
    return save_reference(out, values, dict(zip(names, arrays)), meta)


def _dtype_name(dtype: Any) -> str:
    name = getattr(dtype, "name", dtype)
    return str(name)


def _backend(keras) -> str:
    try:
        return keras.backend.backend()
    except AttributeError:
        return "tensorflow"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bridge.reference",
        description="Write every Keras layer's output on the given inputs, for bridge compare.",
    )
    parser.add_argument("files", nargs="+", metavar="MODEL [WEIGHTS] INPUTS")
    parser.add_argument("-o", dest="output", required=True, help="the reference .npz to write")
    args = parser.parse_args(argv)
    if len(args.files) not in (2, 3):
        parser.error("expected MODEL [WEIGHTS] INPUTS")
    model, *weights, inputs = args.files
    try:
        out = write_reference(
            model,
            weights[0] if weights else None,
            inputs,
            args.output,
            report=lambda text: print(text, file=sys.stderr),
        )
    except (ModelFileError, InputError, UnsupportedModelError) as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
