"""``bridge report``: the HTML page (pure Python, from constructed compare/profile dicts) and the
page as a person sees it (headless Chromium: screenshots and the DOM after the page's script ran,
through scripts/report_screenshots.py)."""

from __future__ import annotations

import json
import re
import shutil
import struct
import zlib
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from bridge import report
from bridge.errors import InputError
from tests.conftest import load_script, needs_tools, run_bundle

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "report_screenshots.py"


# ---------------------------------------------------------------------------------------------
# constructed inputs


def layers(count: int) -> list[dict]:
    """A DenseNet-like graph: stem, then blocks ``convB_blockK_*`` of 4 layers."""
    stem = {"layer": "input_layer", "class": "InputLayer", "shapes": [[1, 32, 32, 3]], "params": 0}
    rows = [stem]
    block = 0
    while len(rows) < count:
        stage, unit = 2 + block // 6, 1 + block % 6
        for part, cls in (("0_bn", "BatchNormalization"), ("1_conv", "Conv2D"),
                          ("1_relu", "Activation"), ("concat", "Concatenate")):  # fmt: skip
            rows.append(
                {
                    "layer": f"conv{stage}_block{unit}_{part}",
                    "class": cls,
                    "shapes": [[1, 8, 8, 32 + block]],
                    "params": 1000 + block if cls == "Conv2D" else 0,
                }
            )
        block += 1
    return rows[:count]


def compare_dict(graph: list[dict], first: str | None) -> dict:
    rows, bad = [], False
    for index, layer in enumerate(graph):
        bad = bad or layer["layer"] == first
        value = 0.25 + index / 1000 if bad else 1e-6 * (1 + index % 7)
        rows.append(
            {"layer": layer["layer"], "class": layer["class"], "shape": layer["shapes"][0],
             "max_abs": value, "max_rel": value * 3, "cosine": 1 - value / 10, "ok": not bad}
        )  # fmt: skip
    return {
        "format": "bridge-compare",
        "version": 1,
        "model": "m.keras",
        "reference": "ref.npz (Keras 3.15.1)",
        "tolerance": {"atol": 1e-4, "rtol": 1e-3, "cosine": 0.9999},
        "rows": rows,
        "first_divergent": first,
    }


def profile_dict(graph: list[dict]) -> dict:
    """Conv2D + the Activation after it in one kernel; every other layer its own."""
    kernels, entries = [], []
    for layer in graph[1:]:
        if layer["class"] == "Activation" and kernels:
            kernels[-1]["layers"].append(layer["layer"])
            continue
        name = f"fused_{layer['class'].lower()}{len(kernels)}"
        us = 10.0 + len(kernels) * 1.5
        kernels.append({"name": name, "us": us, "layers": [layer["layer"]], "flops": 2_000_000,
                        "bytes": 4096})  # fmt: skip
    total = sum(k["us"] for k in kernels)
    for kernel in kernels:
        for position, name in enumerate(kernel["layers"]):
            us = kernel["us"] if position == 0 else 0.0
            cls = next(x["class"] for x in graph if x["layer"] == name)
            entries.append(
                {"layer": name, "class": cls, "us": us, "share": us / total,
                 "flops": 2_000_000 if us else 0, "bytes": 4096, "gflops": 1.0,
                 "kernels": [kernel["name"]]}
            )  # fmt: skip
    return {
        "format": "bridge-profile",
        "version": 1,
        "model": "m.keras",
        "target": "x86-64",
        "threads": 2,
        "runs": 20,
        "total_us": total,
        "layers": entries,
        "kernels": kernels,
    }


BUILD = {
    "target_name": "x86-64-v3",
    "arch": "x86_64",
    "device": "cpu",
    "bridge_version": "0.1.0",
    "tvm_version": "0.27.0",
    "keras_version": "3.15.1",
    "build_seconds": 12.345,
    "library_bytes": 3 * 1024 * 1024,
    "peak_memory_bytes": 1536 * 1024 * 1024,
    "cpu_features": ["avx2", "fma"],
}


