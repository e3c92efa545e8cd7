##! The bflow anomaly detector for Zeek: what every part of the package shares.
##!
##! A daemon beside Zeek scores connections (conn.log) and their first payload
##! packets (``bflow_packet.log``, written by ``packets.zeek``) with models
##! trained on the site's own normal traffic; ``notices.zeek`` raises its
##! findings as notices of the types below.

@load base/frameworks/notice

module BFlow;

export {
	## Findings of the bflow daemon, one type per model.
	redef enum Notice::Type += {
		## The first payload packets of a connection scored at or above the
		## packet model's threshold.
		Anomalous_Packet,
		## A connection's conn.log record scored at or above the flow model's
		## threshold.
		Anomalous_Flow,
	};
}
