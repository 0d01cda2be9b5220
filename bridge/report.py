"""``bridge report``: one self-contained HTML page about a model.

The page shows the layer graph in model order (class, output shapes, parameters, the fused
kernels each layer ran in), per-layer latency and error as bars beside each layer, the first
divergent layer, and the build (target, CPU features, versions, build time, library size, peak
memory). Inputs are plain data: ``bridge.inspect``'s report (or its rows as dicts), the build
metadata (a ``.meta.json`` dict plus ``library_bytes``, ``peak_memory_bytes``, ``cpu_features``),
a compare dict (``CompareTable.to_dict()``) and a profile dict (``Profile.to_dict()``).

The HTML has no network references: CSS and JS are inlined from ``report_page.html``; the JS
only filters (search box) and opens/closes the collapsible blocks, everything else is static.
"""

from __future__ import annotations

import contextlib
import html
import json
import math
import re
import resource
import sys
import time
import zlib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from bridge.errors import InputError

GROUP_ABOVE = 30  # models with more layers than this get collapsible blocks
GROUP_MIN = 4  # a block holds at least this many consecutive layers
GROUP_LEVELS = 2  # blocks nest at most this deep
COLLAPSE_ABOVE = 80  # models with more layers than this start with their blocks closed
ERROR_FLOOR = 1e-7  # the error bars' log scale starts here
DASH = "\u2013"  # what a missing number shows
TOKEN = re.compile(r"[^/_.:\s]+")
TFLITE_INDEX = re.compile(r"^#\d+\s+")


@dataclass
class Row:
    """One layer (or TFLite operator) with whatever the inputs said about it."""

    index: int
    name: str
    class_name: str = ""
    shapes: list[list[int | None]] = field(default_factory=list)
    params: int | None = None
    status: str = "ok"
    profile: dict[str, Any] | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    divergent: bool = False
    extra: bool = False  # named by the compare or profile only, e.g. the profile's "(runtime)"

    @property
    def us(self) -> float | None:
        return None if self.profile is None else _number(self.profile.get("us"))

    @property
    def max_abs(self) -> float | None:
        values = [_number(e.get("max_abs")) for e in self.errors]
        values = [v for v in values if v is not None]
        return max(values) if values else None

    @property
    def cosine(self) -> float | None:
        values = [_number(e.get("cosine")) for e in self.errors]
        values = [v for v in values if v is not None]
        return min(values) if values else None

    @property
    def ok(self) -> bool:
        return all(e.get("ok", True) for e in self.errors)


@dataclass
class Group:
    """Consecutive layers sharing a name prefix (``conv2_block1``): a collapsible block."""

    name: str
    items: list[Row | Group]

    def rows(self) -> list[Row]:
        out: list[Row] = []
        for item in self.items:
            out.extend(item.rows() if isinstance(item, Group) else [item])
        return out


# ---------------------------------------------------------------------------------------------
# inputs


def key(name: str) -> str:
    """The name a layer is matched by across inputs: TFLite's ``#3 `` operator index, the
    tensor names fused into one after its first (``a/Relu;a/BiasAdd``) and an output index
    (``name:1``) dropped."""
    name = TFLITE_INDEX.sub("", str(name)).split(";")[0]
    base, sep, tail = name.rpartition(":")
    return base if sep and tail.isdigit() else name


def graph_layers(graph: Any) -> list[dict[str, Any]]:
    """``bridge.inspect``'s report, its rows, or dicts -> ``[{"layer", "class", "shapes",
    "params", "status"}]`` in model order."""
    rows = getattr(graph, "layers", graph)
    if isinstance(rows, dict):
        rows = rows.get("layers", [])
    out = []
    for row in rows or []:
        if isinstance(row, dict):
            out.append(
                {
                    "layer": str(row.get("layer", row.get("path", ""))),
                    "class": str(row.get("class", row.get("class_name", ""))),
                    "shapes": [list(s) for s in row.get("shapes", row.get("output_shapes")) or []],
                    "params": row.get("params"),
                    "status": str(row.get("status", "ok")),
                }
            )
        else:
            out.append(
                {
                    "layer": row.path,
                    "class": row.class_name,
                    "shapes": [list(s) for s in row.output_shapes or []],
                    "params": row.params,
                    "status": row.status,
                }
            )
    return out


