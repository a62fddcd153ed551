#!/usr/bin/env bash
# The disk-tier row on a CPU-only machine: pipeswap's achieved read rate against the raw O_DIRECT
# bandwidth of the same disk (bench/disk_bw.sh), both measured in this run. The model is a generated
# Llama-layout checkpoint (fp32, wide MLPs, random weights, no Python packages needed) read with one
# token of input, so compute is negligible next to the reads; every block swaps and --max-memory
# holds only the staging buffers, so every pass streams every block from disk.
#   bench/disk_tier_cpu.sh [EXE [READ_BW]]   # default build/pipeswap, build/bench/disk_read_bw
# READ_BW (bench/disk_read_bw.cpp) then measures the reader alone against raw reads of the same
# file, interleaved step by step; it is skipped when that program is missing.
# Environment: DIR (checkpoint folder, default /tmp/pipeswap-disk-tier; kept for re-runs, delete it
# after), LAYERS (14), HIDDEN (1024), FFN (16384), WORKERS (1,2,4), REPEAT (4 passes, median of the
# 3 warm ones), GRANULARITY (block), THREADS (compute threads, 0: pipeswap's default), TRACE (a
# folder: one --trace file per worker count, and the disk lane's own rate in the JSON), LABEL (a
# "label" field in the JSON, e.g. which build ran).
# Prints one JSON line per measurement; the last line per worker count has "fraction_of_raw".
# Run as root to drop the page cache between runs (buffered fallback reads would be cached otherwise).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
exe=${1:-$root/build/pipeswap}
read_bw=${2:-$root/build/bench/disk_read_bw}
dir=${DIR:-/tmp/pipeswap-disk-tier}
layers=${LAYERS:-14}
hidden=${HIDDEN:-1024}
ffn=${FFN:-16384}
workers=${WORKERS:-1,2,4}
repeat=${REPEAT:-4}
granularity=${GRANULARITY:-block}
threads=${THREADS:-0}
trace=${TRACE:-}
label=${LABEL:-}

# The checkpoint: HF Llama names and shapes, float32 values of magnitude ~0.01 (random mantissas,
# fixed exponent), written once and reused while config.json matches.
python3 - "$dir" "$layers" "$hidden" "$ffn" <<'PY'
import json, os, struct, sys
out, layers, hidden, ffn = sys.argv[1], *map(int, sys.argv[2:])
heads, vocab = max(1, hidden // 128), 256
cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
       "intermediate_size": ffn, "num_hidden_layers": layers, "num_attention_heads": heads,
       "num_key_value_heads": heads, "vocab_size": vocab, "max_position_embeddings": 2048,
       "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False, "hidden_act": "silu",
       "torch_dtype": "float32"}
cfg_path = os.path.join(out, "config.json")
st_path = os.path.join(out, "model.safetensors")
if os.path.exists(cfg_path) and os.path.exists(st_path) and json.load(open(cfg_path)) == cfg:
    sys.exit(0)
os.makedirs(out, exist_ok=True)
shapes = [("model.embed_tokens.weight", [vocab, hidden])]
for l in range(layers):
    p = f"model.layers.{l}."
    shapes += [(p + "input_layernorm.weight", [hidden]), (p + "self_attn.q_proj.weight", [hidden, hidden]),
               (p + "self_attn.k_proj.weight", [hidden, hidden]), (p + "self_attn.v_proj.weight", [hidden, hidden]),
               (p + "self_attn.o_proj.weight", [hidden, hidden]), (p + "post_attention_layernorm.weight", [hidden]),
               (p + "mlp.gate_proj.weight", [ffn, hidden]), (p + "mlp.up_proj.weight", [ffn, hidden]),
               (p + "mlp.down_proj.weight", [hidden, ffn])]
shapes += [("model.norm.weight", [hidden]), ("lm_head.weight", [vocab, hidden])]
header, off = {"__metadata__": {"format": "pt"}}, 0
for name, shape in shapes:
    n = 4
    for d in shape:
        n *= d
    header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [off, off + n]}
    off += n
text = json.dumps(header, separators=(",", ":")).encode()
text += b" " * ((8 - len(text) % 8) % 8)
# Exponent byte of a little-endian float32: 0x3c / 0xbc give +-[0.0078, 0.031).
sign = bytes(0x3C if b < 128 else 0xBC for b in range(256))
tmp = st_path + ".tmp"
with open(tmp, "wb") as f:
    f.write(struct.pack("<Q", len(text)) + text)
    chunk = 64 << 20
    left = off
    while left:
        buf = bytearray(os.urandom(min(chunk, left)))
        buf[3::4] = bytes(buf[3::4]).translate(sign)
        f.write(buf)
        left -= len(buf)
    f.flush()
    os.fsync(f.fileno())
os.rename(tmp, st_path)
json.dump(cfg, open(cfg_path, "w"))
print(json.dumps({"generated": st_path, "bytes": os.path.getsize(st_path)}))
PY
file=$dir/model.safetensors
echo '[[1]]' > "$dir/input.json"

drop_caches() { sync; if [ -w /proc/sys/vm/drop_caches ]; then echo 3 > /proc/sys/vm/drop_caches; fi; }

