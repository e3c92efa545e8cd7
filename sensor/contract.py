"""The logs the parts exchange: one source of truth for names and field types.

Zeek writes the packet log through `zeek_scripts/` and the daemon reads it;
the daemon writes the notice log and `zeek_scripts/` reads it. Both sides,
and the contract test in `tests/test_contract.py`, take names, field types
and sampling defaults from here.
"""

from typing import Final, NamedTuple


class Field(NamedTuple):
    """One column of a Zeek log: its name and its Zeek field type."""

    name: str
    zeek_type: str


# The packet log: one record per sampled payload packet.
PACKET_LOG_PATH: Final = "bflow_packet"
PACKET_LOG_FIELDS: Final = (
    Field("ts", "time"),
    Field("uid", "string"),
    Field("id.orig_h", "addr"),
    Field("id.orig_p", "port"),
    Field("id.resp_h", "addr"),
    Field("id.resp_p", "port"),
    Field("is_orig", "bool"),
    # Index of this packet among the sampled packets of its direction.
    Field("pkt_index", "count"),
    # Link-layer encapsulation of `frame`, e.g. LINK_ETHERNET.
    Field("link_type", "string"),
    # Length of the packet on the wire, before the snap length cut it.
    Field("wire_len", "count"),
    # The captured frame from its link-layer header on, base64.
    Field("frame", "string"),
)

# Sampling defaults shared by the Zeek script and the pcap path: the first
# PACKETS_PER_DIRECTION payload-bearing packets of each direction of each
# connection, cut to SNAP_LEN bytes of frame.
PACKETS_PER_DIRECTION: Final = 3
SNAP_LEN: Final = 512

# The notice log: one record per connection whose score reached the threshold,
# plus control records (kind in NOTICE_CONTROL_KINDS) that the Zeek script
# uses to follow the file across rotations; see zeek_scripts/README.md.
NOTICE_LOG_PATH: Final = "bflow_notice"
NOTICE_LOG_FIELDS: Final = (
    Field("ts", "time"),
    # Stable identity of the notice, so a Zeek restart that re-reads the
    # file raises nothing twice (used as the notice $identifier).
    Field("notice_id", "string"),
    Field("uid", "string"),
    Field("id.orig_h", "addr"),
    Field("id.orig_p", "port"),
    Field("id.resp_h", "addr"),
    Field("id.resp_p", "port"),
    Field("model_version", "string"),
    Field("msg", "string"),
    Field("threshold", "double"),
    Field("score", "double"),
    # "packet" or "flow": which model raised it; one Notice::Type each.
    # Last on purpose: it is never empty, and no kind is a prefix of
    # another, so a line cut short by a full disk can never read as a
    # notice (the script ignores unknown kinds).
    Field("kind", "string"),
)

NOTICE_KINDS: Final = ("packet", "flow")

# Kinds of the notice log's control records. "open" is the first record of
# every file (its notice_id names the file); "rotate" is the last record of
# a file the daemon archived: Zeek reopens the notice log by name.
NOTICE_CONTROL_KINDS: Final = ("open", "rotate")

# Notice log fields that only control records leave unset (`&optional` in
# the script's input record).
NOTICE_LOG_OPTIONAL: Final = frozenset(
    {"uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p"}
)
