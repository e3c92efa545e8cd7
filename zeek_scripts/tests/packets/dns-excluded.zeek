# @TEST-DOC: DNS (port 53) packets are never sampled, so no packet log is written.
# @TEST-EXEC: zeek -r $TRACES/dns53.pcap $PACKAGE %INPUT
# @TEST-EXEC: test -e conn.log
# @TEST-EXEC: test ! -e bflow_packet.log

redef BFlow::notice_log = "no-notice-log-in-this-test.log";
redef BFlow::state_file = "";
