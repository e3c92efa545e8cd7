# @TEST-DOC: Frames are cut to BFlow::snap_len bytes and at most BFlow::packets_per_direction packets per direction are logged.
# @TEST-EXEC: zeek -r $TRACES/irc-basic.pcap $PACKAGE %INPUT
# @TEST-EXEC: test "$(zeek-cut frame < bflow_packet.log | while read f; do printf '%s' "$f" | base64 -d | wc -c; done | sort -un | tail -1)" -le 64
# @TEST-EXEC: test "$(zeek-cut uid is_orig < bflow_packet.log | sort | uniq -c | awk '{print $1}' | sort -u)" = 1

redef BFlow::snap_len = 64;
redef BFlow::packets_per_direction = 1;
redef BFlow::notice_log = "no-notice-log-in-this-test.log";
redef BFlow::state_file = "";
