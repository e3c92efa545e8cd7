"""Both sides of each log agree with `sensor/contract.py`.

The packet log the Zeek scripts declare and the notice log record type they
read are parsed from the .zeek source; the notice log header comes from the
daemon's own writer.
"""

import re
from pathlib import Path

from sensor.contract import (
    NOTICE_CONTROL_KINDS,
    NOTICE_KINDS,
    NOTICE_LOG_FIELDS,
    NOTICE_LOG_OPTIONAL,
    NOTICE_LOG_PATH,
    PACKET_LOG_FIELDS,
    PACKET_LOG_PATH,
    PACKETS_PER_DIRECTION,
    SNAP_LEN,
)
from sensor.notice import NOTICE_FORMAT, NoticeWriter, read_notices

SCRIPTS = Path(__file__).resolve().parent.parent / "zeek_scripts" / "scripts"
MAIN = (SCRIPTS / "main.zeek").read_text()
PACKETS = (SCRIPTS / "packets.zeek").read_text()
NOTICES = (SCRIPTS / "notices.zeek").read_text()

# Zeek's own conn_id: the four fields it logs (later Zeeks add unlogged ones).
CONN_ID = [
    ("orig_h", "addr", False, True),
    ("orig_p", "port", False, True),
    ("resp_h", "addr", False, True),
    ("resp_p", "port", False, True),
]


def _code(source: str) -> str:
    """The source without comments (`#` to the end of a line, outside strings)."""
    return re.sub(r'#[^\n"]*$', "", source, flags=re.MULTILINE)


def record_fields(source: str, name: str) -> list[tuple[str, str, bool, bool]]:
    """(field, type, optional, logged) of record type `name`, nested ones unrolled.

    Nested records are unrolled with dots, as the Input framework and the
    logging framework both do.
    """
    code = _code(source)
    match = re.search(rf"type\s+{name}\s*:\s*record\s*\{{(.*?)\}};", code, re.DOTALL)
    assert match, f"record type {name} not found"
    fields = []
    for decl in match[1].split(";"):
        part = re.fullmatch(r"\s*(\w+)\s*:\s*([\w:\[\], ]+?)\s*((?:&\w+\s*)*)", decl)
        if not part:
            assert not decl.strip(), f"cannot read field declaration {decl!r}"
            continue
        field, ztype, attrs = part[1], part[2], part[3]
        nested = CONN_ID if ztype == "conn_id" else None
        if nested is None and re.search(rf"type\s+{ztype}\s*:\s*record", code):
            nested = record_fields(source, ztype)
        if nested is not None:
            logged = "&log" in attrs
            fields += [(f"{field}.{n}", t, o, logged and lg) for n, t, o, lg in nested]
            continue
        fields.append((field, ztype, "&optional" in attrs, "&log" in attrs))

    return fields


def redef_default(source: str, name: str) -> str:
    """The default value of `const name: type = value &redef;`."""
    match = re.search(rf"const\s+{name}\s*(?::[^=]+)?=\s*(.+?)\s*&redef", source)
    assert match, f"option {name} not found"

    return match[1]


def test_packet_log_record_matches_contract() -> None:
    """The script's packet log columns are the contract's, in order and type."""
    fields = record_fields(PACKETS, "PacketInfo")

    assert [(n, t) for n, t, _, _ in fields] == list(PACKET_LOG_FIELDS)
    assert all(logged for *_, logged in fields)
    assert not any(optional for _, _, optional, _ in fields)


def test_packet_log_path_matches_contract() -> None:
    """The packet log stream writes the contract's path."""
    assert re.search(rf'\$path\s*=\s*"{PACKET_LOG_PATH}"', PACKETS)


def test_sampling_defaults_match_contract() -> None:
    """The script's &redef sampling defaults are the contract's."""
    assert redef_default(PACKETS, "packets_per_direction") == str(PACKETS_PER_DIRECTION)
    assert redef_default(PACKETS, "snap_len") == str(SNAP_LEN)
    assert redef_default(PACKETS, "excluded_ports") == "{53}"


def test_notice_input_record_matches_contract() -> None:
    """The Input framework record has the contract's names, types, optional-ness."""
    fields = record_fields(NOTICES, "NoticeLine")

    assert [(n, t) for n, t, _, _ in fields] == list(NOTICE_LOG_FIELDS)
    optional = {name for name, _, is_optional, _ in fields if is_optional}
    assert optional == NOTICE_LOG_OPTIONAL


def test_notice_writer_header_matches_contract(tmp_path: Path) -> None:
    """The header the daemon writes names the contract's fields and types."""
    path = tmp_path / "bflow_notice.log"
    NoticeWriter(path).close()
    header = dict(
        line.split("\t", 1)
        for line in path.read_text().splitlines()
        if line.startswith("#") and "\t" in line
    )

    assert header["#path"] == NOTICE_LOG_PATH
    assert header["#fields"].split("\t") == [f.name for f in NOTICE_LOG_FIELDS]
    assert header["#types"].split("\t") == [f.zeek_type for f in NOTICE_LOG_FIELDS]


def test_notice_log_default_path_matches_contract() -> None:
    """The script reads the file the daemon writes by default."""
    default = redef_default(NOTICES, "notice_log").strip('"')

    assert Path(default).name == f"{NOTICE_LOG_PATH}.log"


def test_every_kind_has_a_notice_type() -> None:
    """Each kind of notice maps to a Notice::Type and is raised by the script."""
    for kind in NOTICE_KINDS:
        assert f"Anomalous_{kind.capitalize()}," in MAIN
        assert f'r$kind == "{kind}"' in NOTICES
    for kind in NOTICE_CONTROL_KINDS:
        assert f'r$kind == "{kind}"' in NOTICES


def test_notice_log_ends_in_kind() -> None:
    """The last notice field is the never-empty kind (see contract.py for why)."""
    assert NOTICE_LOG_FIELDS[-1].name == "kind"


def test_btest_notice_files_match_contract() -> None:
    """The canned notice logs of the btests are in the contract's format."""
    canned = SCRIPTS.parent / "tests" / "notices"
    fields = "\t".join(f.name for f in NOTICE_LOG_FIELDS)

    for name in ("gen1.log", "gen2.log", "many.log"):
        text = (canned / name).read_text()
        assert f"#fields\t{fields}\n" in text, name
        assert [r["kind"] for r in read_notices(canned / name)][0] == "open"
    for name in ("gen1.rotate", "gen2.append", "many.append"):
        line = (canned / name).read_bytes()
        assert NOTICE_FORMAT.decode(line)["kind"] in NOTICE_KINDS + (
            NOTICE_CONTROL_KINDS
        ), name