def graph_summary(graph: Any) -> dict[str, Any]:
    """Model-level facts of an inspect report (or dict): kind, name, Keras version, notes."""
    if isinstance(graph, dict):
        return {k: graph.get(k) for k in ("kind", "name", "keras_version", "notes")}
    if hasattr(graph, "layers") and hasattr(graph, "kind"):
        return {
            "kind": graph.kind,
            "name": graph.name,
            "keras_version": graph.keras_version,
            "notes": list(getattr(graph, "notes", [])),
        }
    return {}


def _check(data: dict[str, Any] | None, fmt: str, what: str) -> dict[str, Any] | None:
    if data is None:
        return None
    if not isinstance(data, dict) or data.get("format") != fmt:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise InputError(f"{what}: expected a {fmt!r} dict, got {found!r}")
    return data


def merge(graph: Any, compare: dict | None, profile: dict | None) -> list[Row]:
    """One row per layer in model order: the graph's layers, then any layer only the compare
    or the profile named (in their order), each with its profile entry and compare rows."""
    rows: list[Row] = []
    by_key: dict[str, Row] = {}
    graph_rows = graph_layers(graph)
    beyond = bool(graph_rows)  # a row the graph lacks is an extra one (when there is a graph)

    def row_for(name: str, class_name: str, extra: bool) -> Row:
        found = by_key.get(key(name))
        if found is None:
            found = Row(len(rows), name, class_name, params=None, extra=extra)
            rows.append(found)
            by_key[key(name)] = found
        elif class_name and not found.class_name:
            found.class_name = class_name
        return found

    for layer in graph_rows:
        row = row_for(layer["layer"], layer["class"], extra=False)
        row.shapes, row.params, row.status = layer["shapes"], layer["params"], layer["status"]
    for entry in (compare or {}).get("rows", []):
        row_for(str(entry.get("layer", "")), str(entry.get("class", "")), beyond).errors.append(
            entry
        )
    for entry in (profile or {}).get("layers", []):
        row_for(str(entry.get("layer", "")), str(entry.get("class", "")), beyond).profile = entry
    first = (compare or {}).get("first_divergent")
    if first is not None and key(first) in by_key:
        by_key[key(first)].divergent = True
    return rows


# ---------------------------------------------------------------------------------------------
# blocks


def _prefix(name: str, tokens: int) -> str | None:
    """The first ``tokens`` tokens of ``name`` as written (``conv2_block1``), or None when the
    name has no token beyond them (the layer is not inside that block)."""
    found = list(TOKEN.finditer(key(name)))
    if len(found) <= tokens:
        return None
    return key(name)[: found[tokens - 1].end()]


def group_rows(rows: list[Row], token: int = 1, levels: int = GROUP_LEVELS) -> list[Row | Group]:
    """Runs of consecutive layers sharing their first ``token`` name tokens become blocks
    (at least GROUP_MIN layers), nested ``levels`` deep; a prefix every layer shares is skipped."""
    if levels <= 0 or len(rows) < GROUP_MIN or token > 8:
        return list(rows)
    runs: list[tuple[str | None, list[Row]]] = []
    for row in rows:
        prefix = _prefix(row.name, token)
        if runs and prefix is not None and runs[-1][0] == prefix:
            runs[-1][1].append(row)
        else:
            runs.append((prefix, [row]))
    if len(runs) == 1 and runs[0][0] is not None:  # one shared prefix (the model's name)
        return group_rows(rows, token + 1, levels)
    out: list[Row | Group] = []
    for prefix, members in runs:
        if prefix is not None and len(members) >= GROUP_MIN:
            out.append(Group(prefix, group_rows(members, token + 1, levels - 1)))
        else:
            out.extend(members)
    return out


# ---------------------------------------------------------------------------------------------
# formatting


def _number(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def fmt_us(us: float | None) -> str:
    """12.3 µs, 4.56 ms, 1.23 s."""
    if us is None:
        return DASH
    if us < 1000:
        return f"{us:.1f} µs"
    if us < 1e6:
        return f"{us / 1000:.2f} ms"
    return f"{us / 1e6:.2f} s"


def fmt_err(value: float | None) -> str:
    if value is None:
        return DASH
    if math.isnan(value):
        return "nan"
    return "0" if value == 0 else f"{value:.2e}"


def fmt_bytes(count: float | None) -> str:
    if count is None:
        return DASH
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} B" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return ""