class Page(HTMLParser):
    """The elements of a page: tags with their attributes, and the text."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def find(self, tag: str, **wanted: str) -> list[dict[str, str | None]]:
        return [
            attrs
            for name, attrs in self.tags
            if name == tag and all(wanted[k] in (attrs.get(k) or "").split() for k in wanted)
        ]


def row_text(page: str, layer_index: int) -> str:
    """The text of the layer row ``L<index>`` (a row holds no nested div.row)."""
    match = re.search(rf'<div class="row[^"]*" id="L{layer_index}"[^>]*>(.*?)</div></div>', page)
    assert match, f"no row L{layer_index}"
    return re.sub(r"<[^>]+>", " ", match.group(1))


# ---------------------------------------------------------------------------------------------
# the page, pure Python


def test_small_page_shows_layers_numbers_and_the_first_divergent_layer():
    graph = layers(9)
    page = report.render(
        graph,
        build=BUILD,
        compare=compare_dict(graph, "conv2_block1_1_conv"),
        profile=profile_dict(graph),
    )
    parsed = Page(page)
    divergent = parsed.find("div", **{"class": "divergent"})
    assert [d["id"] for d in divergent] == ["L2"]  # conv2_block1_1_conv, and only it
    text = row_text(page, 2)
    assert "conv2_block1_1_conv" in text and "first divergent" in text
    assert "2.52e-01" in text  # its max abs error
    assert "11.5 µs" in text  # its kernel's time (fused_conv2d1)
    assert "fused_conv2d1" in text and "\u00d72" in text  # fused with its Activation
    assert "1.00e-06" in row_text(page, 0)  # error before the divergence
    # the accuracy card names it and links to its row
    assert re.search(r'first divergent layer:</span> <a href="#L2">conv2_block1_1_conv</a>', page)
    facts = " ".join(parsed.text)
    for fact in ("x86-64-v3", "avx2, fma", "12.3 s", "3.0 MiB", "1.5 GiB", "0.27.0"):
        assert fact in facts, fact
    assert parsed.find("input", id="search") and not parsed.find("details", **{"class": "group"})


def test_large_page_has_collapsible_blocks_and_opens_the_divergent_one():
    graph = layers(401)
    page = report.render(graph, compare=compare_dict(graph, "conv5_block3_1_conv"))
    parsed = Page(page)
    groups = parsed.find("details", **{"class": "group"})
    names = [g["data-name"] for g in groups]
    assert {"conv2", "conv2_block1", "conv5_block3"} <= set(names)
    opened = {g["data-name"] for g in groups if "open" in g}
    assert opened == {"conv5", "conv5_block3"}  # closed by default, but the divergent path
    assert len(parsed.find("div", **{"class": "row"})) == 401 + 1  # every layer, and the head
    assert parsed.find("button", id="expand") and parsed.find("button", id="collapse")
    assert "401 layers" in page


def test_page_makes_no_network_reference():
    graph = layers(40)
    page = report.render(graph, build=BUILD, compare=compare_dict(graph, "conv3_block1_0_bn"),
                         profile=profile_dict(graph))  # fmt: skip
    parsed = Page(page)
    assert all("src" not in attrs for _, attrs in parsed.tags)  # nothing loaded
    assert not parsed.find("link") and not parsed.find("iframe") and not parsed.find("img")
    assert [a["href"] for a in parsed.find("a") if not a["href"].startswith("#")] == []
    assert len([t for t, _ in parsed.tags if t == "script"]) == 1  # the inline one
    assert "http" not in page.lower() and "url(" not in page and "@import" not in page
    assert "//" not in re.sub(r"<script>.*?</script>", "", page, flags=re.S)


def test_layer_names_with_markup_are_escaped():
    graph = layers(3)
    graph[1]["layer"] = '<u>bold</u>&co"><script src="http://evil.example/a.js"></script>'
    page = report.render(graph, compare=compare_dict(graph, graph[1]["layer"]))
    parsed = Page(page)
    assert all("src" not in attrs for _, attrs in parsed.tags)
    assert not parsed.find("u") and len([t for t, _ in parsed.tags if t == "script"]) == 1
    assert "&lt;u&gt;bold&lt;/u&gt;&amp;co&quot;&gt;&lt;script" in page
    assert [a["id"] for a in parsed.find("div", **{"class": "divergent"})] == ["L1"]


def test_merge_matches_tflite_operators_outputs_and_extra_layers():
    graph = [
        {"layer": "#0 cnn/conv1/Relu", "class": "CONV_2D", "shapes": [[1, 4]], "params": 3},
        {"layer": "#1 cnn/logits", "class": "FULLY_CONNECTED", "shapes": [[1, 2]], "params": 2},
    ]
    compare = compare_dict([{"layer": "cnn/conv1/Relu;cnn/conv1/BiasAdd", "class": "",
                             "shapes": [[1]]}], None)  # fmt: skip
    compare["rows"].append(dict(compare["rows"][0], layer="cnn/logits:1", max_abs=0.5, ok=False))
    compare["rows"].append(dict(compare["rows"][0], layer="only_in_compare"))
    rows = report.merge(graph, compare, None)
    assert [r.name for r in rows] == ["#0 cnn/conv1/Relu", "#1 cnn/logits", "only_in_compare"]
    assert rows[0].max_abs == 1e-6 and rows[1].max_abs == 0.5 and not rows[1].ok
    assert [r.extra for r in rows] == [False, False, True]  # not a layer of the graph
    page = report.render(graph, compare=compare)
    assert "2 layers, 1 other row" in page and ">2</div>" in page  # the Layers card: 2


def test_blocks_group_consecutive_prefixes_and_skip_a_shared_one():
    names = ["stem", *(f"block{b}_{p}" for b in (1, 2) for p in "abcd"), "block3_a", "head"]
    rows = [report.Row(i, f"net/{n}") for i, n in enumerate(names)]
    items = report.group_rows(rows)  # "net" is every layer's: not a block
    assert [type(i).__name__ for i in items] == ["Row", "Group", "Group", "Row", "Row"]
    assert [i.name for i in items if isinstance(i, report.Group)] == ["net/block1", "net/block2"]
    assert items[1].rows() == rows[1:5]
    nested = report.group_rows([report.Row(i, f"top_{n}") for i, n in enumerate(names)] +
                               [report.Row(10, "tail")])  # fmt: skip
    assert nested[0].name == "top" and [g.name for g in nested[0].items[1:3]] == [
        "top_block1",
        "top_block2",
    ]
    assert report.group_rows(rows[:3]) == rows[:3]  # too few to group


def test_group_rows_carry_summed_latency_and_worst_error():
    graph = layers(101)
    page = report.render(graph, compare=compare_dict(graph, None), profile=profile_dict(graph))
    summary = re.search(r'data-name="conv2_block1"[^>]*><summary class="row">(.*?)</summary>', page)
    text = re.sub(r"<[^>]+>", " ", summary.group(1))
    # conv2_block1: kernels 0 (bn), 1 (conv + relu), 2 (concat): 10 + 11.5 + 13 µs
    assert "34.5 µs" in text and "4 layers" in text and "5.00e-06" in text


def test_bad_inputs_are_typed_errors():
    with pytest.raises(InputError, match="compare: expected a 'bridge-compare' dict"):
        report.render(layers(2), compare={"format": "bridge-profile"})
    with pytest.raises(InputError, match="profile"):
        report.render(layers(2), profile={"rows": []})


def test_error_bar_is_logarithmic_and_total_latency_card():
    assert report.error_width(1e-6, 1.0) < report.error_width(1e-3, 1.0) < 100
    assert report.error_width(0.0, 1.0) == 0 and report.error_width(1.0, 1.0) == 100
    graph = layers(5)
    page = report.render(graph, profile=profile_dict(graph))
    assert "34.5 µs" in page  # total_us: 10 + 11.5 (conv, relu fused in) + 13
    assert "median of 20 runs" in page


def test_build_facts_measure_library_and_memory(tmp_path):
    library = tmp_path / "m.so"
    library.write_bytes(b"\0" * 5000)
    facts = report.build_facts({"target_name": "x"}, library=library,
                               peak_memory=report.peak_memory_bytes())  # fmt: skip
    assert facts["library_bytes"] == 5000 and "params_bytes" not in facts
    assert facts["peak_memory_bytes"] > 20 * 1024 * 1024  # this Python process, numpy loaded
    (tmp_path / "m.params").write_bytes(b"\0" * 700)
    facts = report.build_facts({"target_name": "x"}, library=library)
    assert facts["params_bytes"] == 700
    assert "library 4.9 KiB + weights 700 B" in report.render(layers(2), build=facts)


# ---------------------------------------------------------------------------------------------
# the page as a person sees it: headless Chromium


def screenshots(out: Path, models: str) -> None:
    """Run scripts/report_screenshots.py in this process (bridge already imported)."""
    needs_tools(None, "chromium")
    module = load_script(SCRIPT, "report_screenshots")
    assert module.main(["--out", str(out), "--models", models]) == 0


def png_facts(path: Path) -> tuple[int, int, int]:
    """(width, height, distinct byte values of the image data) of a PNG, without a library."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    idat, offset = b"", 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        if kind == b"IDAT":
            idat += data[offset + 8 : offset + 8 + length]
        offset += 12 + length
    return width, height, len(set(zlib.decompress(idat)))


