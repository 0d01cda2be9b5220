"""Per-layer numeric tests: one small model per layer config variant, Keras 3 and Keras 2 files.

Reference outputs come from real Keras (tests/fixtures/generate.py); tolerance rtol=1e-4 and
atol=1e-4 times the output magnitude (float32 reassociation; TVM's erf/exp approximations).
"""

from __future__ import annotations

from pathlib import Path

import pytest

import bridge
from tests.conftest import KERAS2, KERAS3, assert_matches, reference

CASES = (
    sorted(KERAS3.glob("layers/*.keras"))
    + sorted(KERAS2.glob("layers/*.h5"))
    + sorted(KERAS2.glob("layers/*.keras"))  # Keras 2.15's new layout, for a few cases
)


def case_id(path: Path) -> str:
    version = path.parent.parent.name
    extra = "-keras" if version == "keras2" and path.suffix == ".keras" else ""
    return f"{version}-{path.stem}{extra}"


@pytest.mark.parametrize("model_file", CASES, ids=case_id)
def test_layer_matches_keras(model_file: Path):
    inputs, outputs = reference(model_file.with_suffix(".npz"))
    model = bridge.build(model_file)
    assert_matches(model(*inputs), outputs)


def test_there_are_cases_for_both_versions():
    assert len(list(KERAS3.glob("layers/*.keras"))) > 100
    assert len(list(KERAS2.glob("layers/*.h5"))) > 80


# Recurrent layers: CPU builds run a single-cell layer's time loop as one loop kernel (every case
# above); CUDA builds unroll it into the graph. The unrolled form, compiled for the CPU here.
UNROLLED = [
    "gru_reset_before_back_state",
    "masking_lstm_seq",
    "embedding_mask_bidi_gru_seq",
    "bidi_lstm_initial_state",
]


@pytest.mark.parametrize("name", UNROLLED)
def test_unrolled_time_loop_matches_keras(name: str):
    import numpy as np
    import tvm
    from tvm import relax

    from bridge.sources import open_source

    path = KERAS3 / "layers" / f"{name}.keras"
    translation = open_source(path).translate(device="cuda")  # the time loop unrolled
    kernels = [gv.name_hint for gv in translation.mod.get_global_vars()]
    assert not any(k.endswith("_scan") for k in kernels), kernels
    executable = tvm.compile(translation.mod, target="llvm")
    vm = relax.VirtualMachine(executable, tvm.cpu())
    inputs, outputs = reference(path.with_suffix(".npz"))
    typed = [np.asarray(x, info.dtype) for x, info in zip(inputs, translation.inputs)]
    args = [*typed, *translation.params.values()]
    result = vm["main"](*(tvm.runtime.tensor(np.ascontiguousarray(a)) for a in args))
    fields = list(result) if len(outputs) > 1 else [result]
    assert_matches([f.numpy() for f in fields], outputs)


def test_cpu_time_loop_is_one_kernel():
    mod, _ = bridge.to_relax(KERAS3 / "layers" / "lstm_seq.keras")
    names = [gv.name_hint for gv in mod.get_global_vars()]
    assert "lstm_scan" in names, names


@pytest.mark.parametrize(
    "name",
    [
        "lstm_seq",
        "lstm_initial_state",
        "gru_reset_before_seq",
        "simple_rnn_seq_back",
        "masking_gru_state",
        "embedding_mask_lstm",
    ],
)
def test_cpu_time_loop_batch_tiles_match_single_rows(name: str):
    """Batches of 4+ rows take the loop kernel's row-tiled recurrent product (batch 1 fixtures
    take the single-row path): 6 distinct rows (4 tiled + 2 left over) must each equal the
    batch-1 model's output for that row. Inputs vary per row but keep the fixture's masked
    steps (zeros stay zero: float inputs are scaled, nonzero token ids redrawn)."""
    import numpy as np

    path = KERAS3 / "layers" / f"{name}.keras"
    inputs, _ = reference(path.with_suffix(".npz"))
    rng = np.random.default_rng(0)

    single = bridge.build(path)

    def vary(x, dtype: str):
        """Token ids (an integer model input, whatever the fixture stored) are redrawn."""
        rows = np.repeat(x[:1], 6, axis=0)
        if np.issubdtype(np.dtype(dtype), np.integer):
            redrawn = rng.integers(1, max(int(x.max()), 1) + 1, size=rows.shape)
            return np.where(rows != 0, redrawn, 0).astype(dtype)
        scale = rng.uniform(0.5, 1.5, size=rows.shape)
        return (rows * scale).astype(x.dtype)

    batch = [vary(x, info.dtype) for x, info in zip(inputs, single.inputs)]
    tiled = bridge.build(path, batch_size=6)(*batch)
    tiled = tiled if isinstance(tiled, list) else [tiled]
    for row in range(6):
        expected = single(*[x[row : row + 1] for x in batch])
        expected = expected if isinstance(expected, list) else [expected]
        for got, want in zip(tiled, expected):
            np.testing.assert_allclose(got[row : row + 1], want, rtol=1e-5, atol=1e-6)