def fmt_count(value: int | None) -> str:
    return DASH if value is None else f"{value:,}"


def fmt_shapes(shapes: list[list[int | None]]) -> str:
    if not shapes:
        return DASH
    return ", ".join("(" + ", ".join("?" if d is None else str(d) for d in s) + ")" for s in shapes)


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _hue(name: str) -> int:
    return zlib.crc32(name.encode()) % 360


def error_width(value: float | None, top: float) -> float:
    """Percent of the error bar for ``value`` on a log scale from ERROR_FLOOR to ``top``."""
    if value is None or value <= 0 or math.isnan(value):
        return 0.0
    if math.isinf(value):
        return 100.0
    low, high = math.log10(ERROR_FLOOR), math.log10(max(top, ERROR_FLOOR * 10))
    return max(2.0, min(100.0, 100 * (math.log10(value) - low) / (high - low)))


# ---------------------------------------------------------------------------------------------
# page


@dataclass
class Scales:
    """The bars' full widths: the slowest layer, the largest error, the tolerance."""

    max_us: float
    max_err: float
    atol: float | None


def _latency_cell(us: float | None, share: float | None, scales: Scales) -> str:
    if us is None:
        return f'<div class="c lat"><span class="na">{DASH}</span></div>'
    width = 100 * us / scales.max_us if scales.max_us > 0 else 0
    pct = f" · {100 * share:.1f}%" if share is not None else ""
    return (
        f'<div class="c lat" title="{_e(fmt_us(us) + pct)}">'
        f'<span class="bar"><i style="width:{width:.1f}%"></i></span>'
        f'<span class="num">{_e(fmt_us(us))}</span></div>'
    )


def _error_cell(row_or_group: Row | Group, scales: Scales) -> str:
    rows = row_or_group.rows() if isinstance(row_or_group, Group) else [row_or_group]
    compared = [r for r in rows if r.errors]
    if not compared:
        return f'<div class="c err"><span class="na">{DASH}</span></div>'
    worst = max((r.max_abs for r in compared if r.max_abs is not None), default=None)
    cosine = min((r.cosine for r in compared if r.cosine is not None), default=None)
    ok = all(r.ok for r in compared)
    width = error_width(worst, scales.max_err)
    tick = ""
    if scales.atol:
        tick = f'<b style="left:{error_width(scales.atol, scales.max_err):.1f}%"></b>'
    title = f"max abs {fmt_err(worst)}"
    if isinstance(row_or_group, Row):
        details = [
            f"{e.get('layer')}: max abs {fmt_err(_number(e.get('max_abs')))}, max rel "
            f"{fmt_err(_number(e.get('max_rel')))}, {_cos(_number(e.get('cosine')))}"
            + (f" ({e['note']})" if e.get("note") else "")
            for e in row_or_group.errors
        ]
        title = "; ".join(details)
    cls = "ok" if ok else "bad"
    return (
        f'<div class="c err {cls}" title="{_e(title)}">'
        f'<span class="bar"><i style="width:{width:.1f}%"></i>{tick}</span>'
        f'<span class="num">{_e(fmt_err(worst))}</span>'
        f'<span class="cos">{_e(_cos(cosine))}</span></div>'
    )


def _cos(value: float | None) -> str:
    return DASH if value is None else f"cos {value:.6f}"


def fused_with(layer: str, kernel: dict[str, Any]) -> list[str]:
    """The layers one call of ``kernel`` computes together with ``layer`` (its fused group).
    A kernel called at several places lists every place's layers in call order; split into
    ``calls`` equal runs, the run holding ``layer`` is its group."""
    members = [str(x) for x in kernel.get("layers", [])]
    calls = int(_number(kernel.get("calls")) or 1)
    if calls > 1 and len(members) % calls == 0:
        size = len(members) // calls
        runs = [members[i : i + size] for i in range(0, len(members), size)]
        return next((run for run in runs if key(layer) in map(key, run)), members)
    return members


