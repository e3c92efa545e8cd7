##! Raises the bflow daemon's findings as Zeek notices.
##!
##! The daemon appends one line per suspicious connection to its notice log
##! (a Zeek ASCII log, fields in ``sensor/contract.py``). This script reads it
##! with the Input framework's ASCII reader in STREAM mode, on the manager
##! only (or on a standalone Zeek), and calls NOTICE for each line.
##!
##! The reader keeps its file open, so the daemon and this script rotate the
##! file together. Every file is a numbered generation that starts with an
##! ``open`` control record (id ``open-<generation>-<time>``). The daemon
##! archives a full file as ``bflow_notice.<generation>.log`` and appends a
##! ``rotate`` record to it; on that record this script goes on with the next
##! generation: its archived file if that exists already, else
##! :zeek:see:`BFlow::notice_log` by name (and back to the archived file if
##! the ``open`` record shows that the name has moved on further).
##!
##! The reader also reads the whole file again whenever Zeek starts. After
##! each line this script stores the file's ``open`` id and the number of
##! lines handled in :zeek:see:`BFlow::state_file`; after a restart it starts
##! at that file (archived or not), skips that many lines and follows the
##! generations from there. Within one run the notice id is the notice
##! identifier, so a line seen twice is suppressed for
##! :zeek:see:`BFlow::suppress_for`.
##!
##! Known limit: generations the daemon deleted (it keeps ``keep_files``)
##! before Zeek read them are lost; a reporter warning says so.

@load base/frameworks/cluster
@load base/frameworks/input
@load base/frameworks/notice

@load ./main

module BFlow;

export {
	## The daemon's notice log. A relative path is relative to Zeek's working
	## directory; give the daemon's ``notice_dir`` plus ``bflow_notice.log``.
	const notice_log = "/var/lib/bflow/notices/bflow_notice.log" &redef;

	## Where this Zeek keeps its position in the notice log across restarts;
	## empty to keep none (a restart then raises every old line again).
	const state_file = "bflow_notice.state" &redef;

	## How long a notice id stays suppressed after its notice.
	const suppress_for = 1day &redef;

	## Endpoints of a notice log line; unset only in control records.
	type NoticeLineId: record {
		orig_h: addr &optional;
		orig_p: port &optional;
		resp_h: addr &optional;
		resp_p: port &optional;
	};

	## One line of the notice log as the daemon writes it.
	type NoticeLine: record {
		## When the daemon's finding was made (the scored record's time).
		ts: time;
		## Stable identity of the notice (kind, uid and model version).
		notice_id: string;
		## The connection's uid, as in conn.log.
		uid: string &optional;
		## The connection's endpoints.
		id: NoticeLineId;
		## Version of the model that scored it.
		model_version: string;
		## The daemon's sentence about it.
		msg: string;
		## The model's calibrated threshold.
		threshold: double;
		## The score; higher is more anomalous.
		score: double;
		## ``packet`` or ``flow``; ``open`` and ``rotate`` mark control records.
		kind: string;
	};

	## The position kept in :zeek:see:`BFlow::state_file`.
	type StateLine: record {
		## The ``open`` record id of the file being read.
		file_id: string;
		## Lines of that file already handled.
		lines: count;
	};

	## Raised by the Input framework for each notice log line.
	global notice_line: event(desc: Input::EventDescription, tpe: Input::Event,
	    r: NoticeLine);

	## Raised by the Input framework for the line of the state file.
	global state_line: event(desc: Input::EventDescription, tpe: Input::Event,
	    r: StateLine);
}

redef record Notice::Info += {
	## Score of a bflow finding; higher is more anomalous.
	bflow_score: double &log &optional;
};

const state_stream = "bflow_notice_state";

global resume_file_id = "";
global resume_lines = 0;
global current_file_id = "";
global current_lines = 0;
global skip_lines = 0;
global expected_generation = 0;
global stream_number = 0;
global started = F;

## The generation number in a control record id (``open-3-<time>``).
function generation_of(control_id: string): count
	{
	local parts = split_string(control_id, /-/);
	if ( |parts| < 2 || parts[1] != /[0-9]+/ )
		return 0;

	return to_count(parts[1]);
	}

## Where the daemon archives the file of a generation.
function archived_path(generation: count): string
	{
	return fmt("%s.%06d.log", sub(notice_log, /\.log$/, ""), generation);
	}

function save_state()
	{
	if ( state_file == "" )
		return;

	local tmp = state_file + ".tmp";
	local f = open(tmp);
	write_file(f, fmt("#fields\tfile_id\tlines\n%s\t%d\n", current_file_id,
	    current_lines));
	close(f);
	if ( ! rename(tmp, state_file) )
		Reporter::warning(fmt("bflow: cannot replace %s with %s", state_file, tmp));
	}

