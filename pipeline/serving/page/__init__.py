"""The clinician page: a form generated from the contract (display names, units, ranges,
optional labs), posting to ``/invocations`` and showing the band, probability and
factors. One HTML document with its style and script inline: no external assets, so it
works in a hospital network with no way out."""

from __future__ import annotations

import html
import json
from functools import cache
from pathlib import Path

from pipeline.contract import Contract, Feature

TEMPLATE = Path(__file__).with_name("index.html")


@cache
def _template() -> str:
    return TEMPLATE.read_text()


def _field(f: Feature) -> str:
    name = html.escape(f.name)
    label = html.escape(f.label)
    hint = []
    if f.kind == "numeric":
        lo, hi = f.range  # type: ignore[misc]
        hint.append(f"{f.unit}, {lo:g}-{hi:g}" if f.unit else f"{lo:g}-{hi:g}")
    if f.nullable:
        hint.append("optional")
    small = f" <small>({html.escape(', '.join(hint))})</small>" if hint else ""
    title = f' title="{html.escape(f.description)}"' if f.description else ""
    if f.kind == "numeric":
        lo, hi = f.range  # type: ignore[misc]
        step = "1" if f.dtype.startswith("int") else "any"
        control = (
            f'<input id="f-{name}" name="{name}" type="number" step="{step}" '
            f'min="{lo:g}" max="{hi:g}"{"" if f.nullable else " required"}>'
        )
    else:
        if f.kind == "boolean":
            options = [("true", "yes"), ("false", "no")]
        else:
            options = [(str(c), str(c).replace("_", " ")) for c in f.categories or []]
        blank = (
            '<option value="">not recorded</option>'
            if f.nullable
            else ('<option value="" disabled selected>choose</option>')
        )
        opts = "".join(
            f'<option value="{html.escape(v)}">{html.escape(t)}</option>' for v, t in options
        )
        control = f'<select id="f-{name}" name="{name}">{blank}{opts}</select>'
    return (
        f'      <div class="field"><label for="f-{name}"{title}>{label}{small}</label>'
        f'{control}<div class="err" id="e-{name}"></div></div>'
    )


def render(contract: Contract, *, model_name: str, model_version: str, auth_required: bool) -> str:
    """The page for a contract and the version being served."""
    spec = {
        "features": [
            {
                "name": f.name,
                "kind": f.kind,
                "numeric_categories": f.kind == "categorical" and f.dtype != "string",
            }
            for f in contract.features
        ],
        "bands": {b.name: b.meaning for b in contract.risk_bands},
    }
    # Inside <script>: escape "<" so no value can close the element.
    spec_js = json.dumps(spec).replace("<", "\\u003c")
    values = {
        "{{title}}": html.escape(contract.title or contract.name),
        "{{model_name}}": html.escape(model_name),
        "{{model_version}}": html.escape(model_version),
        "{{token_display}}": "" if auth_required else "display: none;",
        "{{fields}}": "\n".join(_field(f) for f in contract.features),
        "{{spec}}": spec_js,
    }
    page = _template()
    for key, value in values.items():
        page = page.replace(key, value)
    return page
