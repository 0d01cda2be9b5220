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
