"""The field tables of docs/live.md, generated from the models, so the document says what
the server sends: the websocket messages (``alerts.events``), the REST responses and
request bodies (``api.schemas``).

``python -m expose.monitor.api.reference`` prints the section; ``--write docs/live.md``
replaces it between its markers. tests/live/test_api_schema.py fails when the document
and the models disagree.
"""

from __future__ import annotations

import argparse
import inspect
import json
import types
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel

from expose.monitor.alerts.events import AlertDetail, AlertSummary, Envelope, Event
from expose.monitor.api.schemas import (
    AckBody,
    AuditRecord,
    CloseBody,
    DeliveryCountsInfo,
    ErrorBody,
    ExporterInfo,
    Health,
    IdleHealth,
    OutboxEntryInfo,
    ProfileInfo,
    ProfileUnreadable,
    ScoringStats,
    StreamHealthInfo,
    StreamInfo,
)
from expose.monitor.config import StreamConfig

BEGIN = ("<!-- BEGIN reference: generated from the models by "
         "`python -m expose.monitor.api.reference --write docs/live.md`; edit the models, not this -->")
END = "<!-- END reference -->"

RESPONSES: tuple[type[BaseModel], ...] = (StreamInfo, StreamHealthInfo, IdleHealth, ProfileInfo, ProfileUnreadable,
                                          AlertDetail, AlertSummary, Health, ScoringStats, ExporterInfo,
                                          DeliveryCountsInfo, OutboxEntryInfo, AuditRecord, ErrorBody)
# (StreamConfig is also a [[streams]] entry of the config file: its docstring is not about HTTP)
REQUESTS: tuple[tuple[type[BaseModel], str], ...] = (
    (StreamConfig, "The body of `POST /api/streams`."), (AckBody, "The body of `POST /api/alerts/{alert_id}/ack`."),
    (CloseBody, "The body of `POST /api/alerts/{alert_id}/close`."))


def messages() -> list[type[BaseModel]]:
    """Every member of the Event union, in its order."""

    def members(tp: Any) -> list[type[BaseModel]]:
        if get_origin(tp) is Annotated:
            return members(get_args(tp)[0])
        if get_origin(tp) in (Union, types.UnionType):
            return [m for arg in get_args(tp) for m in members(arg)]
        return [tp]

    return members(Event)


def documented() -> set[str]:
    """Names of the models the reference has a table for (payloads under their event's)."""
    models: list[type[BaseModel]] = [*RESPONSES, *(r for r, _ in REQUESTS), Envelope]
    names = {m.__name__ for m in models}
    for m in messages():
        names |= {m.__name__, _payload(m).__name__}
    return names


def _payload(event: type[BaseModel]) -> type[BaseModel]:
    """The payload model an event class adds to the envelope (the event itself for heartbeats)."""
    base = event.__bases__[0]
    return base if base is not Envelope and issubclass(base, BaseModel) else event


def _type(s: dict[str, Any]) -> str:
    if "$ref" in s:
        return f"`{s['$ref'].rsplit('/', 1)[-1]}`"
    if "const" in s:
        return json.dumps(s["const"])
    if "enum" in s:
        return " / ".join(json.dumps(v) for v in s["enum"])
    if "anyOf" in s:
        return " or ".join(_type(x) for x in s["anyOf"])
    t = s.get("type", "any")
    if t == "array":
        if "prefixItems" in s:
            return "[" + ", ".join(_type(x) for x in s["prefixItems"]) + "]"
        return f"array of {_type(s['items'])}"
    if t == "object" and isinstance(s.get("additionalProperties"), dict):
        return f"object of {_type(s['additionalProperties'])}"
    limits = [f"{op} {s[key]}" for key, op in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="),
                                               ("exclusiveMaximum", "<")) if key in s]
    if "minLength" in s or "maxLength" in s:
        limits.append(f"{s.get('minLength', 0)}-{s['maxLength']} chars" if "maxLength" in s
                      else f">= {s['minLength']} chars")
    if "pattern" in s:
        limits.append(f"matching `{s['pattern']}`")
    return " ".join([str(t), *limits])


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table(model: type[BaseModel], *, skip: frozenset[str] = frozenset(), request: bool = False) -> str:
    """A markdown table of the model's fields as JSON sees them (responses: as sent;
    request bodies: as accepted, with defaults)."""
    schema = model.model_json_schema(mode="validation" if request else "serialization")
    required = set(schema.get("required", ()))
    head = "| field | type | default | description |\n|---|---|---|---|" if request else \
        "| field | type | description |\n|---|---|---|"
    rows = [head]
    for name, prop in schema["properties"].items():
        if name in skip:
            continue
        cells = [f"`{name}`", _cell(_type(prop))]
        if request:
            cells.append("required" if name in required else _cell(f"`{json.dumps(prop.get('default'))}`"))
        cells.append(_cell(prop.get("description", "")))
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _doc(model: type[BaseModel]) -> str:
    return " ".join((inspect.getdoc(model) or "").split("\n\n")[0].split())


def _message_section(event: type[BaseModel]) -> str:
    schema = event.model_json_schema(mode="serialization")["properties"]
    kind = f"`{schema['type']['const']}`"
    if "action" in schema:
        action = schema["action"]
        kind += ", action " + " / ".join(f"`{a}`" for a in action.get("enum", [action.get("const")]))
    payload = _payload(event)
    model = f"`{event.__name__}`" + (f" (the envelope and `{payload.__name__}`)" if payload is not event else "")
    fields = table(event, skip=frozenset(Envelope.model_fields))
    return f"#### {kind}\n\n{model}: {_doc(payload)}\n\n{fields}"


def markdown() -> str:
    """The generated section of docs/live.md, markers included."""
    parts = [BEGIN, "### Websocket messages",
             f"Every message has the envelope's fields (`{Envelope.__name__}`); `stream` is a stream name, "
             "null only in heartbeats.", table(Envelope)]
    parts += [_message_section(m) for m in messages()]
    parts.append("### REST responses")
    parts += [f"#### `{m.__name__}`\n\n{_doc(m)}\n\n{table(m)}" for m in RESPONSES]
    parts.append("### REST request bodies (unknown keys are refused with 422)")
    parts += [f"#### `{m.__name__}`\n\n{what}\n\n{table(m, request=True)}" for m, what in REQUESTS]
    parts.append(END)
    return "\n\n".join(parts) + "\n"


def section_of(text: str) -> str:
    """The generated section of a document (markers included); empty if it has none."""
    start, end = text.find(BEGIN), text.find(END)
    return text[start:end + len(END)] + "\n" if start >= 0 and end > start else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m expose.monitor.api.reference",
                                     description="Print (or --write) the generated field tables of docs/live.md.")
    parser.add_argument("--write", type=Path, metavar="DOC",
                        help="replace the section between the markers in DOC (else print it)")
    args = parser.parse_args(argv)
    if args.write is None:
        print(markdown(), end="")
        return 0
    text = args.write.read_text(encoding="utf-8")
    old = section_of(text)
    if not old:
        parser.error(f"{args.write} has no generated section: put these two lines where it goes:\n{BEGIN}\n{END}")
    args.write.write_text(text.replace(old, markdown()), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
