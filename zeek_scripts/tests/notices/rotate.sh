# What sensor.notice.NoticeWriter does when the notice log is full: archive
# the file under its generation, put the next generation in its place
# atomically, then append the rotate record to the archived file.
set -e
ln bflow_notice.log bflow_notice.000001.log
cp "$FILES/notices/gen2.log" bflow_notice.log.tmp
mv bflow_notice.log.tmp bflow_notice.log
cat "$FILES/notices/gen1.rotate" >> bflow_notice.000001.log
