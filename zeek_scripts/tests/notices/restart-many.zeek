# @TEST-DOC: A Zeek restart re-reads a notice log of 120 lines and raises only the line written after it.
# @TEST-EXEC: cp $FILES/notices/many.log bflow_notice.log
# @TEST-EXEC: btest-bg-run zeek1 "zeek $PACKAGE %INPUT BFlowTest::want=120"
# @TEST-EXEC: btest-bg-wait 60
# @TEST-EXEC: btest-bg-run zeek2 "zeek $PACKAGE %INPUT BFlowTest::want=1"
# @TEST-EXEC: sleep 3 && cat $FILES/notices/many.append >> bflow_notice.log
# @TEST-EXEC: btest-bg-wait 60
# @TEST-EXEC: test "$(zeek-cut uid < zeek1/notice.log | sort -u | wc -l)" = 120
# @TEST-EXEC: test "$(zeek-cut uid < zeek2/notice.log)" = CbflowMany00000120

module BFlowTest;

export {
	const want = 0 &redef;
}

redef exit_only_after_terminate = T;
redef BFlow::notice_log = "../bflow_notice.log";
redef BFlow::state_file = "../zeek.state";

global seen = 0;

event Notice::log_notice(rec: Notice::Info)
	{
	++seen;
	if ( seen == want )
		terminate();
	}
