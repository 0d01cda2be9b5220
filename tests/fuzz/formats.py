"""The fuzzed input formats: each is a seed corpus (valid committed files) plus a mutator.

Adding a format is one :class:`Format` entry in ``FORMATS``: a function listing its seeds and a
function that mutates a seed's files, already copied into the case folder, in place. The entry
point called on each case is ``entry(model, weights)`` (``bridge.to_relax`` by default).
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from hypothesis import strategies as st

from tests.fuzz.mutate import (
    Canaries,
    latest_layout,
    mutate_bytes,
    mutate_h5,
    mutate_h5_struct,
    mutate_json_doc,
    mutate_tflite,
    mutate_zip,
)

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
K3, K2 = FIXTURES / "keras3", FIXTURES / "keras2"
DIGITS = ROOT / "examples" / "digits"
MODELS = ("seq_cnn", "seq_noinput", "func_multi_io", "nested_shared", "nested_functional",
          "dtype_float16", "dtype_bfloat16", "dtype_mixed_float16")  # fmt: skip


@dataclass(frozen=True)
class Seed:
    """A valid input: case-folder file name -> where its bytes come from (a file, or a member
    of a zip archive as ``(archive, member)``); ``model`` and ``weights`` name the files passed."""

    name: str
    files: tuple[tuple[str, Path | tuple[Path, str]], ...]
    model: str
    weights: str | None = None

    def write(self, folder: Path) -> None:
        for name, source in self.files:
            if isinstance(source, tuple):
                with zipfile.ZipFile(source[0]) as archive:
                    blob = archive.read(source[1])
            else:
                blob = source.read_bytes()
            (folder / name).write_bytes(blob)


Mutator = Callable[[st.DataObject, Path, Seed, Canaries], None]


@dataclass(frozen=True)
class Format:
    name: str
    seeds: Callable[[], list[Seed]]
    mutate: Mutator
    entry: str = "bridge.api:to_relax"


def _existing(seeds: list[Seed]) -> list[Seed]:
    def present(source) -> bool:
        return (source[0] if isinstance(source, tuple) else source).is_file()

    return [s for s in seeds if all(present(src) for _, src in s.files)]


# --- seed corpora -------------------------------------------------------------------------------


def json_seeds() -> list[Seed]:
    """Architecture JSON + weights: every Keras 3 layer case, the models, the digits example."""
    seeds = [
        Seed(
            p.stem,
            (("model.json", (p, "config.json")), ("w.weights.h5", (p, "model.weights.h5"))),
            "model.json",
            "w.weights.h5",
        )
        for p in sorted((K3 / "layers").glob("*.keras"))
    ]
    for m in MODELS:
        seeds.append(
            _pair(f"k3-{m}", K3 / "models" / f"{m}.json", K3 / "models" / f"{m}.weights.h5")
        )
        seeds.append(
            _pair(f"k2-{m}", K2 / "models" / f"{m}.json", K2 / "models" / f"{m}_legacy.h5")
        )
    seeds.append(_pair("digits", DIGITS / "digits_cnn.json", DIGITS / "digits_cnn.weights.h5"))
    return _existing(seeds)


def _pair(name: str, model: Path, weights: Path) -> Seed:
    weights_name = "w.h5" if weights.name.endswith("_legacy.h5") else "w.weights.h5"
    return Seed(name, (("model.json", model), (weights_name, weights)), "model.json", weights_name)


def full_h5_seeds() -> list[Seed]:
    """Legacy full-model HDF5 (config in an attribute, weights by layer name)."""
    paths = sorted((K2 / "layers").glob("*.h5"))
    paths += [K3 / "models" / f"{m}.h5" for m in MODELS] + [
        K2 / "models" / f"{m}.h5" for m in MODELS
    ]
    paths.append(K2 / "models" / "seq_cnn.fixedstr.h5")
    return _existing([Seed(p.stem, (("model.h5", p),), "model.h5") for p in paths])


def weights_h5_seeds() -> list[Seed]:
    """Weights-only HDF5 in the Keras 3 layout (``.weights.h5``, both Keras versions)."""
    seeds = [_pair(f"k3-{m}", K3 / "models" / f"{m}.json", K3 / "models" / f"{m}.weights.h5")
             for m in MODELS]  # fmt: skip
    seeds += [_pair(f"k2-{m}", K2 / "models" / f"{m}.json", K2 / "models" / f"{m}.weights.h5")
              for m in MODELS]  # fmt: skip
    seeds.append(_pair("digits", DIGITS / "digits_cnn.json", DIGITS / "digits_cnn.weights.h5"))
    return _existing(seeds)


def legacy_weights_seeds() -> list[Seed]:
    """Weights-only legacy HDF5 (``save_weights('x.h5')`` of tf.keras 2)."""
    return _existing(
        [_pair(m, K2 / "models" / f"{m}.json", K2 / "models" / f"{m}_legacy.h5") for m in MODELS]
    )


def keras_zip_seeds() -> list[Seed]:
    """``.keras`` archives of both Keras versions (layer cases, models, errors, digits)."""
    paths = sorted((K3 / "layers").glob("*.keras")) + sorted((K2 / "layers").glob("*.keras"))
    paths += [K3 / "models" / f"{m}.keras" for m in MODELS]
    paths += [K2 / "models" / f"{m}.keras" for m in MODELS]
    paths += [*sorted((K3 / "errors").glob("*.keras")), DIGITS / "digits_cnn.keras"]
    return _existing([Seed(p.stem, (("model.keras", p),), "model.keras") for p in paths])


def tflite_seeds() -> list[Seed]:
    """The TFLite fixtures: float32, float16, dynamic-range, int8/uint8, custom-op models."""
    paths = sorted((FIXTURES / "tflite").glob("*.tflite"))
    return _existing([Seed(p.stem, (("model.tflite", p),), "model.tflite") for p in paths])


def sharded_seeds() -> list[Seed]:
    """Sharded ``.weights.json`` index + its shard files."""
    folder = K3 / "models" / "sharded"
    files = [("model.json", K3 / "models" / "seq_cnn.json")]
    files += [(p.name, p) for p in sorted(folder.iterdir())]
    return _existing([Seed("seq_cnn", tuple(files), "model.json", "seq_cnn.weights.json")])


# --- mutators -----------------------------------------------------------------------------------


def mutate_model_json(data: st.DataObject, folder: Path, seed: Seed, canaries: Canaries) -> None:
    path = folder / seed.model
    path.write_bytes(mutate_json_doc(data, path.read_bytes()))


def mutate_weights_h5(data: st.DataObject, folder: Path, seed: Seed, canaries: Canaries) -> None:
    mutate_h5(data, folder / (seed.weights or seed.model), canaries)


def mutate_keras_zip(data: st.DataObject, folder: Path, seed: Seed, canaries: Canaries) -> None:
    path = folder / seed.model
    path.write_bytes(mutate_zip(data, path.read_bytes(), folder, canaries))


def mutate_sharded(data: st.DataObject, folder: Path, seed: Seed, canaries: Canaries) -> None:
    """The index (its JSON, or a shard name aimed outside the folder), a shard, or a symlink."""
    index = folder / (seed.weights or "")
    shards = sorted(p for p in folder.iterdir() if p.name.endswith(".weights.h5"))
    op = data.draw(st.sampled_from(["index", "escape", "shard", "symlink", "missing"]), label="op")
    if op == "index":
        index.write_bytes(mutate_json_doc(data, index.read_bytes()))
    elif op == "escape":
        text = index.read_text()
        target = data.draw(st.sampled_from(canaries.targets(folder)), label="target")
        victim = shards[data.draw(st.integers(0, len(shards) - 1))].name
        index.write_text(text.replace(f'"{victim}"', f'"{target}"'))
    elif op == "shard":
        mutate_h5(data, shards[data.draw(st.integers(0, len(shards) - 1))], canaries)
    elif op == "symlink":
        victim = shards[data.draw(st.integers(0, len(shards) - 1))]
        victim.unlink()
        victim.symlink_to(canaries.h5)
    else:
        shards[data.draw(st.integers(0, len(shards) - 1))].unlink()


def mutate_tflite_file(data: st.DataObject, folder: Path, seed: Seed, canaries: Canaries) -> None:
    path = folder / seed.model
    path.write_bytes(mutate_tflite(data, path.read_bytes()))


MUTATION_NOTE = ".mutation"  # the case folder's note of the mutation kind, for the record


def mutate_h5_structs(data: st.DataObject, folder: Path, seed: Seed, canaries: Canaries) -> None:
    """Corrupt an HDF5 metadata structure (heap, B-tree, symbol table, object header) in the
    file's bytes, the kind of damage libhdf5 walks into rather than refuses."""
    kind = mutate_h5_struct(data, folder / (seed.weights or seed.model))
    (folder / MUTATION_NOTE).write_text(kind)


