#!/usr/bin/env bash
# bench/fsyncs.sh LIFEBOAT [SECONDS] — fsyncs (and fdatasyncs) per 1000 writes of
# the agent while it replicates a 1 GiB volume to a server on this machine:
# fio 4 KiB randwrite, iodepth 32, for SECONDS (default 15) after a warm-up
# (the whole volume written once, then 5 s of the same load),
# counted with strace on the agent (and by file) (BENCHMARKS.md, "Dirty bitmap syncs").
# Run it with two builds to compare them. Needs strace, fio (nbd engine), python3.
set -euo pipefail
LB=$1; RT=${2:-15}
W=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; sleep 1; rm -rf $W' EXIT
$LB server init --data-dir $W/srv >/dev/null; $LB certs issue --data-dir $W/srv --name b --out $W/c >/dev/null
$LB server --data-dir $W/srv --listen 127.0.0.1:19543 --recovery-nbd "" >$W/s.log 2>&1 &
truncate -s 1G $W/d.img
$LB agent --volume d=$W/d.img --journal-dir $W/j --nbd 127.0.0.1:19509 --server https://127.0.0.1:19543 --cert $W/c/b.crt --key $W/c/b.key --ca $W/c/ca.crt --tag-interval 5s >$W/a.log 2>&1 &
apid=$!
for i in $(seq 100); do $LB volume list --server https://127.0.0.1:19543 --data-dir $W/srv --output json 2>/dev/null | grep -q '"points": [1-9]' && break; sleep 0.3; done
# Warm up: the whole volume written once (the working set of a steady state),
# then 5 s of the measured load.
fio --name=w --ioengine=nbd --uri=nbd://127.0.0.1:19509/d --rw=write --bs=1M --iodepth=4 --size=1G >/dev/null 2>&1
fio --name=w --ioengine=nbd --uri=nbd://127.0.0.1:19509/d --rw=randwrite --bs=4k --iodepth=32 --size=1G --time_based --runtime=5 >/dev/null 2>&1
strace -f -y -tt -e trace=fsync,fdatasync -p $apid -o $W/st.txt 2>/dev/null &
spid=$!; sleep 0.5
fio --name=w --ioengine=nbd --uri=nbd://127.0.0.1:19509/d --rw=randwrite --bs=4k --iodepth=32 --size=1G --time_based --runtime=$RT --output-format=json --output=$W/f.json >/dev/null 2>&1
kill -INT $spid; wait $spid 2>/dev/null || true
writes=$(python3 -c 'import json; j=json.load(open("'$W/f.json'"))["jobs"][0]["write"]; print(j["total_ios"], round(j["iops"]))')
fs=$(grep -cE '(fsync|fdatasync)\(' $W/st.txt || true)
echo "by file:"; grep -oE '(fsync|fdatasync)\([0-9]+<[^>]*>' $W/st.txt | sed -E 's/.*<(.*)>/\1/; s#.*/##; s/^[0-9a-f]+\.hrl$/journal segments (.hrl)/' | sort | uniq -c | sort -rn | head
echo "writes iops: $writes; fsyncs: $fs; per 1000 writes: $(python3 -c "print(round(1000*$fs/${writes%% *},1))")"
