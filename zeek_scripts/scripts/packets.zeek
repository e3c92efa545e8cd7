##! Packet sampling for the bflow anomaly detector.
##!
##! Writes ``bflow_packet.log``: the first :zeek:see:`BFlow::packets_per_direction`
##! payload-bearing packets of each direction of every connection, each frame
##! cut to :zeek:see:`BFlow::snap_len` bytes and base64-encoded, for the bflow
##! daemon's packet model.
##!
##! Which packets are sampled is one rule shared with the Python pcap path
##! (written down in the bflow repository, ``model/features/packet.py``): TCP
##! or UDP with at least one byte of transport payload, neither port in
##! :zeek:see:`BFlow::excluded_ports` (DNS). The defaults here equal
##! ``sensor/contract.py``; a model must be trained with the same values.
##!
##! Known limits: for a tunnelled connection (Teredo, GRE, VXLAN...) the frame
##! is the outer packet; for a fragmented IP packet it is the fragment that
##! completed it (the Python path keeps the first fragment instead).

@load ./main

module BFlow;

export {
	## The packet log stream.
	redef enum Log::ID += { PACKET_LOG };

	## Payload-bearing packets logged per direction of each connection.
	## Changing it needs a model trained with the same value.
	const packets_per_direction: count = 3 &redef;

	## Bytes of each frame kept, from the link-layer header on.
	## Changing it needs a model trained with the same value.
	const snap_len: count = 512 &redef;

	## Transport ports (either side) whose packets are never sampled.
	const excluded_ports: set[count] = {53} &redef;

	## One sampled packet of ``bflow_packet.log``.
	type PacketInfo: record {
		## Time the packet was seen.
		ts: time &log;
		## The connection's uid, as in conn.log.
		uid: string &log;
		## The connection's endpoints.
		id: conn_id &log;
		## Whether the originator sent the packet.
		is_orig: bool &log;
		## Index of the packet among the sampled packets of its direction,
		## from 0.
		pkt_index: count &log;
		## Link-layer encapsulation of *frame*, e.g. ``LINK_ETHERNET``.
		link_type: string &log;
		## Length of the packet on the wire, before any cut.
		wire_len: count &log;
		## The captured frame from its link-layer header on, cut to
		## :zeek:see:`BFlow::snap_len` bytes, base64.
		frame: string &log;
	};

	## Raised for every record written to ``bflow_packet.log``.
	global log_packet: event(rec: PacketInfo);
}

redef record connection += {
	## Payload packets sampled so far, by direction (originator first).
	bflow_sampled: vector of count &optional;
};

event zeek_init() &priority=5
	{
	Log::create_stream(BFlow::PACKET_LOG, [$columns=PacketInfo, $ev=log_packet,
	    $path="bflow_packet"]);
	}

function sample_packet(c: connection, is_orig: bool, payload_len: count)
	{
	if ( payload_len == 0 )
		return;

	if ( port_to_count(c$id$orig_p) in excluded_ports
	    || port_to_count(c$id$resp_p) in excluded_ports )
		return;

	if ( ! c?$bflow_sampled )
		c$bflow_sampled = vector(0, 0);

	local side = is_orig ? 0 : 1;
	local index = c$bflow_sampled[side];
	if ( index >= packets_per_direction )
		return;

	c$bflow_sampled[side] = index + 1;

	# get_current_packet()$link_type reads LINK_UNKNOWN even for Ethernet;
	# the packet header's layer 2 record has the real encapsulation.
	local pkt = get_current_packet();
	local hdr = get_current_packet_header();
	local frame = pkt$data;
	if ( |frame| > snap_len )
		frame = frame[:snap_len];

	Log::write(BFlow::PACKET_LOG, PacketInfo($ts=network_time(), $uid=c$uid,
	    $id=c$id, $is_orig=is_orig, $pkt_index=index, $link_type=fmt("%s",
	    hdr$l2$encap), $wire_len=pkt$len, $frame=encode_base64(frame)));
	}

function sample_udp(c: connection, is_orig: bool)
	{
	local hdr = get_current_packet_header();
	if ( ! hdr?$udp )
		return;

	# The UDP length field counts its 8-byte header.
	local ulen = hdr$udp$ulen;
	sample_packet(c, is_orig, ulen > 8 ? ulen - 8 : 0);
	}

event tcp_packet(c: connection, is_orig: bool, flags: string, seq: count,
    ack: count, len: count, payload: string)
	{
	sample_packet(c, is_orig, len);
	}

event udp_request(u: connection)
	{
	sample_udp(u, T);
	}

event udp_reply(u: connection)
	{
	sample_udp(u, F);
	}