def test_embedding_out_of_range_ids_give_nan():
    """As Keras 3 on JAX; an unchecked gather would read outside the table."""
    import numpy as np

    model = bridge.build(KERAS3 / "layers" / "embedding.keras")
    ids = np.array([[1, 2, 99, -5, 3]], dtype="int32")
    out = model(ids)
    assert np.isnan(out[0, 2:4]).all() and np.isfinite(out[0, [0, 1, 4]]).all()


# Resizing along one axis is a matmul with an (out, in) matrix while that matrix is small, and a
# gather of each output pixel's few taps beyond (a very wide or tall output): both forms, and the
# bound on hostile sizes (found by the fuzzer: a 9 x 8,000,000 float64 matrix).
RESIZE_CASES = [
    p for p in CASES if p.stem.startswith(("resizing_", "center_crop")) and "nearest" not in p.stem
]


@pytest.mark.parametrize("model_file", RESIZE_CASES, ids=case_id)
def test_banded_resize_matches_keras(model_file: Path, monkeypatch):
    from bridge.convert import resize

    monkeypatch.setattr(resize, "DENSE_LIMIT", 0)  # every resized axis through the taps
    inputs, outputs = reference(model_file.with_suffix(".npz"))
    assert_matches(bridge.build(model_file)(*inputs), outputs)


def _resized_copy(tmp_path: Path, height: int, width: int, method: str) -> Path:
    import json
    import zipfile

    source = KERAS3 / "layers" / "resizing_bilinear_up.keras"
    target = tmp_path / "wide.keras"
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "config.json":
                config = json.loads(data)
                for layer in config["config"]["layers"]:
                    if layer["class_name"] == "Resizing":
                        layer["config"].update(height=height, width=width, interpolation=method)
                data = json.dumps(config).encode()
            dst.writestr(item, data)
    return target


@pytest.mark.parametrize("method", ["bilinear", "bicubic", "lanczos5", "nearest"])
def test_resize_to_a_hostile_size_is_refused_without_allocating(tmp_path: Path, method: str):
    import tracemalloc

    model_file = _resized_copy(tmp_path, 9, 40_000_000, method)
    tracemalloc.start()
    try:
        with pytest.raises(bridge.errors.UnsupportedModelError, match="bridge supports"):
            bridge.to_relax(model_file)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, f"{peak >> 20} MiB allocated before refusing"


def test_wide_resize_holds_taps_not_a_matrix(tmp_path: Path):
    """2,000,000 wide from 10 columns: 8 M taps (4 per pixel) where the matrix would hold 20 M."""
    import numpy as np

    mod, params = bridge.to_relax(_resized_copy(tmp_path, 2, 2_000_000, "bilinear"))
    sizes = [np.asarray(v).size for v in params.values()]
    constants = [c.value.numpy().size for c in _constants(mod) if hasattr(c.value, "numpy")]
    assert max(sizes + constants) <= 8_000_000


def _constants(mod):
    import tvm
    from tvm import relax

    found = []
    relax.analysis.post_order_visit(
        mod["main"], lambda e: found.append(e) if isinstance(e, tvm.ir.expr.Constant) else None
    )
    return found
