"""No silently ignored options: docs/configuration.md, the loader and the code that uses each key agree.

docs/configuration.md marks each key table with ``<!-- keys: SECTION.PATH ... -->`` (the
sections' paths as config.KEY_SECTIONS writes them) and the table of keys accepted but not
implemented yet with ``<!-- not-implemented -->``; the first column of each row names its
key(s) in backquotes. From that:

* every documented key is accepted by the loader, and every key the loader accepts is documented;
* every documented key is either used outside config.py (its dataclass field is referenced
  as an attribute somewhere in ipsecd/) or listed in config.NOT_IMPLEMENTED, and the doc's
  not-implemented table is that table.

"Used" is checked by name, not by type: an attribute of the same name on another object
would satisfy it. It catches a key nobody reads at all, which is how options got ignored.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from ipsecd.config import (
    FRONT_DOOR_KEYS,
    KEY_SECTIONS,
    NOT_IMPLEMENTED,
    AuthConfig,
    ChildConfig,
    Config,
    ConfigValidationError,
    ConnectionConfig,
    DataplaneSettings,
    DebugSettings,
    EapRadiusSettings,
    EapSecret,
    IkeSecret,
    KeySecret,
    MetricsSettings,
    PoolConfig,
    RadiusServerConfig,
    RetransmitConfig,
    Settings,
    load_config,
)

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "configuration.md"

_MARKER = re.compile(r"<!--\s*(keys:|not-implemented)(.*?)-->")
_NAME = re.compile(r"`([^`]+)`")

# The dataclass each section's keys land in, as fields of the same name unless READ_AS says otherwise.
SECTION_CLASSES: dict[str, type] = {
    "top": Config, "secrets": Config, "conn": ConnectionConfig, "auth": AuthConfig, "retransmit": RetransmitConfig,
    "child": ChildConfig, "secret": IkeSecret, "settings": Settings, "dataplane": DataplaneSettings,
    "metrics": MetricsSettings, "debug": DebugSettings, "pool": PoolConfig, "eap_secret": EapSecret,
    "key_secret": KeySecret, "eap_radius": EapRadiusSettings, "radius_server": RadiusServerConfig,
}  # fmt: skip
# Keys whose value is not a field of the same name: the attribute whose use shows they are honoured.
READ_AS: dict[tuple[str, str], tuple[type, str]] = {
    ("conn", "dpd_action"): (ChildConfig, "dpd_action"),  # the default of the children's dpd_action
    ("secret", "id"): (Config, "find_psk"),  # secrets are only ever looked up through find_psk
    ("secret", "secret"): (Config, "find_psk"),
    ("secret", "secret_file"): (Config, "find_psk"),
    ("secrets", "eap"): (Config, "find_eap_secret"),  # the sections of secrets, each read through one lookup
    ("secrets", "ntlm"): (Config, "find_eap_secret"),
    ("secrets", "private"): (Config, "key_passphrases"),
    ("secrets", "rsa"): (Config, "key_passphrases"),
    ("secrets", "ecdsa"): (Config, "key_passphrases"),
    ("eap_secret", "id"): (Config, "find_eap_secret"),
    ("eap_secret", "secret"): (Config, "find_eap_secret"),
    ("key_secret", "file"): (Config, "key_passphrases"),
    ("key_secret", "secret"): (Config, "key_passphrases"),
    ("settings", "eap-radius"): (Settings, "eap_radius"),
    ("eap_radius", "secret"): (RadiusServerConfig, "secret"),  # the default of each server's secret
    ("eap_radius", "retransmit_timeout"): (EapRadiusSettings, "timeouts"),
    ("eap_radius", "retransmit_base"): (EapRadiusSettings, "timeouts"),
    ("eap_radius", "retransmit_tries"): (EapRadiusSettings, "timeouts"),
    **{("log", key): (Settings, "log") for key in KEY_SECTIONS["log"].keys},  # one dict of levels
    **{("settings", key): (Settings, "front_door") for key in FRONT_DOOR_KEYS},  # one FrontDoorSettings
}
# Keys for which the loader refuses every value ipsecd does not do, so nothing downstream needs to read them.
LOADER_ENFORCED: dict[tuple[str, str], str] = {
    ("conn", "version"): "only 2 is accepted: the engine speaks IKEv2 only",
}


@dataclasses.dataclass(frozen=True)
class DocTable:
    marker: str  # "keys:" or "not-implemented"
    sections: tuple[str, ...]  # the marker's section paths ("" for the top level)
    rows: tuple[tuple[tuple[str, ...], list[str]], ...]  # (names in the first column, all cells)


@cache
def doc_tables() -> tuple[DocTable, ...]:
    lines = DOC.read_text().splitlines()
    out = []
    for i, line in enumerate(lines):
        m = _MARKER.fullmatch(line.strip())
        if m is None:
            continue
        table = []
        for row in lines[i + 1:]:
            if not row.startswith("|"):
                break
            table.append(row)
        assert len(table) > 2, f"{DOC.name}:{i + 1}: the marker is not followed by a table"
        rows = []
        for row in table[2:]:  # header and |---| separator
            cells = [c.strip() for c in row.strip().strip("|").split("|")]
            rows.append((tuple(_NAME.findall(cells[0])), cells))
            assert rows[-1][0], f"{DOC.name}: a row without a `key`: {row}"
        out.append(DocTable(m[1], tuple(m[2].split()), tuple(rows)))
    return tuple(out)


@cache
def documented() -> dict[str, list[str]]:
    """Full key path (``connections.NAME.local_port``) -> the cells of its row."""
    out: dict[str, list[str]] = {}
    for table in doc_tables():
        if table.marker != "keys:":
            continue
        for names, cells in table.rows:
            for section in table.sections:
                for name in names:
                    path = f"{section}.{name}" if section else name
                    assert path not in out, f"{path} is documented twice"
                    out[path] = cells
    return out


def _section_paths() -> set[str]:
    return {p for s in KEY_SECTIONS.values() for p in s.paths}


def accepted() -> dict[str, tuple[str, str]]:
    """Full key path -> (KEY_SECTIONS name, key), for every key the loader accepts."""
    return {(f"{p}.{k}" if p else k): (name, k)
            for name, s in KEY_SECTIONS.items() for p in s.paths for k in s.keys}


@cache
def attributes_used_outside_config() -> frozenset[str]:
    """Every ``x.name`` attribute name in ipsecd/, config.py (where keys are parsed and stored) excepted."""
    names: set[str] = set()
    for path in (ROOT / "ipsecd").rglob("*.py"):
        if path == ROOT / "ipsecd" / "config.py":
            continue
        names |= {n.attr for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Attribute)}
    return frozenset(names)


def not_implemented_paths() -> dict[str, Any]:
    return {f"{KEY_SECTIONS[row.section].paths[0]}.{row.key}": row for row in NOT_IMPLEMENTED}


# --------------------------------------------------------------------------- the doc and the loader


def test_the_doc_marks_its_key_tables() -> None:
    markers = [t.marker for t in doc_tables()]
    assert markers.count("not-implemented") == 1 and markers.count("keys:") >= 5
    for table in doc_tables():
        assert set(table.sections) <= _section_paths(), f"unknown section in a marker: {table.sections}"


def test_every_documented_key_is_accepted_by_the_loader() -> None:
    unknown = sorted(set(documented()) - set(accepted()))
    assert unknown == [], "documented in docs/configuration.md but not in config.KEY_SECTIONS"


def test_every_accepted_key_is_documented() -> None:
    docs = set(documented())
    # a key holding a section ("settings", "connections.NAME.retransmit") is documented by its keys
    missing = sorted(k for k in accepted() if k not in docs and not any(d.startswith(k + ".") for d in docs))
    assert missing == [], "accepted by the loader but not documented in docs/configuration.md"


BASE: dict[str, Any] = {
    "connections": {"c": {
        "local_addrs": ["192.0.2.1"], "remote_addrs": ["192.0.2.2"],
        "local": {"auth": "psk", "id": "a.test"}, "remote": {"auth": "psk", "id": "b.test"},
        "children": {"net": {"local_ts": ["10.1.0.0/24"], "remote_ts": ["10.2.0.0/24"]}},
    }},
    "secrets": {"ike": [{"id": ["a.test", "b.test"], "secret": "0x00112233445566778899aabbccddeeff"}]},
}  # fmt: skip


def _issues_at(tmp_path: Path, key_path: str) -> list[str]:
    """Load BASE with ``key_path`` (doc spelling) added as null (= the default) unless BASE has it already
    (required keys); the issues reported at its path."""
    doc = yaml.safe_load(yaml.safe_dump(BASE))
    concrete = key_path.replace("connections.NAME", "connections.c").replace(".CHILD", ".net")
    concrete = concrete.replace("servers.NAME", "servers.r1")
    parts = concrete.split(".")
    if parts[0] == "secrets" and len(parts) > 2:  # a key of a list entry: the first entry's
        entries = doc["secrets"].setdefault(parts[1], [{}])
        node, concrete = entries[0], f"secrets.{parts[1]}[0]." + ".".join(parts[2:])
        parts = parts[2:]
    else:
        node = doc
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node.setdefault(parts[-1], None)
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump(doc))
    try:
        load_config(path)
    except ConfigValidationError as e:
        return [str(i) for i in e.issues if i.path == concrete]
    return []


@pytest.mark.parametrize("key_path", sorted(documented()))
def test_the_loader_takes_the_documented_key(tmp_path: Path, key_path: str) -> None:
    assert _issues_at(tmp_path, key_path) == []


def test_the_loader_refuses_an_undocumented_key(tmp_path: Path) -> None:
    """The check above can fail: an unknown key is reported at its own path."""
    (issue,) = _issues_at(tmp_path, "connections.NAME.children.CHILD.no_such_key")
    assert "connections.c.children.net.no_such_key: unknown key" in issue


# --------------------------------------------------------------------------- used, or listed as not implemented


def test_every_documented_key_is_used_or_listed_as_not_implemented() -> None:
    unused = []
    for path in sorted(documented()):
        if path in _section_paths() or path in not_implemented_paths():
            continue  # a section is used through its keys
        section, key = accepted()[path]
        if (section, key) in LOADER_ENFORCED:
            continue
        cls, attr = READ_AS[section, key] if (section, key) in READ_AS else (SECTION_CLASSES[section], key)
        has = attr in {f.name for f in dataclasses.fields(cls)} or hasattr(cls, attr)
        assert has, f"{path}: {cls.__name__} has no attribute {attr!r} (fix READ_AS)"
        if attr not in attributes_used_outside_config():
            unused.append(f"{path} ({cls.__name__}.{attr})")
    assert unused == [], "accepted, stored and read by nothing: implement it or add it to config.NOT_IMPLEMENTED"


def test_the_exceptions_here_name_accepted_keys() -> None:
    for section, key in [*READ_AS, *LOADER_ENFORCED]:
        assert key in KEY_SECTIONS[section].keys, (section, key)


def _show(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def test_the_doc_lists_exactly_the_not_implemented_keys() -> None:
    (table,) = [t for t in doc_tables() if t.marker == "not-implemented"]
    rows = {names[0]: cells for names, cells in table.rows}
    assert sorted(rows) == sorted(not_implemented_paths())
    for path, row in not_implemented_paths().items():
        _key, honoured, effective, what = rows[path]
        assert set(_NAME.findall(honoured)) == {_show(v) for v in row.honoured}, path
        assert _NAME.findall(effective) == [_show(row.effective)], path
        assert what, path
        assert "Not implemented yet" in " ".join(documented()[path]), f"{path}: say so in its own table too"


def test_only_not_implemented_keys_say_not_implemented() -> None:
    for path, cells in documented().items():
        if "Not implemented yet" in " ".join(cells):
            assert path in not_implemented_paths(), f"{path} says 'Not implemented yet' but is not in the table"


@pytest.mark.parametrize(("value", "expected"), [(None, False), ("yes", True), ("no", False), (True, True)])
def test_metrics_per_sa_is_read(tmp_path: Path, value: object, expected: bool) -> None:
    """settings.metrics.per_sa (opt-in per-SPI series, O(SAs) per scrape): parsed as a boolean,
    off by default, anything else refused at its path."""
    doc = yaml.safe_load(yaml.safe_dump(BASE))
    doc["settings"] = {"metrics": {"listen": "127.0.0.1:9810", "per_sa": value}}
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert load_config(path).settings.metrics.per_sa is expected


def test_metrics_per_sa_refuses_a_non_boolean(tmp_path: Path) -> None:
    doc = yaml.safe_load(yaml.safe_dump(BASE))
    doc["settings"] = {"metrics": {"per_sa": "sometimes"}}
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigValidationError) as e:
        load_config(path)
    assert any(i.path == "settings.metrics.per_sa" for i in e.value.issues), e.value.issues