function start_notice_input(path: string)
	{
	started = T;
	++stream_number;
	current_file_id = "";
	current_lines = 0;
	skip_lines = 0;
	Input::add_event([$source=path, $reader=Input::READER_ASCII,
	    $mode=Input::STREAM, $name=fmt("bflow_notice_%d", stream_number),
	    $fields=NoticeLine, $want_record=T, $ev=notice_line]);
	}

event start_fallback()
	{
	if ( started )
		return;

	Reporter::warning(fmt("bflow: %s could not be read; reading %s from its start",
	    state_file, notice_log));
	start_notice_input(notice_log);
	}

event zeek_init()
	{
	if ( Cluster::is_enabled() && Cluster::local_node_type() != Cluster::MANAGER )
		return;

	if ( state_file == "" || file_size(state_file) < 0.0 )
		{
		start_notice_input(notice_log);
		return;
		}

	Input::add_event([$source=state_file, $reader=Input::READER_ASCII,
	    $mode=Input::MANUAL, $name=state_stream, $fields=StateLine,
	    $want_record=T, $ev=state_line]);
	schedule 1min { start_fallback() };
	}

event state_line(desc: Input::EventDescription, tpe: Input::Event, r: StateLine)
	{
	resume_file_id = r$file_id;
	resume_lines = r$lines;
	}

event Input::end_of_data(name: string, source: string)
	{
	if ( name != state_stream || started )
		return;

	Input::remove(state_stream);
	expected_generation = generation_of(resume_file_id);
	local resume_path = archived_path(expected_generation);
	if ( expected_generation > 0 && file_size(resume_path) >= 0.0 )
		start_notice_input(resume_path);
	else
		start_notice_input(notice_log);
	}

function raise_notice(r: NoticeLine)
	{
	if ( ! r?$uid
	    || ! r$id?$orig_h
	    || ! r$id?$orig_p
	    || ! r$id?$resp_h
	    || ! r$id?$resp_p )
		{
		Reporter::warning(fmt("bflow: notice %s has no connection; ignored",
		    r$notice_id));
		return;
		}

	local note = r$kind == "packet" ? Anomalous_Packet : Anomalous_Flow;
	local what = r$kind == "packet" ? "first payload packets" : "conn.log record";
	local id = conn_id($orig_h=r$id$orig_h, $orig_p=r$id$orig_p,
	    $resp_h=r$id$resp_h, $resp_p=r$id$resp_p);
	local msg = fmt("The bflow %s model scored the %s of connection %s ", r$kind,
	    what, r$uid);
	msg += fmt("from %s port %s to %s port %s at %.4f, ", id$orig_h, id$orig_p,
	    id$resp_h, id$resp_p, r$score);
	msg += fmt("at or above its threshold of %.4f.", r$threshold);
	local detail = fmt("score=%.6f threshold=%.6f model=%s", r$score, r$threshold,
	    r$model_version);

	NOTICE([$note=note, $uid=r$uid, $id=id, $msg=msg, $sub=detail,
	    $identifier=r$notice_id, $suppress_for=suppress_for,
	    $bflow_score=r$score]);
	}

event notice_line(desc: Input::EventDescription, tpe: Input::Event,
    r: NoticeLine)
	{
	++current_lines;

	if ( r$kind == "rotate" )
		{
		expected_generation = generation_of(r$notice_id) + 1;
		local following = archived_path(expected_generation);
		Input::remove(desc$name);
		start_notice_input(file_size(following) >= 0.0 ? following : notice_log);
		return;
		}

	if ( r$kind == "open" )
		{
		local generation = generation_of(r$notice_id);
		if ( expected_generation > 0 && generation > expected_generation )
			{
			# The name moved on before we opened it: the generation we
			# need was archived meanwhile.
			local wanted = archived_path(expected_generation);
			if ( file_size(wanted) >= 0.0 )
				{
				Input::remove(desc$name);
				start_notice_input(wanted);
				return;
				}

			Reporter::warning(fmt("bflow: notice log generation %d was deleted before Zeek read it",
			    expected_generation));
			}

		expected_generation = generation;
		current_file_id = r$notice_id;
		skip_lines = current_file_id == resume_file_id ? resume_lines : 0;
		}
	else if ( current_lines <= skip_lines )
		return;
	else if ( r$kind == "packet" || r$kind == "flow" )
		raise_notice(r);
	else
		# A line cut short by a full disk ends in a partial kind.
		Reporter::warning(fmt("bflow: ignored notice log line %s with kind '%s'",
		    r$notice_id, r$kind));

	# Saving inside the skipped lines would lose the resume position.
	if ( current_lines > skip_lines )
		save_state();
	}