def _kernel_title(name: str, group: list[str], kernel: dict[str, Any]) -> str:
    calls = int(_number(kernel.get("calls")) or 1)
    fused = f" (fused: {', '.join(group)})" if len(group) > 1 else ""
    return name + fused + (f", called {calls} times" if calls > 1 else "")


def _kernel_cell(row: Row, kernels: dict[str, dict[str, Any]]) -> str:
    names = [str(k) for k in (row.profile or {}).get("kernels", [])]
    if not names:
        return f'<div class="c kern"><span class="na">{DASH}</span></div>'
    groups = [fused_with(row.name, kernels.get(k, {})) for k in names]
    title = "; ".join(
        _kernel_title(k, group, kernels.get(k, {})) for k, group in zip(names, groups)
    )
    fused = f'<em class="fx">\u00d7{len(groups[0])}</em>' if len(groups[0]) > 1 else ""
    more = f'<span class="more">+{len(names) - 1}</span>' if len(names) > 1 else ""
    return (
        f'<div class="c kern" title="{_e(title)}">'
        f'<span class="chip" style="--h:{_hue(names[0])}">{_e(names[0])}</span>{fused}{more}</div>'
    )


def _row_html(row: Row, depth: int, scales: Scales, kernels: dict[str, dict[str, Any]]) -> str:
    classes = ["row"]
    if row.divergent:
        classes.append("divergent")
    if row.errors and not row.ok:
        classes.append("bad")
    if row.status != "ok":
        classes.append("unsupported")
    if row.extra:
        classes.append("extra")
    badge = '<span class="badge">first divergent</span>' if row.divergent else ""
    status = f'<span class="status" title="{_e(row.status)}">unsupported</span>'
    status = status if row.status != "ok" else ""
    share = _number((row.profile or {}).get("share"))
    return (
        f'<div class="{" ".join(classes)}" id="L{row.index}" data-name="{_e(row.name.lower())}">'
        f'<div class="c idx">{row.index}</div>'
        f'<div class="c name" style="--d:{depth}" title="{_e(row.name)}">'
        f'<span class="t">{_e(row.name)}</span>{badge}{status}</div>'
        f'<div class="c cls" title="{_e(row.class_name)}">{_e(row.class_name)}</div>'
        f'<div class="c shape">{_e(fmt_shapes(row.shapes))}</div>'
        f'<div class="c params">{_e(fmt_count(row.params))}</div>'
        f"{_kernel_cell(row, kernels)}"
        f"{_latency_cell(row.us, share, scales)}"
        f"{_error_cell(row, scales)}</div>"
    )


def _group_html(
    group: Group, depth: int, scales: Scales, kernels: dict[str, dict[str, Any]], closed: bool
) -> str:
    rows = group.rows()
    timed = [r.us for r in rows if r.us is not None]
    us = sum(timed) if timed else None
    share = None
    if timed and any((r.profile or {}).get("share") is not None for r in rows):
        share = sum(_number((r.profile or {}).get("share")) or 0.0 for r in rows)
    params = sum(r.params or 0 for r in rows)
    divergent = any(r.divergent for r in rows)
    bad = any(r.errors and not r.ok for r in rows)
    is_open = not closed or divergent
    kernel_names = {k for r in rows for k in (r.profile or {}).get("kernels", [])}
    body = "".join(_item_html(item, depth + 1, scales, kernels, closed) for item in group.items)
    marks = '<span class="badge">first divergent</span>' if divergent else ""
    return (
        f'<details class="group{" bad" if bad else ""}" data-name="{_e(group.name.lower())}"'
        f"{' open' if is_open else ''}{' data-open=1' if is_open else ''}>"
        f'<summary class="row">'
        f'<div class="c idx">{rows[0].index}</div>'
        f'<div class="c name" style="--d:{depth}"><span class="t">{_e(group.name)}</span>'
        f'<span class="n">{len(rows)} layers</span>{marks}</div>'
        f'<div class="c cls"></div><div class="c shape"></div>'
        f'<div class="c params">{_e(fmt_count(params))}</div>'
        f'<div class="c kern"><span class="na">{len(kernel_names) or DASH}'
        f"{' kernels' if kernel_names else ''}</span></div>"
        f"{_latency_cell(us, share, scales)}{_error_cell(group, scales)}"
        f"</summary>{body}</details>"
    )