def h5_struct_seeds() -> list[Seed]:
    """Every HDF5 layout of the model fixtures: full-model ``.h5``, legacy and Keras 3 weights
    files (with their JSON), and the legacy files rewritten in the newest HDF5 format (v2 object
    headers; with and without dense storage: fractal heaps, v2 B-trees), which no committed
    fixture uses. (The layer cases' files have the same structures as the models'.)"""
    model_folders = (K2 / "models", K3 / "models")
    legacy = [s for s in full_h5_seeds() + legacy_weights_seeds()
              if _h5_source(s).parent in model_folders]  # fmt: skip
    return legacy + weights_h5_seeds() + _latest_seeds(tuple(legacy))


def _h5_source(seed: Seed) -> Path:
    source = dict(seed.files)[seed.weights or seed.model]
    return source[0] if isinstance(source, tuple) else source


@cache
def _latest_seeds(seeds: tuple[Seed, ...]) -> list[Seed]:
    folder = Path(tempfile.mkdtemp(prefix="bridge-fuzz-latest-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    out = []
    for index, seed in enumerate(seeds):
        for layout in ("latest", "dense"):
            h5_name = seed.weights or seed.model
            files = dict(seed.files)
            target = folder / f"{index}-{layout}-{h5_name}"
            latest_layout(_h5_source(seed), target, dense=layout == "dense")
            files[h5_name] = target
            name = f"{layout}-{_h5_source(seed).parent.parent.name}-{seed.name}"
            out.append(Seed(name, tuple(files.items()), seed.model, seed.weights))
    return out


def mutate_raw(data: st.DataObject, folder: Path, seed: Seed, canaries: Canaries) -> None:
    """Byte-level only (truncation, flips, zeroed ranges): for formats without a structured
    mutator yet."""
    path = folder / seed.model
    path.write_bytes(mutate_bytes(data, path.read_bytes()))


FORMATS: dict[str, Format] = {
    f.name: f
    for f in [
        Format("json", json_seeds, mutate_model_json),
        Format("h5-full", full_h5_seeds, mutate_weights_h5),
        Format("weights-h5", weights_h5_seeds, mutate_weights_h5),
        Format("weights-h5-legacy", legacy_weights_seeds, mutate_weights_h5),
        Format("keras", keras_zip_seeds, mutate_keras_zip),
        Format("sharded", sharded_seeds, mutate_sharded),
        Format("tflite", tflite_seeds, mutate_tflite_file),
        Format("h5-struct", h5_struct_seeds, mutate_h5_structs),
    ]
}


@cache
def seeds_of(name: str) -> tuple[Seed, ...]:
    return tuple(FORMATS[name].seeds())
