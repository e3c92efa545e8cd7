# @TEST-DOC: The packet log of irc-basic.pcap holds exactly the records the Python pcap path samples (model.features.pcap), apart from uid and ts.
# @TEST-EXEC: zeek -r $TRACES/irc-basic.pcap $PACKAGE %INPUT
# @TEST-EXEC: zeek-cut id.orig_h id.orig_p id.resp_h id.resp_p is_orig pkt_index link_type wire_len frame < bflow_packet.log | sort > got
# @TEST-EXEC: diff -u $FILES/packets/irc-basic.expected got
# @TEST-EXEC: test "$(zeek-cut uid < bflow_packet.log | sort -u | wc -l)" = 1

redef BFlow::notice_log = "no-notice-log-in-this-test.log";
redef BFlow::state_file = "";
