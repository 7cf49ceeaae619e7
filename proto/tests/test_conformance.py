"""The generated descriptors must match every wire table in shared/spec/wire-contracts.md.

The spec is the reference for upstream's wire format (field numbers, types, labels, enum numbers). This test
parses its markdown tables and its one-line definitions ("`Port`: service_port=1 (uint32), ...") and checks
each fact against the descriptors of the generated `meshproto` modules, so drift on either side fails CI.

Table shapes handled (sections 1-5):
- `field | # | type | label [| notes...]` under a heading or a line naming the message (`` `Workload` ``);
- `field | # | type | notes` (CA messages: a note starting with "rep" means repeated);
- `message | field | # | type | label` (ZDS), where an empty first cell continues the previous message;
- `enum | values` ("A=0, B=1");
- `constant | type URL | ...` (type URLs must name generated messages);
- `key | ...` and `resource | ...` tables describe metadata and naming, not wire types: recognised,
  not checked.
Special rows: "(reserved)" (number and optional name must be reserved), "(N unused)" / "(N)" (the number must
be unused, or reserved if the row says so), "—" as the field (the message has no fields).

Every table in sections 1-5 must either produce checks or be one of the recognised non-wire shapes, and an
unknown table shape fails the test, so a spec edit or a parser regression cannot pass vacuously.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import meshproto
import pytest
from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO.parent / "shared" / "spec" / "wire-contracts.md"

SCALARS = {
    "double": FieldDescriptor.TYPE_DOUBLE,
    "float": FieldDescriptor.TYPE_FLOAT,
    "int64": FieldDescriptor.TYPE_INT64,
    "uint64": FieldDescriptor.TYPE_UINT64,
    "int32": FieldDescriptor.TYPE_INT32,
    "uint32": FieldDescriptor.TYPE_UINT32,
    "sint32": FieldDescriptor.TYPE_SINT32,
    "sint64": FieldDescriptor.TYPE_SINT64,
    "fixed32": FieldDescriptor.TYPE_FIXED32,
    "fixed64": FieldDescriptor.TYPE_FIXED64,
    "sfixed32": FieldDescriptor.TYPE_SFIXED32,
    "sfixed64": FieldDescriptor.TYPE_SFIXED64,
    "bool": FieldDescriptor.TYPE_BOOL,
    "string": FieldDescriptor.TYPE_STRING,
    "bytes": FieldDescriptor.TYPE_BYTES,
}

# Table shapes that carry no wire facts (metadata keys, resource naming); recognised by their first header.
NON_WIRE_FIRST_HEADERS = frozenset({"key", "resource"})
WIRE_SECTIONS = range(1, 6)


# ---------------------------------------------------------------------------------------------- spec parsing


@dataclass(frozen=True, slots=True)
class Table:
    """One markdown table of the spec with where it sits."""

    line: int
    section: int | None
    package: str | None
    context: str | None  # the message named by the heading or the line just above the table
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]

    @property
    def ident(self) -> str:
        what = self.context or "/".join(self.header[:2])
        return f"spec line {self.line} ({what})"


@dataclass(frozen=True, slots=True)
class Prose:
    """A non-table line of the spec, with its section and package."""

    line: int
    section: int | None
    package: str | None
    text: str


@dataclass(slots=True)
class Spec:
    tables: list[Table] = field(default_factory=list)
    prose: list[Prose] = field(default_factory=list)


_PACKAGE_RE = re.compile(r"\(package `([\w.]+)`")
_TICK_NAME_RE = re.compile(r"`([\w.]+)`")


def _cells(line: str) -> tuple[str, ...]:
    return tuple(cell.strip() for cell in line.strip().strip("|").split("|"))


def parse_spec(text: str) -> Spec:
    spec = Spec()
    lines = text.splitlines()
    section: int | None = None
    package: str | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            number = re.match(r"## (\d+)\.", line)
            section = int(number.group(1)) if number else None
            found = _PACKAGE_RE.search(line)
            package = found.group(1) if found else None
        elif line.startswith("### "):
            found = _PACKAGE_RE.search(line)
            if found:
                package = found.group(1)
        if line.startswith("|"):
            start = i
            block: list[str] = []
            while i < len(lines) and lines[i].startswith("|"):
                block.append(lines[i])
                i += 1
            above = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
            context = None
            if above.startswith(("#", "`")):
                named = _TICK_NAME_RE.search(above)
                context = named.group(1) if named else None
            header = tuple(c.lower() for c in _cells(block[0]))
            rows = tuple(_cells(row) for row in block[2:])
            spec.tables.append(Table(start + 1, section, package, context, header, rows))
            continue
        spec.prose.append(Prose(i + 1, section, package, line))
        i += 1
    return spec


def _strip_parens(text: str) -> str:
    previous = None
    while previous != text:
        previous = text
        text = re.sub(r"\([^()]*\)", "", text)
    return text


def _clean(text: str) -> str:
    return _strip_parens(text).replace("`", "").replace("*", "").strip()


def _first_int(text: str) -> int | None:
    found = re.search(r"\d+", text.replace("*", ""))
    return int(found.group(0)) if found else None


# ------------------------------------------------------------------------------------------ descriptor side


def _load_all_generated() -> None:
    for module in pkgutil.walk_packages(meshproto.__path__, prefix="meshproto."):
        importlib.import_module(module.name)


_load_all_generated()
POOL = descriptor_pool.Default()


def find_message(full_name: str) -> Descriptor | None:
    try:
        return POOL.FindMessageTypeByName(full_name)
    except KeyError:
        return None


def find_enum(full_name: str) -> EnumDescriptor | None:
    try:
        return POOL.FindEnumTypeByName(full_name)
    except KeyError:
        return None


def resolve(name: str, scope: str) -> tuple[str, str] | None:
    """Resolve a type name as protoc would from inside `scope`; the spec also writes WKTs by short name."""
    parts = scope.split(".") if scope else []
    candidates = [".".join([*parts[:i], name]) for i in range(len(parts), -1, -1)]
    candidates.append(f"google.protobuf.{name}")
    for candidate in candidates:
        if find_message(candidate) is not None:
            return ("message", candidate)
        if find_enum(candidate) is not None:
            return ("enum", candidate)
    return None


def _as_proto(message: Descriptor) -> descriptor_pb2.DescriptorProto:
    proto = descriptor_pb2.DescriptorProto()
    message.CopyToProto(proto)
    return proto


def _is_proto3_optional(message: Descriptor, fd: FieldDescriptor) -> bool:
    return any(f.number == fd.number and f.proto3_optional for f in _as_proto(message).field)


def _is_map(fd: FieldDescriptor) -> bool:
    return fd.message_type is not None and fd.message_type.GetOptions().map_entry


def _reserved(message: Descriptor) -> tuple[set[int], set[str]]:
    proto = _as_proto(message)
    numbers = {n for r in proto.reserved_range for n in range(r.start, r.end)}
    return numbers, set(proto.reserved_name)


# ------------------------------------------------------------------------------------------------- checker


@dataclass(slots=True)
class Checker:
    """Collects every comparison made, per spec table or line, and every mismatch."""

    checks: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    messages: set[str] = field(default_factory=set)
    enums: set[str] = field(default_factory=set)

    def expect(self, where: str, ok: bool, what: str) -> bool:
        self.checks[where] += 1
        if not ok:
            self.failures.append(f"{where}: {what}")
        return ok

    # ---- types, labels, special rows

    def message(self, where: str, name: str, scope: str) -> Descriptor | None:
        found = resolve(name, scope)
        if not self.expect(where, found is not None and found[0] == "message", f"no message {name!r}"):
            return None
        assert found is not None
        self.messages.add(found[1])
        return find_message(found[1])

    def field_type(self, where: str, fd: FieldDescriptor, spec_type: str, scope: str) -> None:
        text = _clean(spec_type)
        if text.startswith("map<"):
            inner = text[len("map<") : text.rindex(">")]
            key, value = (part.strip() for part in inner.split(",", 1))
            if self.expect(where, _is_map(fd), f"{fd.name} is not a map"):
                entry = fd.message_type
                assert entry is not None
                self.field_type(where, entry.fields_by_name["key"], key, entry.full_name)
                self.field_type(where, entry.fields_by_name["value"], value, entry.full_name)
            return
        word = text.split()[0] if text.split() else ""
        if word in ("", "—"):
            return
        if word in SCALARS:
            self.expect(where, fd.type == SCALARS[word], f"{fd.full_name} type {fd.type} != {word}")
            return
        found = resolve(word, scope)
        if not self.expect(
            where, found is not None, f"spec type {word!r} of {fd.full_name} resolves to nothing"
        ):
            return
        assert found is not None
        kind, full = found
        actual = fd.message_type if kind == "message" else fd.enum_type
        self.expect(
            where,
            actual is not None and actual.full_name == full,
            f"{fd.full_name} has type {actual.full_name if actual else fd.type}, spec says {full}",
        )
        # A type cell may define the referenced message inline: "ControlPlane (identifier=1 string)".
        for inline in re.findall(r"\(([^()]*=\d+[^()]*)\)", spec_type):
            target = find_message(full) if kind == "message" else None
            if target is None:
                continue
            for fname, number, ftype in re.findall(r"(\w+)=(\d+)\s+(\w+)", inline):
                self.plain_field(
                    where, target, fname, int(number), spec_type=ftype, spec_label="", scope=target.full_name
                )

    def label(self, where: str, message: Descriptor, fd: FieldDescriptor, spec_label: str) -> None:
        text = spec_label.replace("*", "").strip().lower()
        optional = _is_proto3_optional(message, fd)
        name = fd.full_name
        if text.startswith("rep"):
            self.expect(where, fd.is_repeated and not _is_map(fd), f"{name} is not a plain repeated field")
            if "packed" in text:
                self.expect(where, fd.is_packed, f"{name} is not packed")
        elif text.startswith("map"):
            self.expect(where, fd.is_repeated and _is_map(fd), f"{name} is not a map")
        elif text.startswith("opt"):
            self.expect(where, optional and not fd.is_repeated, f"{name} is not proto3 optional")
        elif text.startswith("oneof"):
            oneof = _TICK_NAME_RE.search(spec_label)
            actual = fd.containing_oneof.name if fd.containing_oneof is not None else None
            self.expect(
                where,
                oneof is not None and actual == oneof.group(1) and not optional,
                f"{name} is in oneof {actual!r}, spec says {spec_label!r}",
            )
            for unused in re.findall(r"\((\d+) unused\)", spec_label):
                self.unused(where, message, int(unused))
        else:
            self.expect(
                where,
                not fd.is_repeated and fd.containing_oneof is None and not optional,
                f"{name} should be a plain singular field (repeated={fd.is_repeated}, "
                f"oneof={fd.containing_oneof.name if fd.containing_oneof else None}, optional={optional})",
            )

    def reserved(self, where: str, message: Descriptor, number: int, name: str | None) -> None:
        numbers, names = _reserved(message)
        self.expect(where, number in numbers, f"{message.full_name}: {number} is not reserved")
        self.expect(
            where, number not in message.fields_by_number, f"{message.full_name}: {number} is declared"
        )
        if name is not None:
            self.expect(where, name in names, f"{message.full_name}: name {name!r} is not reserved")

    def unused(self, where: str, message: Descriptor, number: int) -> None:
        self.expect(
            where, number not in message.fields_by_number, f"{message.full_name}: {number} is declared"
        )

    def plain_field(
        self,
        where: str,
        message: Descriptor,
        name: str,
        number: int,
        *,
        spec_type: str,
        spec_label: str,
        scope: str,
    ) -> FieldDescriptor | None:
        fd = message.fields_by_number.get(number)
        if not self.expect(where, fd is not None, f"{message.full_name} has no field {number} ({name})"):
            return None
        assert fd is not None
        self.expect(
            where, fd.name == name, f"{message.full_name} field {number} is {fd.name!r}, spec {name!r}"
        )
        self.field_type(where, fd, spec_type, scope)
        self.label(where, message, fd, spec_label)
        return fd

    # ---- one table row (normal, reserved, unused or "no fields")

    def row(self, where: str, message: Descriptor, cells: tuple[str, str, str, str]) -> int | None:
        """Check one row; return the field number it declares (None for reserved/unused/empty rows)."""
        name_cell, number_cell, type_cell, label_cell = cells
        everything = " ".join(cells)
        if name_cell.lower() == "(reserved)":
            number = _first_int(number_cell)
            named = re.search(r"name `(\w+)`", number_cell)
            if self.expect(where, number is not None, f"reserved row without a number: {cells}"):
                assert number is not None
                self.reserved(where, message, number, named.group(1) if named else None)
            return None
        special = re.fullmatch(r"\((\d+)(?:\s+unused)?\)", name_cell)
        if special:
            number = int(special.group(1))
            if "reserved" in everything.lower():
                named = re.search(r"reserved \(`(\w+)`\)", everything)
                self.reserved(where, message, number, named.group(1) if named else None)
            else:
                self.unused(where, message, number)
            return None
        if name_cell == "—":
            self.expect(where, len(message.fields) == 0, f"{message.full_name} should have no fields")
            return None
        number = _first_int(number_cell)
        if not self.expect(where, number is not None, f"row without a field number: {cells}"):
            return None
        assert number is not None
        name = _clean(name_cell).split()[0]
        self.plain_field(
            where, message, name, number, spec_type=type_cell, spec_label=label_cell, scope=message.full_name
        )
        return number

    def complete(self, where: str, message: Descriptor, numbers: set[int]) -> None:
        declared = set(message.fields_by_number)
        self.expect(
            where,
            declared == numbers,
            f"{message.full_name} declares {sorted(declared - numbers)} not in the spec, "
            f"spec lists {sorted(numbers - declared)} not declared",
        )

    def enum(self, where: str, name: str, scope: str, values_text: str) -> None:
        found = resolve(name, scope)
        if not self.expect(where, found is not None and found[0] == "enum", f"no enum {name!r}"):
            return
        assert found is not None
        self.enums.add(found[1])
        enum = find_enum(found[1])
        assert enum is not None
        spec_values = {n: int(v) for n, v in re.findall(r"(\w+)=(\d+)", values_text)}
        actual = {v.name: v.number for v in enum.values}
        self.expect(where, bool(spec_values), f"no values parsed for {name}")
        self.expect(where, actual == spec_values, f"{enum.full_name} values {actual} != spec {spec_values}")


# ------------------------------------------------------------------------------------------ applying tables


def _scope(package: str | None) -> str:
    return package or ""


def check_field_table(ck: Checker, table: Table) -> None:
    header = table.header
    where = table.ident
    if header[0] == "message":
        current: str | None = None
        per_message: dict[str, list[tuple[str, ...]]] = {}
        for row in table.rows:
            if row[0]:
                current = _clean(row[0])
            if not ck.expect(where, current is not None, f"continuation row before any message: {row}"):
                continue
            assert current is not None
            per_message.setdefault(current, []).append(row[1:5])
        for name, rows in per_message.items():
            message = ck.message(where, name, _scope(table.package))
            if message is not None:
                _check_rows(ck, f"{where} {name}", message, rows, label_from_notes=False)
        return
    if not ck.expect(where, table.context is not None, "field table without a message name above it"):
        return
    assert table.context is not None
    message = ck.message(where, table.context, _scope(table.package))
    if message is not None:
        label_from_notes = header[3] == "notes"
        _check_rows(ck, where, message, [row[:4] for row in table.rows], label_from_notes=label_from_notes)


def _check_rows(
    ck: Checker,
    where: str,
    message: Descriptor,
    rows: list[tuple[str, ...]],
    *,
    label_from_notes: bool,
) -> None:
    numbers: set[int] = set()
    for row in rows:
        padded = (*row, "", "", "", "")[:4]
        name_cell, number_cell, type_cell, label_cell = padded
        if label_from_notes:
            # Notes column: only a leading "rep" is a label; "optional; ..." there means "may be absent".
            label_cell = "rep" if label_cell.lower().startswith("rep") else ""
        number = ck.row(where, message, (name_cell, number_cell, type_cell, label_cell))
        if number is not None:
            numbers.add(number)
    ck.complete(where, message, numbers)


def check_enum_table(ck: Checker, table: Table) -> None:
    for row in table.rows:
        ck.enum(table.ident, _clean(row[0]), _scope(table.package), row[1])


def check_type_url_table(ck: Checker, table: Table) -> None:
    for row in table.rows:
        url = re.search(r"type\.googleapis\.com/([\w.]+)", " ".join(row))
        if not ck.expect(table.ident, url is not None, f"no type URL in {row}"):
            continue
        assert url is not None
        message = find_message(url.group(1))
        if ck.expect(table.ident, message is not None, f"no message for {url.group(0)}"):
            assert message is not None
            ck.messages.add(message.full_name)
            packed = any_pb2.Any()
            packed.Pack(message._concrete_class())  # type: ignore[attr-defined]
            ck.expect(table.ident, packed.type_url == url.group(0), f"{packed.type_url} != {url.group(0)}")


def table_kind(table: Table) -> str:
    header = table.header
    if header[:4] in (("field", "#", "type", "label"), ("field", "#", "type", "notes")):
        return "fields"
    if header[:5] == ("message", "field", "#", "type", "label"):
        return "fields"
    if header[:2] == ("enum", "values"):
        return "enum"
    if header[:2] == ("constant", "type url"):
        return "type_url"
    if header[0] in NON_WIRE_FIRST_HEADERS:
        return "non_wire"
    return "unknown"


# ------------------------------------------------------------------------------------- applying prose lines

_INLINE_MESSAGE_RE = re.compile(r"^`([\w.]+)`(?:\s*\([^)]*\))?:\s+(.*)$")
_INLINE_ENUM_RE = re.compile(r"^(?:Nested enum|Enum) `([\w.]+)`:\s+(.*)$")
_INLINE_FIELD_RE = re.compile(r"`?(\w+)`?=\**(\d+)\**(?:\s*\(([^()]*)\))?")


def _first_sentence(text: str) -> str:
    depth = 0
    for index, char in enumerate(text):
        if char in "({":
            depth += 1
        elif char in ")}":
            depth -= 1
        elif char == "." and depth == 0 and (index + 1 == len(text) or text[index + 1] == " "):
            return text[:index]
    return text


def _inline_fields(body: str) -> Iterator[tuple[str, int, str, str]]:
    """Yield (name, number, type, label) from "a=1 (rep T), b=2 (string)" and `oneof `x` { ... }` forms."""
    oneofs: list[tuple[int, int, str]] = [
        (m.start(), m.end(), m.group(1)) for m in re.finditer(r"oneof `(\w+)`\s*\{[^}]*\}", body)
    ]
    parsed: list[tuple[str, int, str | None, str]] = []
    shared_type: str | None = None
    for match in _INLINE_FIELD_RE.finditer(body):
        name, number, paren = match.group(1), int(match.group(2)), match.group(3)
        label = next((f"oneof `{o}`" for s, e, o in oneofs if s <= match.start() < e), "")
        spec_type: str | None = None
        if paren is not None:
            words = re.split(r"[;,]", paren)[0].split()
            if words and words[0] == "all" and len(words) > 1:
                shared_type = words[1]
            else:
                if words and words[0] == "rep":
                    label = "rep"
                    words = words[1:]
                if words and (words[0] in SCALARS or words[0][0].isupper() or "." in words[0]):
                    spec_type = words[0]
        parsed.append((name, number, spec_type, label))
    for name, number, spec_type, label in parsed:
        yield name, number, spec_type or shared_type or "", label


def check_prose(ck: Checker, prose: Prose) -> None:
    where = f"spec line {prose.line}"
    text = prose.text.strip()
    scope = _scope(prose.package)
    enum = _INLINE_ENUM_RE.match(text)
    if enum:
        ck.enum(where, enum.group(1), scope, _first_sentence(enum.group(2)))
        return
    inline = _INLINE_MESSAGE_RE.match(text)
    if inline and "=" in inline.group(2):
        message = ck.message(where, inline.group(1), scope)
        if message is None:
            return
        numbers = set()
        for name, number, spec_type, label in _inline_fields(_first_sentence(inline.group(2))):
            ck.plain_field(
                where, message, name, number, spec_type=spec_type, spec_label=label, scope=message.full_name
            )
            numbers.add(number)
        for unused in re.findall(r"Field (\d+) is unused", inline.group(2)):
            ck.unused(where, message, int(unused))
        ck.complete(where, message, numbers)
        return
    if text.startswith("The SotW messages"):
        # ztunnel's copy of the state-of-the-world messages: a subset of upstream, so no completeness check.
        for name, fields in re.findall(r"(\w+): ((?:\w+=\d+(?:, )?)+)", text):
            message = ck.message(where, f"envoy.service.discovery.v3.{name}", "")
            if message is None:
                continue
            for fname, number in re.findall(r"(\w+)=(\d+)", fields):
                fd = message.fields_by_number.get(int(number))
                ck.expect(
                    where, fd is not None and fd.name == fname, f"{message.full_name}.{fname} != {number}"
                )


# -------------------------------------------------------------------------------------------------- tests


def load_spec(path: Path) -> Spec:
    if not path.is_file():
        pytest.fail(
            f"wire spec not found at {path}: the conformance test needs shared/spec/wire-contracts.md "
            "checked out beside the repository (CI places shared/ next to the clone)"
        )
    return parse_spec(path.read_text())


@pytest.fixture(scope="module")
def spec() -> Spec:
    return load_spec(SPEC)


def test_missing_spec_fails_instead_of_skipping(tmp_path: Path) -> None:
    with pytest.raises(pytest.fail.Exception, match="wire spec not found"):
        load_spec(tmp_path / "wire-contracts.md")


@pytest.fixture(scope="module")
def checked(spec: Spec) -> Checker:
    ck = Checker()
    for table in spec.tables:
        if table.section not in WIRE_SECTIONS:
            continue
        kind = table_kind(table)
        if kind == "fields":
            check_field_table(ck, table)
        elif kind == "enum":
            check_enum_table(ck, table)
        elif kind == "type_url":
            check_type_url_table(ck, table)
    for prose in spec.prose:
        if prose.section in WIRE_SECTIONS:
            check_prose(ck, prose)
    return ck


def test_spec_matches_generated_descriptors(checked: Checker) -> None:
    assert not checked.failures, "spec/descriptor mismatches:\n" + "\n".join(checked.failures)


def test_every_wire_table_was_checked(spec: Spec, checked: Checker) -> None:
    wire_tables = [t for t in spec.tables if t.section in WIRE_SECTIONS]
    unknown = [t.ident + f" header={t.header}" for t in wire_tables if table_kind(t) == "unknown"]
    assert not unknown, "tables of an unknown shape in sections 1-5 (teach the parser):\n" + "\n".join(
        unknown
    )
    unchecked = [
        t.ident
        for t in wire_tables
        if table_kind(t) != "non_wire" and not any(k.startswith(t.ident) for k in checked.checks)
    ]
    assert not unchecked, "wire tables that produced no checks:\n" + "\n".join(unchecked)
    kinds = Counter(table_kind(t) for t in wire_tables)
    # The spec at the time of writing: 14 field tables, 2 enum tables, 1 type-URL table, 2 non-wire tables,
    # 17 one-line definitions, about 1000 individual comparisons. Floors, so that adding to the spec is fine.
    assert kinds["fields"] >= 14
    assert kinds["enum"] >= 2
    assert kinds["type_url"] >= 1
    table_idents = {t.ident for t in wire_tables}
    prose_lines = {k for k in checked.checks if not any(k.startswith(i) for i in table_idents)}
    assert len(prose_lines) >= 17, sorted(prose_lines)
    assert sum(checked.checks.values()) >= 900, f"only {sum(checked.checks.values())} checks ran"


def test_every_istio_type_is_described_by_the_spec(checked: Checker) -> None:
    """Every message and enum we declare in the istio.* packages must appear in the spec."""
    declared_messages: set[str] = set()
    declared_enums: set[str] = set()
    for module in pkgutil.walk_packages(meshproto.__path__, prefix="meshproto."):
        if not module.name.startswith("meshproto.istio.") or not module.name.endswith("_pb2"):
            continue
        file = importlib.import_module(module.name).DESCRIPTOR
        for message in file.message_types_by_name.values():
            declared_messages.add(message.full_name)
            declared_enums.update(e.full_name for e in message.enum_types)
        declared_enums.update(e.full_name for e in file.enum_types_by_name.values())
    assert len(declared_messages) >= 30
    assert declared_messages - checked.messages == set()
    assert declared_enums - checked.enums == set()


def test_checker_detects_drift() -> None:
    """A spec row that disagrees with the descriptors must be reported, so the big test can fail."""
    ck = Checker()
    workload = find_message("istio.workload.Workload")
    assert workload is not None
    ck.row("t", workload, ("uid", "21", "string", ""))  # wrong number
    ck.row("t", workload, ("addresses", "3", "bytes", ""))  # missing "rep"
    ck.row("t", workload, ("capacity", "27", "uint32", ""))  # wrapper, not scalar
    ck.row("t", workload, ("(reserved)", "14", "—", "reserved"))  # 14 is a real field
    ck.enum("t", "TunnelProtocol", "istio.workload", "NONE=0, HBONE=1")  # missing a value
    assert len(ck.failures) >= 5, ck.failures


def test_parser_reads_table_shapes() -> None:
    text = "\n".join(
        [
            "## 5. Z (package `istio.workload.zds`)",
            "| message | field | # | type | label |",
            "|---|---|---|---|---|",
            "| DelWorkload | uid | 2 | string | |",
            "| WorkloadRequest | add | 1 | AddWorkload | oneof `payload` |",
            "| | keep | 5 | KeepWorkload | oneof `payload` (4 unused) |",
        ]
    )
    tables = parse_spec(text).tables
    assert len(tables) == 1
    assert tables[0].package == "istio.workload.zds"
    assert tables[0].rows[2][0] == ""
    ck = Checker()
    check_field_table(ck, tables[0])
    # WorkloadRequest has more members than the two listed, so only its completeness check fails.
    assert [f for f in ck.failures if "declares" not in f] == []
    assert any("WorkloadRequest declares" in f for f in ck.failures)


# ---------------------------------------------------------------------------- type URLs and gRPC method paths


def test_type_urls() -> None:
    from meshproto.istio.security import authorization_pb2
    from meshproto.istio.workload import workload_pb2

    for message, url in [
        (workload_pb2.Address(), "type.googleapis.com/istio.workload.Address"),
        (workload_pb2.Workload(), "type.googleapis.com/istio.workload.Workload"),
        (authorization_pb2.Authorization(), "type.googleapis.com/istio.security.Authorization"),
    ]:
        packed = any_pb2.Any()
        packed.Pack(message)
        assert packed.type_url == url


class _RecordingChannel:
    """Stands in for a grpc.Channel: records the method paths a generated stub registers."""

    def __init__(self) -> None:
        self.paths: dict[str, str] = {}

    def _record(self, kind: str, path: str, **_: object) -> object:
        self.paths[path] = kind
        return object()

    def unary_unary(self, path: str, **kw: object) -> object:
        return self._record("unary_unary", path, **kw)

    def stream_stream(self, path: str, **kw: object) -> object:
        return self._record("stream_stream", path, **kw)

    def unary_stream(self, path: str, **kw: object) -> object:
        return self._record("unary_stream", path, **kw)

    def stream_unary(self, path: str, **kw: object) -> object:
        return self._record("stream_unary", path, **kw)


def test_grpc_method_paths() -> None:
    from meshproto.envoy.service.discovery.v3 import ads_pb2, ads_pb2_grpc
    from meshproto.istio.v1.auth import ca_pb2, ca_pb2_grpc

    channel = _RecordingChannel()
    ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)  # type: ignore[call-overload]
    ca_pb2_grpc.IstioCertificateServiceStub(channel)  # type: ignore[call-overload]
    assert channel.paths == {
        "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources": "stream_stream",
        "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources": "stream_stream",
        "/istio.v1.auth.IstioCertificateService/CreateCertificate": "unary_unary",
    }

    ads = ads_pb2.DESCRIPTOR.services_by_name["AggregatedDiscoveryService"]
    delta = ads.methods_by_name["DeltaAggregatedResources"]
    assert f"/{ads.full_name}/{delta.name}" == (
        "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"
    )
    assert delta.client_streaming
    assert delta.server_streaming
    assert delta.input_type.full_name == "envoy.service.discovery.v3.DeltaDiscoveryRequest"
    assert delta.output_type.full_name == "envoy.service.discovery.v3.DeltaDiscoveryResponse"
    ca = ca_pb2.DESCRIPTOR.services_by_name["IstioCertificateService"]
    create = ca.methods_by_name["CreateCertificate"]
    assert f"/{ca.full_name}/{create.name}" == "/istio.v1.auth.IstioCertificateService/CreateCertificate"
    assert not create.client_streaming
    assert not create.server_streaming


# ----------------------------------------------------------------------------------------------- wire bytes


def test_workload_wire_bytes() -> None:
    from google.protobuf import wrappers_pb2
    from meshproto.istio.workload import workload_pb2

    workload = workload_pb2.Workload(
        name="n",
        addresses=[bytes([10, 0, 0, 1])],
        tunnel_protocol=workload_pb2.HBONE,
        uid="ab",
        capacity=wrappers_pb2.UInt32Value(value=3),
    )
    workload.services["ns/h"].ports.add(service_port=80, target_port=8080)
    expected = bytes(
        [
            0x0A, 0x01, ord("n"),                      # name: field 1, wire type 2
            0x1A, 0x04, 10, 0, 0, 1,                   # addresses: field 3, wire type 2
            0x28, 0x01,                                # tunnel_protocol: field 5, varint, HBONE=1
            0xA2, 0x01, 0x02, ord("a"), ord("b"),      # uid: field 20 -> tag (20 << 3 | 2) = 0xa2 0x01
            0xB2, 0x01, 0x0F,                          # services: field 22 map entry, 15 bytes
            0x0A, 0x04, *b"ns/h",                      #   key = 1
            0x12, 0x07, 0x0A, 0x05,                    #   value = 2 (PortList), ports = 1 (Port)
            0x08, 0x50, 0x10, 0x90, 0x3F,              #     service_port=80, target_port=8080
            0xDA, 0x01, 0x02, 0x08, 0x03,              # capacity: field 27 -> 0xda 0x01, UInt32Value{value=3}
        ]
    )  # fmt: skip
    assert workload.SerializeToString(deterministic=True) == expected
    assert workload_pb2.Workload.FromString(expected) == workload


def test_explicit_presence_and_other_wire_details() -> None:
    from meshproto.envoy.service.discovery.v3 import discovery_pb2
    from meshproto.google.rpc import status_pb2
    from meshproto.istio.workload import workload_pb2
    from meshproto.istio.workload.zds import zds_pb2

    # proto3 optional: a zero prefix length is still sent (field 3, varint 0); unset sends nothing.
    assert workload_pb2.NetworkAddress(length=0).SerializeToString() == b"\x18\x00"
    assert workload_pb2.NetworkAddress().SerializeToString() == b""
    assert workload_pb2.NetworkAddress(length=0).HasField("length")
    # ZDS DelWorkload.uid is field 2.
    assert zds_pb2.DelWorkload(uid="u").SerializeToString() == b"\x12\x01u"
    assert (
        zds_pb2.WorkloadRequest(keep=zds_pb2.KeepWorkload(uid="u")).SerializeToString()
        == b"\x2a\x03\x0a\x01u"
    )
    # A NACK: response_nonce (6) and error_detail (7) carrying google.rpc.Status.message (2).
    nack = discovery_pb2.DeltaDiscoveryRequest(
        type_url="t", response_nonce="1", error_detail=status_pb2.Status(message="x")
    )
    assert nack.SerializeToString() == b"\x12\x01t\x32\x011\x3a\x03\x12\x01x"