def _item_html(
    item: Row | Group, depth: int, scales: Scales, kernels: dict[str, dict[str, Any]], closed: bool
) -> str:
    if isinstance(item, Group):
        return _group_html(item, depth, scales, kernels, closed)
    return _row_html(item, depth, scales, kernels)


def _count(rows: list[Row]) -> str:
    """``429 layers`` (and ``, 1 other row`` for the profile's ``(runtime)`` and the like)."""
    extra = sum(1 for r in rows if r.extra)
    others = f", {extra} other row{'s' if extra > 1 else ''}" if extra else ""
    return f"{len(rows) - extra} layers{others}"


def _card(title: str, value: str, detail: str = "", cls: str = "") -> str:
    return (
        f'<div class="card {cls}"><div class="k">{_e(title)}</div>'
        f'<div class="v">{value}</div><div class="d">{detail}</div></div>'
    )


def _cards(rows: list[Row], compare: dict | None, profile: dict | None, build: dict) -> str:
    params = sum(r.params or 0 for r in rows)
    layers = sum(1 for r in rows if not r.extra)
    cards = [_card("Layers", f"{layers:,}", f"{params:,} parameters")]
    if profile is not None:
        detail = (
            f"per call · {_e(profile.get('threads', '?'))} threads · median of "
            f"{_e(profile.get('runs', '?'))} runs · {_e(profile.get('target', ''))}"
        )
        total = _number(profile.get("total_us"))
        cards.append(_card("Latency", _e(fmt_us(total)), detail))
    else:
        na = '<span class="na">no profile</span>'
        cards.append(_card("Latency", na, "give a profile for time per layer"))
    if compare is None:
        na = '<span class="na">not compared</span>'
        cards.append(_card("Accuracy", na, "give a reference for error per layer"))
    else:
        first = compare.get("first_divergent")
        target = next((r for r in rows if r.divergent), None)
        tol = compare.get("tolerance") or {}
        tolerance = ", ".join(f"{k} {v:g}" for k, v in tol.items() if _number(v) is not None)
        detail = f"{_e(compare.get('reference', ''))}{' · ' + _e(tolerance) if tolerance else ''}"
        if first is None:
            compared = sum(1 for r in rows if r.errors)
            cards.append(_card("Accuracy", f"all {compared} agree", detail, "good"))
        else:
            link = f'<a href="#L{target.index}">{_e(first)}</a>' if target else _e(first)
            value = f'<span class="small">first divergent layer:</span> {link}'
            cards.append(_card("Accuracy", value, detail, "alarm"))
    if build:
        size = fmt_bytes(_number(build.get("library_bytes")))
        if build.get("params_bytes") is not None:
            size += f" + weights {fmt_bytes(_number(build.get('params_bytes')))}"
        detail = f"{_e(build.get('target_name', ''))} · library {_e(size)}"
        seconds = _number(build.get("build_seconds"))
        value = f"{seconds:.1f} s" if seconds is not None else DASH
        cards.append(_card("Build", _e(value), detail))
    return f'<section class="cards">{"".join(cards)}</section>'


BUILD_FIELDS = (
    ("target", "target_name"),
    ("arch / device", None),
    ("CPU features", "cpu_features"),
    ("host CPU", "host_cpu"),
    ("bridge", "bridge_version"),
    ("Apache TVM", "tvm_version"),
    ("Keras", "keras_version"),
    ("batch size", "batch_size"),
    ("build time", "build_seconds"),
    ("library size", "library_bytes"),
    ("weights file (.params)", "params_bytes"),
    ("peak memory of the build", "peak_memory_bytes"),
    ("tuning database", "tuning_database"),
    ("source files", "source_files"),
    ("TVM target", "target"),
)


