"""The zkg package: every script parses and is in zeek-format's layout."""

import configparser
import subprocess
import sys
from pathlib import Path

import pytest
import zeekscript

PACKAGE = Path(__file__).resolve().parent.parent / "zeek_scripts"
SCRIPTS = sorted(PACKAGE.rglob("*.zeek"))
ZEEK_FORMAT = Path(sys.executable).with_name("zeek-format")


def test_package_has_scripts() -> None:
    """The package ships its scripts, btest tests and a trace to test on."""
    names = {p.relative_to(PACKAGE).as_posix() for p in SCRIPTS}

    assert {
        "scripts/__load__.zeek",
        "scripts/main.zeek",
        "scripts/packets.zeek",
        "scripts/notices.zeek",
    } <= names
    assert (PACKAGE / "tests" / "btest.cfg").exists()
    assert list((PACKAGE / "tests" / "Traces").glob("*.pcap"))


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_script_parses(path: Path) -> None:
    """zeekscript parses the script with no error node."""
    script = zeekscript.Script(path)

    assert script.parse()
    assert not script.has_error(), script.get_error()


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_script_is_formatted(path: Path) -> None:
    """zeek-format leaves the script unchanged."""
    result = subprocess.run(
        [str(ZEEK_FORMAT), str(path)], capture_output=True, timeout=60, check=True
    )

    assert result.stdout == path.read_bytes()


def test_zkg_meta() -> None:
    """zkg.meta names the script dir, the test command and the Zeek version."""
    meta = configparser.ConfigParser()
    meta.read(PACKAGE / "zkg.meta")
    package = meta["package"]

    assert (PACKAGE / package["script_dir"] / "__load__.zeek").exists()
    assert "btest" in package["test_command"]
    assert "zeek >=" in package["depends"]
    assert package["description"].strip() and package["tags"].strip()


def test_btest_packet_expectation_is_the_python_sampler() -> None:
    """The btest's expected packet records are what the pcap path samples now."""
    import base64

    from model.features.pcap import sample_pcap

    tests = PACKAGE / "tests"
    rows = []
    for r in sample_pcap(tests / "Traces" / "irc-basic.pcap").to_pylist():
        values = [r[k] for k in ("id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p")]
        values += ["T" if r["is_orig"] else "F", r["pkt_index"], r["link_type"]]
        values += [r["wire_len"], base64.b64encode(r["frame"]).decode()]
        rows.append("\t".join(map(str, values)))

    expected = (tests / "packets" / "irc-basic.expected").read_text()
    assert "\n".join(sorted(rows)) + "\n" == expected