def check_dom(out: Path, name: str, query: str) -> None:
    """The DOM Chromium built holds the layers, the numbers of the dicts and the divergence."""
    compare = json.loads((out / f"{name}.compare.json").read_text())
    profile = json.loads((out / f"{name}.profile.json").read_text())
    dom = (out / f"{name}.dom.html").read_text()
    parsed = Page(dom)
    names = [r["layer"] for r in compare["rows"]]
    ids = {a["data-name"]: a["id"] for a in parsed.find("div", **{"class": "row"}) if "id" in a}
    assert [n.lower() for n in names] == list(ids)  # every layer, in model order
    first = compare["first_divergent"]
    assert [a["id"] for a in parsed.find("div", **{"class": "divergent"})] == [ids[first.lower()]]
    index = int(ids[first.lower()][1:])
    assert report.fmt_err(compare["rows"][index]["max_abs"]) in row_text(dom, index)
    timed = max(profile["layers"], key=lambda x: x["us"])
    timed_index = int(ids[timed["layer"].lower()][1:])
    assert report.fmt_us(timed["us"]) in row_text(dom, timed_index)
    assert report.fmt_us(profile["total_us"]) in dom
    assert parsed.find("input", id="search")
    # the search box, filled in through ?q=: only matching layers stay visible
    searched = Page((out / f"{name}.search.dom.html").read_text())
    visible = [a["data-name"] for a in searched.find("div", **{"class": "row"})
               if "id" in a and "hidden" not in a]  # fmt: skip
    assert visible and all(query in v for v in visible)
    assert visible == [n.lower() for n in names if query in n.lower()]
    # the page as seen: a 1440x900 screenshot with something drawn on it
    width, height, distinct = png_facts(out / f"{name}.png")
    assert (width, height) == (1440, 900) and distinct > 50