def _build_value(label: str, field_name: str | None, build: dict) -> str | None:
    if field_name is None:
        arch, device = build.get("arch"), build.get("device")
        return f"{arch} / {device}" if arch or device else None
    value = build.get(field_name)
    if value is None or value == "" or value == []:
        return None
    if field_name in ("library_bytes", "params_bytes", "peak_memory_bytes"):
        return fmt_bytes(_number(value))
    if field_name == "build_seconds":
        return f"{float(value):.1f} s"
    if isinstance(value, list):
        return ", ".join(map(str, value))
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _build_section(build: dict) -> str:
    if not build:
        return ""
    items = []
    for label, field_name in BUILD_FIELDS:
        value = _build_value(label, field_name, build)
        if value is not None:
            wide = ' class="wide"' if field_name == "target" else ""
            items.append(f"<div{wide}><dt>{_e(label)}</dt><dd>{_e(value)}</dd></div>")
    return (
        '<details class="panel" id="build" open><summary><h2>Build</h2></summary>'
        f'<dl class="facts">{"".join(items)}</dl></details>'
    )


def _kernels_section(profile: dict | None, rows: list[Row]) -> str:
    kernels = list((profile or {}).get("kernels", []))
    if not kernels:
        return ""
    index = {key(r.name): r.index for r in rows}
    kernels.sort(key=lambda k: -(_number(k.get("us")) or 0))
    top = max((_number(k.get("us")) or 0 for k in kernels), default=0) or 1
    total = _number(profile.get("total_us")) or sum(_number(k.get("us")) or 0 for k in kernels)
    lines = []
    for kernel in kernels:
        us = _number(kernel.get("us"))
        layers = [str(x) for x in kernel.get("layers", [])]
        links = ", ".join(
            f'<a href="#L{index[key(n)]}">{_e(n)}</a>' if key(n) in index else _e(n)
            for n in layers
        )
        flops, seconds = _number(kernel.get("flops")), (us or 0) / 1e6
        gflops = f"{flops / seconds / 1e9:.1f}" if flops and seconds > 0 else DASH
        share = f"{100 * us / total:.1f}%" if us is not None and total else DASH
        lines.append(
            f'<tr data-name="{_e(kernel.get("name", "")).lower()}">'
            f'<td class="kn"><span class="chip" style="--h:{_hue(str(kernel.get("name")))}">'
            f"{_e(kernel.get('name', ''))}</span></td>"
            f'<td class="r">{_e(fmt_us(us))}</td><td class="r">{share}</td>'
            f'<td><span class="bar"><i style="width:{100 * (us or 0) / top:.1f}%"></i></span></td>'
            f'<td class="r">{gflops}</td><td class="r">{_e(kernel.get("calls", DASH))}</td>'
            f'<td class="r">{len(layers)}</td>'
            f'<td class="kl">{links}</td></tr>'
        )
    return (
        '<details class="panel" id="kernels" open><summary><h2>Kernels '
        f'<span class="n">{len(kernels)} compiled functions, slowest first; '
        "a kernel holding several layers is a fused group</span></h2></summary>"
        '<table class="ktable"><thead><tr><th>kernel</th><th class="r">time</th>'
        '<th class="r">share</th><th></th><th class="r">GFLOP/s</th><th class="r">calls</th>'
        '<th class="r">layers</th>'
        f"<th>fused layers</th></tr></thead><tbody>{''.join(lines)}</tbody></table></details>"
    )


def _page_template() -> str:
    return resources.files("bridge").joinpath("report_page.html").read_text(encoding="utf-8")


