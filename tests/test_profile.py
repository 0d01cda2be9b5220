"""bridge profile: kernels attributed to layers through fusion, FLOPs by formula, rendering a
runner's raw JSON, the CLI. No assertion on measured times (they vary): numbers checked are
the build's (FLOPs, bytes, layers) and those of renders of fixed raw profiles."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
from conftest import FIXTURES, needs_tools

import bridge
from bridge import cli
from bridge.errors import ArtifactError, InputError
from bridge.profile import (
    RAW_FORMAT,
    RUNTIME_ROW,
    UNATTRIBUTED_ROW,
    load,
    measure,
    random_inputs,
    render,
)

CONV_BN_RELU = FIXTURES / "profile" / "conv_bn_relu.keras"
TFLITE_CNN = FIXTURES / "tflite" / "cnn_float32.tflite"
# conv_bn_relu: Input (6, 6, 3) -> Conv2D 4 filters 3x3 "same", no bias -> BN -> ReLU -> Flatten
# -> Dense 5, no bias
CONV_FLOPS = 2 * (6 * 6 * 4) * (3 * 3 * 3)  # a multiply and an add per weight per output
DENSE_FLOPS = 2 * (6 * 6 * 4) * 5


@pytest.fixture(scope="module")
def model():
    return bridge.build(CONV_BN_RELU)


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    return model.export(tmp_path_factory.mktemp("profile") / "conv_bn_relu.so")


def _kernel_of(metadata: dict, layer: str) -> str:
    (name,) = [k for k, v in metadata["kernels"].items() if layer in v["layers"]]
    return name


def _raw(calls: list[tuple[str, float]], source: str = "runner") -> dict:
    return {
        "format": RAW_FORMAT,
        "version": 1,
        "source": source,
        "device": "cpu",
        "threads": 4,
        "runs": 7,
        "calls": [{"name": n, "us": us} for n, us in calls],
    }


# --- attribution at build time ------------------------------------------------------------
def test_fused_kernel_lists_its_layers(model):
    kernels = model.metadata["kernels"]
    fused = _kernel_of(model.metadata, "conv")
    assert kernels[fused]["layers"] == ["conv", "bn", "relu"]  # one kernel, three layers
    assert _kernel_of(model.metadata, "fc") != fused
    assert kernels[_kernel_of(model.metadata, "fc")]["layers"] == ["fc"]
    order = [(e["layer"], e["class"]) for e in model.metadata["layer_order"]]
    assert order[:3] == [("conv", "Conv2D"), ("bn", "BatchNormalization"), ("relu", "ReLU")]
    assert ("fc", "Dense") in order


def test_flops_of_conv_and_dense_are_the_formula(model):
    kernels = model.metadata["kernels"]
    (call,) = kernels[_kernel_of(model.metadata, "conv")]["calls"]
    assert call["layers"] == ["conv", "bn", "relu"]
    assert call["flops"][0] == CONV_FLOPS
    assert call["flops"][1:] == [2 * 6 * 6 * 4, 6 * 6 * 4]  # BN: scale and shift; ReLU: max
    fc = kernels[_kernel_of(model.metadata, "fc")]
    assert fc["flops"] == DENSE_FLOPS
    # bytes: the input (144 floats), the weights (144 x 5) and the output (5), read or written
    assert fc["bytes"] == 4 * (144 + 144 * 5 + 5)


def test_exported_metadata_has_the_kernel_table(model, exported):
    meta = json.loads(exported.with_name("conv_bn_relu.meta.json").read_text())
    assert meta["kernels"] == json.loads(json.dumps(model.metadata["kernels"]))
    assert meta["layer_order"][0] == {"layer": "conv", "class": "Conv2D"}


def test_tflite_kernels_name_operators():
    built = bridge.build(TFLITE_CNN)
    order = [(e["layer"], e["class"]) for e in built.metadata["layer_order"]]
    assert order[0] == ("#0 cnn_1/conv1_1/Relu", "CONV_2D")
    assert [c for _, c in order] == [
        "CONV_2D",
        "MAX_POOL_2D",
        "CONV_2D",
        "MEAN",
        "FULLY_CONNECTED",
        "SOFTMAX",
    ]
    profile = built.profile(runs=2)
    names = [row.layer for row in profile.layers]
    assert names[:6] == [layer for layer, _ in order]  # model order, runtime row last
    softmax = profile.layers[5]
    assert softmax.class_name == "SOFTMAX" and softmax.kernels == ["softmax"]


# --- rendering ----------------------------------------------------------------------------
def test_render_splits_a_fused_kernel_by_flops(model):
    fused, fc = _kernel_of(model.metadata, "conv"), _kernel_of(model.metadata, "fc")
    raw = _raw([("vm.builtin.alloc_storage", 10.0), (fused, 82.08), (fc, 30.0)])
    profile = render(raw, model.metadata)
    rows = {row.layer: row for row in profile.layers}
    total_flops = CONV_FLOPS + 3 * 6 * 6 * 4
    assert rows["conv"].us == pytest.approx(82.08 * CONV_FLOPS / total_flops)
    assert rows["relu"].us == pytest.approx(82.08 * 144 / total_flops)
    assert rows["fc"].us == pytest.approx(30.0)
    assert rows["fc"].gflops == pytest.approx(DENSE_FLOPS / 30.0e3)
    assert rows[RUNTIME_ROW].us == pytest.approx(10.0)
    assert profile.total_us == pytest.approx(122.08)
    assert sum(row.share for row in profile.layers) == pytest.approx(1.0)
    assert rows["fc"].share == pytest.approx(30.0 / 122.08)
    assert [r.layer for r in profile.layers] == ["conv", "bn", "relu", "fc", RUNTIME_ROW]
    assert rows["bn"].kernels == [fused]
    (kernel,) = [k for k in profile.kernels if k.name == fused]
    assert kernel.layers == ["conv", "bn", "relu"] and kernel.us == pytest.approx(82.08)
    data = profile.to_dict()
    assert data["format"] == "bridge-profile" and data["threads"] == 4 and data["runs"] == 7


def test_unknown_kernels_are_unattributed(model):
    profile = render(_raw([("mystery_kernel", 5.0)]), model.metadata)
    assert [(r.layer, r.us, r.kernels) for r in profile.layers] == [
        (UNATTRIBUTED_ROW, 5.0, ["mystery_kernel"])
    ]


def test_a_kernel_called_twice_takes_its_calls_in_order():
    metadata = {
        "layer_order": [{"layer": "a", "class": "Dense"}, {"layer": "b", "class": "Dense"}],
        "kernels": {
            "matmul": {
                "layers": ["a", "b"],
                "flops": 30,
                "bytes": 0,
                "calls": [
                    {"layers": ["a"], "flops": [10], "bytes": 0},
                    {"layers": ["b"], "flops": [20], "bytes": 0},
                ],
            }
        },
    }
    profile = render(_raw([("matmul", 1.0), ("matmul", 3.0)]), metadata)
    assert [(r.layer, r.us, r.flops) for r in profile.layers] == [("a", 1.0, 10), ("b", 3.0, 20)]


def test_python_profile_shares_sum_to_one(model):
    profile = model.profile(runs=3)
    assert sum(row.share for row in profile.layers) == pytest.approx(1.0)
    assert profile.total_us == pytest.approx(sum(k.us for k in profile.kernels))
    rows = {row.layer: row for row in profile.layers}
    assert rows["conv"].flops == CONV_FLOPS and rows["fc"].flops == DENSE_FLOPS
    assert all(row.us > 0 for row in profile.layers)
    assert profile.runs == 3 and profile.source == "python"


def test_profile_saves_and_loads(model, tmp_path):
    profile = model.profile(np.ones((1, 6, 6, 3), "float32"), runs=2)
    again = load(profile.save(tmp_path / "p.json"))
    assert again.to_dict() == profile.to_dict()


# --- errors -------------------------------------------------------------------------------
def test_bad_arguments_are_typed_errors(model, tmp_path):
    with pytest.raises(InputError, match="runs must be a positive integer"):
        model.profile(runs=0)
    with pytest.raises(InputError, match="must have shape"):
        model.profile(np.ones((1, 5, 5, 3), "float32"))
    raw = tmp_path / "raw.json"
    raw.write_text(json.dumps(_raw([("x", 1.0)])))
    with pytest.raises(ArtifactError, match=r"raw\.json: a raw profile needs the model's metadata"):
        load(raw)
    raw.write_text(json.dumps(_raw([("x", -1.0)])))
    with pytest.raises(ArtifactError, match="negative"):
        load(raw, model.metadata)
    raw.write_text("{not json")
    with pytest.raises(ArtifactError, match=r"raw\.json: not JSON"):
        load(raw, model.metadata)
    raw.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ArtifactError, match="not a bridge profile"):
        load(raw, model.metadata)


# --- the CLI ------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    """Tables as a wide terminal shows them (names not folded)."""
    from bridge.commands import profile as command

    monkeypatch.setattr(command.console, "width", 200)


def test_cli_prints_layers_and_fusion_groups(tmp_path, capsys):
    out = tmp_path / "profile.json"
    code = cli.main(["profile", str(CONV_BN_RELU), "--runs", "2", "--json", str(out)])
    text = capsys.readouterr().out
    assert code == 0
    for name in ("conv", "bn", "relu", "fc", "Conv2D", "BatchNormalization", RUNTIME_ROW):
        assert name in text
    assert "conv + bn + relu" in text  # the fusion group
    data = json.loads(out.read_text())
    assert data["format"] == "bridge-profile"
    assert [r["layer"] for r in data["layers"]] == ["conv", "bn", "relu", "fc", RUNTIME_ROW]


def test_cli_renders_a_runner_json(model, exported, tmp_path, capsys):
    raw = measure(model, runs=2)
    raw["source"] = "runner"
    file = tmp_path / "out.json"
    file.write_text(json.dumps(raw))
    code = cli.main(["profile", "--from", str(file), str(exported), "--json", str(tmp_path / "r")])
    text = capsys.readouterr().out
    assert code == 0
    assert "conv + bn + relu" in text and "measured on the device" in text
    rendered = json.loads((tmp_path / "r").read_text())
    assert rendered["source"] == "runner" and rendered["runs"] == 2
    assert {r["layer"] for r in rendered["layers"]} >= {"conv", "bn", "relu", "fc"}
    # the bundle folder (library and .meta.json) works as MODEL too
    code = cli.main(["profile", "--from", str(file), str(exported.parent)])
    captured = capsys.readouterr()
    assert code == 0 and "conv + bn + relu" in captured.out
    assert "not in the model's metadata" not in captured.err
    # a kernel another build made is flagged
    raw["calls"].append({"name": "fused_from_elsewhere", "us": 1.0})
    file.write_text(json.dumps(raw))
    assert cli.main(["profile", "--from", str(file), str(exported.parent)]) == 0
    assert "1 kernel(s) are not in the model's metadata" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--inputs", "{tmp}/missing.npy"], "missing.npy: no such file"),
        (["--inputs", "{tmp}/bad.npz"], "bad.npz: keys ['x'] do not match the model's inputs"),
        (["--inputs", "{tmp}/text.npy"], "text.npy: not a .npy or .npz file"),
        (["--runs", "0"], "argument --runs: expected a positive integer, got 0"),
        (["--batch-size", "x"], "argument --batch-size: expected a positive integer, got 'x'"),
        (["--from", "{tmp}/missing.json"], "missing.json: no such file"),
        (["--target", "{other}"], "machine: build a bundle (bridge build MODEL --target"),
    ],
)
def test_cli_bad_input_is_one_line(argv, message, tmp_path, capsys):
    np.savez(tmp_path / "bad.npz", x=np.zeros((1, 6, 6, 3), "float32"))
    (tmp_path / "text.npy").write_text("hello")
    from bridge.targets import host_arch

    other = "aarch64" if host_arch() == "x86_64" else "x86-64"  # code that cannot run here
    argv = [a.format(tmp=tmp_path, other=other) for a in argv]
    code = cli.main(["profile", str(CONV_BN_RELU), *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert message in " ".join(err.split())
    assert len(err.strip().splitlines()) == 1


# --- a bundle's runner (run --profile), rendered here ---------------------------------------
def _runner_profile(folder, model, *prefix: str) -> dict:
    """Run the bundle's ./run --profile on a random input; its raw JSON."""
    np.save(folder / "in0.npy", random_inputs(model)[0])
    result = subprocess.run(
        [*prefix, "./run", "in0.npy", "--profile", "raw.json", "--bench", "3"],
        cwd=folder,
        env={},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return json.loads((folder / "raw.json").read_text())


@pytest.mark.parametrize("preset", ["x86-64", "aarch64"])
def test_runner_profile_renders_per_layer(preset, tmp_path, capsys):
    from bridge.targets import resolve

    prefix: tuple[str, ...] = ()
    if preset == "aarch64":
        needs_tools(resolve(preset), "qemu-aarch64")
        prefix = (shutil.which("qemu-aarch64"), "-L", "/usr/aarch64-linux-gnu")
    folder = tmp_path / "bundle"
    built = bridge.build(CONV_BN_RELU, target=preset)
    built.export(folder, bundle=True)
    raw = _runner_profile(folder, built, *prefix)
    assert raw["format"] == RAW_FORMAT and raw["source"] == "runner" and raw["runs"] == 3
    kernels = json.loads((folder / "model.meta.json").read_text())["kernels"]
    called = {c["name"] for c in raw["calls"] if not c["name"].startswith("vm.builtin.")}
    assert called and called <= set(kernels)  # every kernel the VM ran is in the metadata
    out = tmp_path / "rendered.json"
    code = cli.main(
        ["profile", "--from", str(folder / "raw.json"), str(folder), "--json", str(out)]
    )
    text = capsys.readouterr().out
    assert code == 0 and "conv + bn + relu" in text and "measured on the device" in text
    rendered = json.loads(out.read_text())
    assert [r["layer"] for r in rendered["layers"]] == ["conv", "bn", "relu", "fc", RUNTIME_ROW]
    assert rendered["total_us"] == pytest.approx(sum(c["us"] for c in raw["calls"]))
    assert rendered["layers"][0]["flops"] == CONV_FLOPS


def test_runner_profile_of_a_tflite_model_under_qemu(tmp_path):
    from bridge.targets import resolve

    needs_tools(resolve("aarch64"), "qemu-aarch64")
    folder = tmp_path / "bundle"
    built = bridge.build(TFLITE_CNN, target="aarch64")
    built.export(folder, bundle=True)
    qemu = (shutil.which("qemu-aarch64"), "-L", "/usr/aarch64-linux-gnu")
    raw = _runner_profile(folder, built, *qemu)
    profile = load(folder / "raw.json", folder)
    order = [e["layer"] for e in built.metadata["layer_order"]]
    assert [row.layer for row in profile.layers] == [*order, RUNTIME_ROW]  # every operator
    assert profile.layers[0].class_name == "CONV_2D" and profile.source == "runner"
    assert profile.total_us == pytest.approx(sum(c["us"] for c in raw["calls"]))


def test_identical_blocks_sharing_a_kernel_keep_their_own_layers():
    built = bridge.build(FIXTURES / "profile" / "twin_convs.keras")
    shared = [v for v in built.metadata["kernels"].values() if len(v["calls"]) > 1]
    assert len(shared) == 1  # FuseOps keeps one function for the two identical groups
    assert [c["layers"] for c in shared[0]["calls"]] == [["first"], ["second"]]
    conv = 2 * (6 * 6 * 4) * (3 * 3 * 4)
    assert [c["flops"] for c in shared[0]["calls"]] == [[conv + 2 * 144]] * 2  # + bias, ReLU
    fused = next(k for k, v in built.metadata["kernels"].items() if v is shared[0])
    profile = render(_raw([(fused, 10.0), (fused, 30.0)]), built.metadata)
    assert [(r.layer, r.us) for r in profile.layers] == [("first", 10.0), ("second", 30.0)]


def test_dynamic_batch_profiles_per_sample_counts():
    built = bridge.build(CONV_BN_RELU, batch_size=None)
    profile = built.profile(np.ones((3, 6, 6, 3), "float32"), runs=2)
    rows = {row.layer: row for row in profile.layers}
    assert UNATTRIBUTED_ROW not in rows  # the VM's shape functions are runtime, not a layer
    assert "shape_func" in rows[RUNTIME_ROW].kernels
    assert rows["conv"].flops == CONV_FLOPS  # a symbolic batch counts once: per sample
    assert rows["fc"].bytes == 4 * (144 + 144 * 5 + 5)


def test_labelling_layers_changes_no_kernel(monkeypatch):
    """The kernels compiled with bindings named after layers and observed are the kernels
    compiled without (structurally: only buffer names differ)."""
    import tvm
    import tvm_ffi

    import bridge.convert.walk as walk
    from bridge.api import _load_and_translate
    from bridge.compile import bind_weights
    from bridge.kernels_map import recording
    from bridge.schedules.pipeline import relax_pipeline
    from bridge.targets import resolve

    target = resolve("llvm").tvm_target()

    def kernels() -> dict:
        translation, _ = _load_and_translate(CONV_BN_RELU, None, 1, None)
        mod = bind_weights(translation.mod, translation.params)
        with target, recording():
            lowered = relax_pipeline(target)(mod)
        return {
            gv.name_hint: f
            for gv, f in lowered.functions.items()
            if isinstance(f, tvm.tirx.PrimFunc)
        }

    labelled = kernels()
    monkeypatch.setattr(walk, "label_layers", lambda mod, calls: mod)
    plain = kernels()
    assert sorted(labelled) == sorted(plain)
    assert any("bridge_layer_" in f.script() for f in labelled.values())  # names did change
    for name, func in labelled.items():
        assert tvm_ffi.structural_equal(func, plain[name]), name


def test_int8_keras_build_names_its_layers():
    """The int8 walk's layers return QValues (float and integer forms), found all the same;
    BN and ReLU folded into the integer convolution emit no kernel of their own."""
    samples = np.random.default_rng(1).standard_normal((4, 6, 6, 3)).astype("float32")
    built = bridge.build(CONV_BN_RELU, quantize="int8", calibration=samples)
    profile = render(_raw([(k, 1.0) for k in built.metadata["kernels"]]), built.metadata)
    names = [row.layer for row in profile.layers]
    assert names[0] == "conv" and "fc" in names and UNATTRIBUTED_ROW not in names


def test_a_kernel_call_of_no_layer_is_unattributed():
    metadata = {
        "layer_order": [],
        "kernels": {"k": {"layers": [], "flops": 0, "bytes": 0, "calls": [{"layers": []}]}},
    }
    profile = render(_raw([("k", 2.0)]), metadata)
    assert [(r.layer, r.us) for r in profile.layers] == [(UNATTRIBUTED_ROW, 2.0)]


def test_one_operator_on_the_same_values_in_two_layers_keeps_both():
    """Squeeze-and-excite reads one map twice: its mean and its gated MUL each widen it to
    int32 (the same operator on the same tensor). Each kernel keeps its own layer: the mean's
    sum is the MEAN's, the product the MUL's (the second call no longer takes the first's
    place)."""
    built = bridge.build(FIXTURES / "tflite" / "int8ops" / "efficient_block.tflite")
    kernels = built.metadata["kernels"]
    (mean,) = [v["layers"] for k, v in kernels.items() if k.endswith("_sum")]
    (gate,) = [v["layers"] for k, v in kernels.items() if "channel_factor" in k]
    assert mean == ["#6 functional_1/se_pool_1/Mean"]
    assert gate == ["#12 functional_1/se_mul_1/Mul"]