def test_small_model_report_in_chromium(tmp_path):
    screenshots(tmp_path, "small")
    check_dom(tmp_path, "small", "bn")


@pytest.mark.slow
def test_large_model_report_in_chromium(tmp_path):
    screenshots(tmp_path, "large")
    check_dom(tmp_path, "large", "conv4_block7")
    groups = Page((tmp_path / "large.dom.html").read_text()).find("details", **{"class": "group"})
    assert len(groups) > 20  # DenseNet121's blocks are collapsible
    searched = Page((tmp_path / "large.search.dom.html").read_text())
    shown = {g["data-name"] for g in searched.find("details", **{"class": "group"})
             if "hidden" not in g}  # fmt: skip
    assert shown == {"conv4", "conv4_block7"}


# ---------------------------------------------------------------------------------------------
# bridge report (the command)

DIGITS = Path(__file__).resolve().parent.parent / "examples" / "digits" / "digits_cnn.keras"


def digits_graph() -> list[dict]:
    import bridge

    return report.graph_layers(bridge.inspect(DIGITS))


def test_cli_report_with_a_saved_compare_table_profiles_here(tmp_path, capsys):
    from bridge.cli import main

    table = tmp_path / "table.json"
    table.write_text(json.dumps(compare_dict(digits_graph(), "conv2")))
    page = tmp_path / "r.html"
    assert main(["report", str(DIGITS), "--compare", str(table), "--runs", "2",
                 "-o", str(page)]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "first divergent layer: conv2" in out and f"report      {page}" in out
    html = page.read_text()
    parsed = Page(html)
    assert [a["data-name"] for a in parsed.find("div", **{"class": "divergent"})] == ["conv2"]
    facts = " ".join(parsed.text)
    assert "library size" in facts and "peak memory of the build" in facts
    assert re.search(r"peak memory of the build</dt><dd>\d+(\.\d)? (KiB|MiB|GiB)", html)
    # profiled here: every computing layer has a time and a kernel
    assert "no profile" not in html and "median of 2 runs" in html
    assert re.search(r'id="L1".*?class="chip".*?\d+\.\d (µs|ms)', html)


def test_cli_report_bad_inputs_are_one_line_errors(tmp_path, capsys):
    from bridge.cli import main

    assert main(["report", str(DIGITS), "--compare", str(tmp_path / "nope.npz")]) == 2
    assert main(["report", str(DIGITS), "-o", str(tmp_path)]) == 2
    assert main(["report", str(DIGITS), "--profile", str(tmp_path)]) == 2
    assert main(["report", str(tmp_path / "missing.keras"), "-o", str(tmp_path / "r.html")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert errors == [
        f"error: {tmp_path / 'nope.npz'}: no such file (--compare)",
        f"error: {tmp_path}: -o is a folder; name the page, e.g. {tmp_path / 'report.html'}",
        f"error: {tmp_path}: is a folder (--profile)",
        f"error: {tmp_path / 'missing.keras'}: file not found",
    ]
    assert not (tmp_path / "r.html").exists()


@pytest.mark.slow
def test_cli_report_finds_a_perturbed_weight_against_a_keras_reference(tmp_path, capsys):
    """The bundled example with one weight of conv2 changed, against Keras's layer outputs
    (tests/fixtures/reference/digits_cnn.npz, which holds the inputs too)."""
    import h5py

    from bridge.cli import main

    model = shutil.copy(DIGITS.with_suffix(".json"), tmp_path / "digits_cnn.json")
    weights = shutil.copy(DIGITS.with_name("digits_cnn.weights.h5"), tmp_path / "w.weights.h5")
    with h5py.File(weights, "r+") as handle:  # Keras 3 names conv2's group conv2d_1
        kernel = handle["layers/conv2d_1/vars/0"]
        value = kernel[...]
        value[1, 1, 3, 5] += 0.5
        kernel[...] = value
    page = tmp_path / "r.html"
    reference = Path(__file__).parent / "fixtures" / "reference" / "digits_cnn.npz"
    assert main(["report", str(model), str(weights), "--compare", str(reference), "--runs", "2",
                 "-o", str(page)]) == 0  # fmt: skip
    assert "first divergent layer: conv2" in capsys.readouterr().out
    parsed = Page(page.read_text())
    assert [a["id"] for a in parsed.find("div", **{"class": "divergent"})] == ["L3"]
    bad = [a["data-name"] for a in parsed.find("div", **{"class": "bad"}) if "id" in a]
    assert bad[0] == "conv2" and "conv1" not in bad and "bn1" not in bad
    assert "Keras 3.15" in page.read_text()  # the reference, named on the accuracy card


@pytest.mark.slow
def test_cli_report_renders_a_runner_profile(tmp_path, capsys):
    import bridge
    from bridge.cli import main

    kernels = bridge.build(DIGITS).metadata["kernels"]
    calls = [{"name": name, "us": 100.0 + i} for i, name in enumerate(sorted(kernels))]
    raw = {"format": "bridge-profile-raw", "version": 1, "source": "runner", "device": "cpu",
           "threads": 4, "runs": 7, "calls": calls}  # fmt: skip
    (tmp_path / "out.json").write_text(json.dumps(raw))
    page = tmp_path / "r.html"
    assert main(["report", str(DIGITS), "--profile", str(tmp_path / "out.json"),
                 "-o", str(page)]) == 0  # fmt: skip
    html = page.read_text()
    assert "4 threads · median of 7 runs" in html
    total = sum(c["us"] for c in calls)
    assert report.fmt_us(total) in html
    # a rendered profile (bridge profile --json) is shown as it is
    rendered = profile_dict(digits_graph())
    (tmp_path / "rendered.json").write_text(json.dumps(rendered))
    assert main(["report", str(DIGITS), "--profile", str(tmp_path / "rendered.json"),
                 "-o", str(page)]) == 0  # fmt: skip
    assert "2 threads · median of 20 runs" in page.read_text()
    assert report.fmt_us(rendered["total_us"]) in page.read_text()


@pytest.mark.slow
def test_cli_report_of_an_aarch64_bundle_profiled_under_qemu(tmp_path, capsys):
    """The aarch64 bundle's ./run --profile out.json (under qemu, as on the device) rendered on
    this machine: the page names the layers and the times the runner measured."""
    import bridge
    from bridge.cli import main
    from bridge.targets import resolve

    needs_tools(resolve("aarch64"), "qemu-aarch64")
    bundle = tmp_path / "bundle"
    bridge.build(DIGITS, target="aarch64").export(bundle, bundle=True)
    x = np.random.default_rng(0).standard_normal((1, 8, 8, 1)).astype("float32")
    run_bundle(bundle, [x], "qemu-aarch64", "-L", "/usr/aarch64-linux-gnu",
               extra=["--profile", "out.json"])  # fmt: skip
    raw = json.loads((bundle / "out.json").read_text())
    assert raw["format"] == "bridge-profile-raw" and raw["source"] == "runner"
    page = tmp_path / "r.html"
    assert main(["report", str(DIGITS), "--target", "aarch64", "--profile",
                 str(bundle / "out.json"), "-o", str(page)]) == 0  # fmt: skip
    html = page.read_text()
    conv = max((c for c in raw["calls"] if "conv2d" in c["name"]), key=lambda c: c["us"])
    assert f">{conv['name']}</span>" in html  # the runner's kernel, on a layer's row
    assert report.fmt_us(sum(c["us"] for c in raw["calls"])) in html  # the total per call
    assert "no profile" not in capsys.readouterr().err


def test_a_kernel_called_at_several_places_fuses_each_places_layers_only():
    kernel = {"name": "k", "calls": 3, "layers": ["b1_conv", "b1_bn", "b2_conv", "b2_bn",
                                                  "b3_conv", "b3_bn"]}  # fmt: skip
    assert report.fused_with("b2_bn", kernel) == ["b2_conv", "b2_bn"]
    assert report.fused_with("x", {"name": "vm.builtin.alloc", "calls": 9, "layers": ["x"]}) == [
        "x"
    ]
    graph = [{"layer": n, "class": "C", "shapes": [], "params": 0} for n in kernel["layers"]]
    profile = profile_dict(graph)
    profile["kernels"] = [dict(kernel, us=6.0, flops=0, bytes=0)]
    for entry in profile["layers"]:
        entry["kernels"] = ["k"]
    page = report.render(graph, profile=profile)
    assert "\u00d72" in row_text(page, 2) and "\u00d76" not in page
    assert "fused: b2_conv, b2_bn), called 3 times" in page


@pytest.mark.slow
def test_cli_report_of_a_tflite_model_against_litert(tmp_path, capsys):
    """TFLite: operators (``#0 name``) and LiteRT's tensors (``name;fused;names``) are one row."""
    from bridge.cli import main

    fixtures = Path(__file__).parent / "fixtures"
    page = tmp_path / "r.html"
    assert main(["report", str(fixtures / "tflite" / "cnn_float32.tflite"), "--compare",
                 str(fixtures / "reference" / "cnn_float32.litert.npz"), "--runs", "2",
                 "-o", str(page)]) == 0  # fmt: skip
    assert "every layer agrees" in capsys.readouterr().out
    parsed = Page(page.read_text())
    rows = [a for a in parsed.find("div", **{"class": "row"}) if "id" in a]
    assert [a["data-name"] for a in rows if "extra" in a["class"].split()] == ["(runtime)"]
    assert rows[0]["data-name"].startswith("#0 ") and "TFLite" in page.read_text()
    errors = re.findall(r'class="c err ok"', page.read_text())
    assert len(errors) >= 5  # LiteRT's tensors, each on its operator's row


def test_unsupported_layers_are_marked_with_their_reason():
    graph = layers(3)
    graph[2]["status"] = "Lambda layer: its Python code is never executed"
    page = report.render(graph)
    marked = Page(page).find("div", **{"class": "unsupported"})
    assert [a["id"] for a in marked] == ["L2"]
    assert 'title="Lambda layer: its Python code is never executed">unsupported<' in page
