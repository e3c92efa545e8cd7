# @TEST-DOC: Notices arrive from the daemon's notice log across a coordinated rotation, and a Zeek restart raises only the new one.
# @TEST-EXEC: cp $FILES/notices/gen1.log bflow_notice.log
# @TEST-EXEC: btest-bg-run zeek1 "zeek $PACKAGE %INPUT BFlowTest::want=3"
# @TEST-EXEC: sh $FILES/notices/wait-for.sh zeek1/notice.log 2
# @TEST-EXEC: sh $FILES/notices/rotate.sh
# @TEST-EXEC: btest-bg-wait 60
# @TEST-EXEC: btest-bg-run zeek2 "zeek $PACKAGE %INPUT BFlowTest::want=1"
# @TEST-EXEC: sleep 3 && cat $FILES/notices/gen2.append >> bflow_notice.log
# @TEST-EXEC: btest-bg-wait 60
# @TEST-EXEC: zeek-cut uid note < zeek1/notice.log > first
# @TEST-EXEC: zeek-cut uid note < zeek2/notice.log > second
# @TEST-EXEC: printf 'CbflowTest00000001\tBFlow::Anomalous_Flow\nCbflowTest00000002\tBFlow::Anomalous_Packet\nCbflowTest00000003\tBFlow::Anomalous_Flow\n' | diff -u - first
# @TEST-EXEC: printf 'CbflowTest00000004\tBFlow::Anomalous_Packet\n' | diff -u - second
# @TEST-EXEC: zeek-cut bflow_score < zeek2/notice.log | awk '{ exit !($1 > 0.989 && $1 < 0.991) }'

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
