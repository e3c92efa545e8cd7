# Wait (up to 30 s) until Zeek log $1 holds at least $2 records.
for i in $(seq 60); do
	if [ -e "$1" ] && [ "$(grep -vc '^#' "$1")" -ge "$2" ]; then
		exit 0
	fi
	sleep 0.5
done
echo "timed out waiting for $2 records in $1" >&2
exit 1