def render(
    graph: Any,
    *,
    build: dict[str, Any] | None = None,
    compare: dict[str, Any] | None = None,
    profile: dict[str, Any] | None = None,
    title: str | None = None,
) -> str:
    """The report page as one HTML string (no network references).

    ``graph``: ``bridge.inspect``'s report, or a list of ``{"layer", "class", "shapes",
    "params", "status"}`` dicts; ``build``: the artifact metadata plus ``library_bytes``,
    ``peak_memory_bytes``, ``cpu_features``; ``compare``/``profile``: ``to_dict()`` of a
    compare table and of a profile. Any of the last three may be None.
    """
    compare = _check(compare, "bridge-compare", "compare")
    profile = _check(profile, "bridge-profile", "profile")
    build = dict(build or {})
    summary = graph_summary(graph)
    rows = merge(graph, compare, profile)
    kernels = {str(k.get("name")): k for k in (profile or {}).get("kernels", [])}
    errors = [r.max_abs for r in rows if r.max_abs is not None and math.isfinite(r.max_abs)]
    tolerance = (compare or {}).get("tolerance") or {}
    scales = Scales(
        max_us=max((r.us for r in rows if r.us is not None), default=0.0),
        max_err=max([*errors, _number(tolerance.get("atol")) or 0, 1e-2]) * 2,
        atol=_number(tolerance.get("atol")),
    )
    items = group_rows(rows) if len(rows) > GROUP_ABOVE else list(rows)
    closed = len(rows) > COLLAPSE_ABOVE
    body_rows = "".join(_item_html(item, 0, scales, kernels, closed) for item in items)
    name = (
        title
        or summary.get("name")
        or build.get("model")
        or (compare or {}).get("model")
        or (profile or {}).get("model")
        or "model"
    )
    kind = summary.get("kind") or build.get("model_type") or ""
    version = summary.get("keras_version") or build.get("keras_version")
    origin = "TFLite" if kind == "tflite" else " ".join(
        part for part in (kind, f"· Keras {version}" if version else "") if part
    )
    notes = "".join(f'<p class="note">{_e(n)}</p>' for n in summary.get("notes") or [])
    has_groups = any(isinstance(i, Group) for i in items)
    toolbar = (
        '<div class="toolbar">'
        '<input type="search" id="search" placeholder="Search layers by name…" '
        'aria-label="Search layers by name" autocomplete="off">'
        + (
            '<button type="button" id="expand">Expand all</button>'
            '<button type="button" id="collapse">Collapse all</button>'
            if has_groups
            else ""
        )
        + '<label><input type="checkbox" id="only-bad"> only layers out of tolerance</label>'
        f'<span id="count">{_count(rows)}</span></div>'
    )
    head = (
        '<div class="row head"><div class="c idx">#</div><div class="c name">layer</div>'
        '<div class="c cls">class</div><div class="c shape">output shape</div>'
        '<div class="c params">params</div><div class="c kern">kernel (fused group)</div>'
        '<div class="c lat">latency</div><div class="c err">max abs error · cosine</div></div>'
    )
    generated = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    body = (
        f'<header><h1>{_e(name)}</h1><p class="sub">{_e(origin)}'
        f"{' · ' + _e(build.get('target_name')) if build.get('target_name') else ''}</p></header>"
        f"{notes}{_cards(rows, compare, profile, build)}{_build_section(build)}"
        f'<section class="panel" id="layers"><h2>Layers</h2>{toolbar}'
        f'<div class="table">{head}{body_rows}</div>'
        '<p id="empty" hidden>No layer matches.</p></section>'
        f"{_kernels_section(profile, rows)}"
        f"<footer>bridge report · {_e(generated)}</footer>"
    )
    page = _page_template()
    return page.replace("<!--TITLE-->", _e(f"{name} · bridge report")).replace(
        "<!--BODY-->", body
    )


def write(path: str | Path, graph: Any, **parts: Any) -> Path:
    """:func:`render` the page and write it to ``path`` (folders made); returns the path."""
    path = Path(path)
    text = render(graph, **parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------
# build facts


def peak_memory_bytes() -> int:
    """This process's peak resident memory so far (``getrusage``; KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def build_facts(
    metadata: dict[str, Any],
    *,
    library: str | Path | None = None,
    peak_memory: int | None = None,
    spec: Any = None,
) -> dict[str, Any]:
    """The report's build dict: the artifact metadata plus the library's size, the peak memory
    of the build and, for a CPU target, the instruction set extensions its code may use."""
    from bridge.runtime import params_path

    facts = dict(metadata)
    if library is not None and Path(library).is_file():
        facts["library_bytes"] = Path(library).stat().st_size
        if params_path(library).is_file():  # weights kept out of the library
            facts["params_bytes"] = params_path(library).stat().st_size
    if peak_memory is not None:
        facts["peak_memory_bytes"] = peak_memory
    if spec is not None:
        from bridge.targets import cpu_features

        with contextlib.suppress(Exception):  # a target LLVM does not know: no line
            facts["cpu_features"] = cpu_features(spec) or ["none beyond the baseline"]
    return facts
