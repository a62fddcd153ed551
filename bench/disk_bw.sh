#!/usr/bin/env bash
# Raw read bandwidth of the disk holding FILE, bypassing the page cache (O_DIRECT, 16 MiB requests,
# as pipeswap's lazy loader reads): one stream over the whole file, then STREAMS streams at once over
# its quarters. Prints one JSON object. The disk-tier row compares pipeswap's achieved read rate with
# these figures, taken in the same run.
#   bench/disk_bw.sh FILE [STREAMS]
set -euo pipefail
file=$1
streams=${2:-4}
size=$(stat -c %s "$file")
bs=$((16 << 20))
blocks=$((size / bs))
[ "$blocks" -ge "$streams" ] || { echo "{\"error\": \"$file is smaller than $streams x 16 MiB\"}"; exit 1; }
now() { date +%s.%N; }
t0=$(now)
dd if="$file" of=/dev/null bs=$bs count=$blocks iflag=direct status=none
t1=$(now)
per=$((blocks / streams))
pids=()
for ((i = 0; i < streams; i++)); do
  dd if="$file" of=/dev/null bs=$bs skip=$((i * per)) count=$per iflag=direct status=none &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
t2=$(now)
python3 - "$file" "$size" "$blocks" "$bs" "$per" "$streams" "$t0" "$t1" "$t2" <<'PY'
import json, sys
f, size, blocks, bs, per, streams, t0, t1, t2 = sys.argv[1:]
one = int(blocks) * int(bs)
many = int(per) * int(streams) * int(bs)
print(json.dumps({"bench": "disk_bw", "file": f, "request_bytes": int(bs),
                  "one_stream_gbs": round(one / (float(t1) - float(t0)) / 1e9, 3),
                  "streams": int(streams),
                  "many_streams_gbs": round(many / (float(t2) - float(t1)) / 1e9, 3)}))
PY