# Bytes one swapped block occupies in a host slab (tensor bytes rounded up to 256 per tensor and
# per phase, as offload/src/slab.cpp lays them out): staging buffers are this big.
block_slab=$(python3 -c "
h, f = $hidden, $ffn
up = lambda v: (v + 255) // 256 * 256
attn = up(sum(up(4 * n) for n in [h, h * h, h * h, h * h, h * h]))
mlp = up(sum(up(4 * n) for n in [h, f * h, f * h, h * f]))
print(attn + mlp if '$granularity' == 'block' else mlp)")

IFS=, read -ra counts <<< "$workers"
for w in "${counts[@]}"; do
  # The raw figures are taken right before and right after pipeswap's run and averaged: a virtual
  # disk drifts by 10-20% from minute to minute.
  drop_caches
  raw_before=$(bash "$root/bench/disk_bw.sh" "$file" "$w")
  echo "$raw_before"
  # Staging buffers only (max(2, workers + 1) of the largest unit) plus less than one more unit, so
  # no unit is kept across passes: every pass reads every block.
  buffers=$((w + 1 > 2 ? w + 1 : 2))
  budget=$((buffers * block_slab + block_slab / 2))
  drop_caches
  log=$(mktemp)
  trace_arg=()
  if [ -n "$trace" ]; then
    mkdir -p "$trace"
    trace_arg=(--trace "$trace/disk_tier_w$w.json")
  fi
  "$exe" run --model "$dir" --input "$dir/input.json" --device-chain cpu --offload-ratio 1 --lazy-load \
    --max-memory "$budget" --num-disk-workers "$w" --offload-granularity "$granularity" --repeat "$repeat" \
    --threads "$threads" --output "$dir/logits.safetensors" "${trace_arg[@]}" > "$log" 2>&1 || { cat "$log"; exit 1; }
  drop_caches
  raw_after=$(bash "$root/bench/disk_bw.sh" "$file" "$w")
  echo "$raw_after"
  python3 - "$log" "$w" "$repeat" "$budget" "$file" "$raw_before" "$raw_after" "${trace_arg[1]:-}" "$label" <<'PY'
import json, os, re, struct, sys
log, w, repeat, budget, file = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
before, after = json.loads(sys.argv[6]), json.loads(sys.argv[7])
trace, label = sys.argv[8], sys.argv[9]
raw = {k: round((before[k] + after[k]) / 2, 3) for k in ("one_stream_gbs", "many_streams_gbs")}
raw["streams"] = before["streams"]
size = os.path.getsize(file)
text = open(log).read()
units = {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}
m = re.search(r"read from disk during the run ([0-9.]+) ?([KMGT]?i?B)", text)
disk = float(m.group(1)) * units[m.group(2)]
passes = [float(s) for s in re.findall(r"forward pass \d+/\d+:? ([0-9.]+) s", text)]
warm = sorted(passes[1:]) or passes
median = warm[len(warm) // 2] if len(warm) % 2 else (warm[len(warm) // 2 - 1] + warm[len(warm) // 2]) / 2
# The log rounds to 0.1 of its unit: the exact figure per pass is every block tensor's bytes (every
# block streams each pass), which must agree with the log's count.
with open(file, "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    header = json.loads(f.read(n))
per_pass = sum(v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items() if k.startswith("model.layers."))
if abs(per_pass * len(passes) - disk) > 0.06 * disk:
    sys.exit(f"disk_tier_cpu: the run read {disk:.4g} bytes, not {len(passes)} x {per_pass} (were blocks kept?)")
gbs = per_pass / median / 1e9
extra = {}
if trace:
    # The disk lane alone: block bytes over the time at least one read was in progress (a reader
    # that keeps up shows the disk's rate here even where compute or the slot copies bound a pass).
    ev = [e for e in json.load(open(trace))["traceEvents"] if e.get("cat") == "disk" and e.get("ph") == "X"]
    spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in ev)
    busy, end = 0.0, -1.0
    for b, e in spans:
        if e > end:
            busy += e - max(b, end)
            end = e
    extra = {"disk_lane_busy_s": round(busy / 1e6, 3),
             "disk_lane_gbs": round(sum(e["args"]["bytes"] for e in ev) / (busy / 1e6) / 1e9, 3)}
ref = raw["one_stream_gbs"] if w == 1 else raw["many_streams_gbs"]
print(json.dumps({"bench": "disk_tier_cpu", "label": label, "workers": w, "file_bytes": size, "max_memory": budget,
                  "disk_bytes_read_log": int(disk), "bytes_per_pass": int(per_pass), "passes_s": passes,
                  "median_warm_pass_s": median, "pipeswap_read_gbs": round(gbs, 3),
                  "raw_one_stream_gbs": raw["one_stream_gbs"], "raw_streams": raw["streams"],
                  "raw_many_streams_gbs": raw["many_streams_gbs"], "raw_same_streams_gbs": ref,
                  "fraction_of_raw": round(gbs / ref, 3), "load_average": os.getloadavg()[0], **extra}))
PY
  rm -f "$log"
  if [ -x "$read_bw" ]; then
    "$read_bw" "$file" --workers "$w" --rounds 2 | python3 -c "
import json, sys
r = json.load(sys.stdin)
print(json.dumps({'label': '$label', **r}))"
  fi
done
