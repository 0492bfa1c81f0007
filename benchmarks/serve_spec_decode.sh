#!/bin/bash
# `latlab serve` with and without prompt-lookup speculative decoding, measured over HTTP by
# `latlab bench` (the server without speculation is the anchor, same run, same requests).
#
#   OMP_NUM_THREADS=2 bash benchmarks/serve_spec_decode.sh [MODEL_DIR] [PORT] [OUT_DIR]
#
# Prints the two bench tables and the server's spec-decode counters; writes the bench JSON
# of each run to OUT_DIR (default /tmp). The server binds 127.0.0.1 and is stopped after.
set -euo pipefail
MODEL=${1:-/tmp/latlab-ref106m-bf16}
PORT=${2:-8791}
OUT=${3:-/tmp}
PY=${PY:-.venv/bin}
if [ ! -f "$MODEL/model.safetensors" ]; then
  "$PY/python" -c "from latlab.testing.random_model import REFERENCE_106M, save_random_llama; \
save_random_llama('$MODEL', REFERENCE_106M, dtype='bfloat16')"
fi
for k in 0 4; do
  "$PY/latlab" serve "$MODEL" --host 127.0.0.1 --port "$PORT" --num-speculative-tokens "$k" \
    > "$OUT/serve_spec_$k.log" 2>&1 &
  pid=$!
  trap 'kill $pid 2>/dev/null || true' EXIT
  for _ in $(seq 120); do
    curl -sf "http://127.0.0.1:$PORT/health" > /dev/null && break
    sleep 0.5
  done
  echo "== num_speculative_tokens=$k"
  "$PY/latlab" bench --url "http://127.0.0.1:$PORT" --concurrency 1,4 --num-requests 12 \
    --input-len 96 --output-len 128 --json "$OUT/serve_spec_decode_k$k.json"
  curl -s "http://127.0.0.1:$PORT/metrics" | grep -E '^latlab:spec_decode' || true
  kill "$pid"
  wait "$pid" 2> /dev/null || true
done
