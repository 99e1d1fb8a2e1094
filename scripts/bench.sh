#!/usr/bin/env bash
# bench.sh — the measurements of docs/performance.md in one run (`make bench`).
#
#   1. the runner engine: go test -bench in runner/; list pages with 10,000
#      deployments (BenchmarkListPages in cmd/infer/)
#   2. the whole path (HTTP → activator → JetStream → runner → SSE) with
#      `infer bench` against a temporary `infer dev`: stories260K at 1/4/16
#      streams, cold start, and the ~95M-parameter synthetic model
#      (internal/ggufgen) at 1 and 16 streams; cold starts at zero (one
#      request and a burst of 16) for stories260K, the ~95M and a ~1.16 GB
#      synthetic model (LARGE=0 skips it), with the runner's phases
#   3. Ollama serving the same model to the same client in the same run, when
#      `ollama` is on PATH (skipped otherwise)
#   4. a standalone `infer-activator activator` (own NATS server) idle: VmRSS from /proc,
#      and the runner processes left for idle deployments
#   5. creating deployments (one PUT at a time, and batches) and 10,000 idle
#      deployments on one `infer dev` (BenchmarkIdleProcess in cmd/infer/)
#
# Everything runs on this machine; numbers are only comparable within a run.
# Environment: REPEAT (rounds of the stream benchmarks, median reported; 3),
# REQUESTS (per level; 64), MAX_TOKENS (128), SKIP_ENGINE=1, SKIP_LISTS=1, SKIP_OLLAMA=1,
# SKIP_WARM=1 (only the cold-start rows), LARGE=0, SKIP_SCALE=1 (10,000 idle
# deployments: BenchmarkIdleProcess),
# DATABASE_URL (a scratch database is used by default), INFER (bin/infer).
set -euo pipefail

cd "$(dirname "$0")/.."
INFER=${INFER:-$PWD/bin/infer}
# Activators run the activator-only build (make build writes both).
ACTIVATOR=${ACTIVATOR:-$PWD/bin/infer-activator}
MODEL=${MODEL:-$PWD/../shared/models/stories260K.gguf}
REPEAT=${REPEAT:-3}
REQUESTS=${REQUESTS:-64}
MAX_TOKENS=${MAX_TOKENS:-128}
GO=${GO:-go}

WORK=$(mktemp -d /tmp/infer-bench.XXXXXX)
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$WORK"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
waitfor() { # url seconds
	for _ in $(seq 1 $(($2 * 10))); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.1; done
	echo "bench: $1 did not come up" >&2; return 1
}
median() { sort -n | awk '{a[NR]=$1} END {if (NR==0) print "n/a"; else print a[int((NR+1)/2)]}'; }
spread() { sort -n | awk '{a[NR]=$1} END {if (NR) printf "%s–%s", a[1], a[NR]}'; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
section() { printf '\n## %s\n\n' "$1"; }

# One bench row as "tokens/s ttft_p50 ttft_p99 itl e2e_p50 errors".
bench_json() { # url model concurrency requests max_tokens [extra...]
	local url=$1 model=$2 c=$3 n=$4 t=$5; shift 5
	# --token-count usage: no logprobs asked, so the server does the same
	# work as before TPOT was measured per token, and Ollama is asked
	# nothing it may not support (these rows report ITL, not TPOT).
	"$INFER" bench --url "$url" --model "$model" --concurrency "$c" --requests "$n" --max-tokens "$t" --token-count usage --json "$@" 2>>"$WORK/bench.err"
}
fields='.[-1] | "\(.output_tokens_per_s|floor) \(.ttft_p50_ms*10|round/10) \(.ttft_p99_ms*10|round/10) \(.itl_mean_ms*100|round/100) \(.e2e_p50_ms|round) \(.errors)"'

echo "# make bench — $(date -u '+%Y-%m-%d %H:%M UTC')"
echo
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
echo "CPU flags: $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -xE 'avx|avx2|fma|f16c|avx512f|avx512_bf16|avx_vnni|amx_tile' | tr '\n' ' ')"
echo "cgo: CGO_CFLAGS='${CGO_CFLAGS:-}'  load average: $(cut -d' ' -f1-3 /proc/loadavg)"

# ---------------------------------------------------------------- engine
if [[ "${SKIP_ENGINE:-}" != 1 ]]; then
	section "runner engine (go test -bench ./runner/)"
	echo '| benchmark | tokens/s |'
	echo '| --- | --- |'
	$GO test -run '^$' -bench 'Engine$|RawDecode|Medium' -benchtime 3x -timeout 30m ./runner/ 2>&1 |
		# llama.cpp's log lines can split a result from its benchmark's
		# name, so remember the last name seen.
		awk '/^Benchmark/ { name = $1 } /tokens\/s/ { for (i=1;i<=NF;i++) if ($(i)=="tokens/s") printf "| %s | %.0f |\n", name, $(i-1) }'
fi

# ---------------------------------------------------------------- lists
if [[ "${SKIP_LISTS:-}" != 1 ]]; then
	section "list pages with 10,000 deployments (go test -bench ListPages ./cmd/infer/)"
	echo '| page | ms |'
	echo '| --- | --- |'
	$GO test -run '^$' -bench ListPages -benchtime 20x -timeout 15m ./cmd/infer/ 2>&1 |
		awk '/^BenchmarkListPages\// { for (i=1;i<=NF;i++) if ($(i)=="ns/op") printf "| %s | %.1f |\n", substr($1, 20), $(i-1)/1e6 }'
fi

# ---------------------------------------------------------------- whole path
section "whole path: infer bench against infer dev"
MEDIUM=$($GO run ./scripts/ggufgen 2>/dev/null)
export INFER_HOME=$WORK/home INFER_ADMIN_KEY=bench-admin-key-$RANDOM$RANDOM$RANDOM
export INFER_API_KEY=$INFER_ADMIN_KEY INFER_LOG_LEVEL=warn
# The scratch database outlives this run's blob directory (under $WORK):
# its artifact records point at objects that are gone, which GET
# /v1/artifacts/{sha} checks, so infer deploy uploads them again.
export DATABASE_URL=${DATABASE_URL:-postgres://root@127.0.0.1:5432/infer_bench?sslmode=disable}
DEVPORT=$(port)
export INFER_URL=http://127.0.0.1:$DEVPORT
"$INFER" dev --addr "127.0.0.1:$DEVPORT" --metrics-addr "127.0.0.1:$(port)" >"$WORK/dev.log" 2>&1 &
DEVPID=$!
PIDS+=("$DEVPID")
waitfor "$INFER_URL/healthz" 60
"$INFER" deploy stories --weights "$MODEL" --parallel 16 --idle-timeout 30s >/dev/null
"$INFER" deploy stories-cold --weights "$MODEL" --parallel 16 --idle-timeout 2s >/dev/null
"$INFER" deploy synthetic --weights "$MEDIUM" --parallel 16 --idle-timeout 30s >/dev/null

# Ollama, when installed: its own server on a loopback port, same model.
OLLAMA_URL=
if [[ "${SKIP_OLLAMA:-}" != 1 ]] && command -v ollama >/dev/null; then
	OPORT=$(port)
	OLLAMA_URL=http://127.0.0.1:$OPORT
	mkdir -p "$WORK/ollama"
	OLLAMA_HOST=127.0.0.1:$OPORT OLLAMA_MODELS=$WORK/ollama OLLAMA_NUM_PARALLEL=16 OLLAMA_KEEP_ALIVE=10m \
		ollama serve >"$WORK/ollama.log" 2>&1 &
	PIDS+=($!)
	waitfor "$OLLAMA_URL/api/version" 30
	for th in 1 2; do
		printf 'FROM %s\nTEMPLATE {{ .Prompt }}\nPARAMETER num_thread %s\nPARAMETER num_ctx 512\n' "$MODEL" "$th" >"$WORK/Modelfile.$th"
		OLLAMA_HOST=127.0.0.1:$OPORT ollama create "stories-t$th" -f "$WORK/Modelfile.$th" >/dev/null 2>&1
	done
fi

# Warm up: first runner start and first load, not measured here.
bench_json "$INFER_URL/v1" stories 1 1 16 >/dev/null
bench_json "$INFER_URL/v1" synthetic 1 1 16 >/dev/null

declare -A R # key: "name/concurrency" -> lines of bench fields
run() { # key url model c n t
	local key=$1; shift
	R[$key]+="$(bench_json "$@" | jq -r "$fields")"$'\n'
}
# Ollama's cold load: first request after the server loaded nothing.
OLLAMA_COLD=()
WARM_ROUNDS=$REPEAT
[[ "${SKIP_WARM:-}" == 1 ]] && WARM_ROUNDS=0
for round in $(seq 1 "$WARM_ROUNDS"); do
	echo "round $round/$REPEAT..." >&2
	# The deployments idle out (30 s) while Ollama is measured; start their
	# runners again so that no measured level includes a cold start.
	bench_json "$INFER_URL/v1" stories 1 1 16 >/dev/null
	for c in 1 4 16; do
		run "infer/$c" "$INFER_URL/v1" stories "$c" "$REQUESTS" "$MAX_TOKENS"
	done
	if [[ -n $OLLAMA_URL ]]; then
		for th in 1 2; do
			curl -fsS "$OLLAMA_URL/api/generate" -d "{\"model\":\"stories-t$th\",\"keep_alive\":0}" >/dev/null || true
			sleep 0.5
			OLLAMA_COLD+=("$(bench_json "$OLLAMA_URL/v1" "stories-t$th" 1 1 16 --api-key ollama | jq -r '.[0].ttft_p50_ms|round')")
			run "ollama-t$th/16" "$OLLAMA_URL/v1" "stories-t$th" 16 "$REQUESTS" "$MAX_TOKENS" --api-key ollama
			run "ollama-t$th/1" "$OLLAMA_URL/v1" "stories-t$th" 1 "$((REQUESTS / 4))" "$MAX_TOKENS" --api-key ollama
		done
	fi
	bench_json "$INFER_URL/v1" synthetic 1 1 16 >/dev/null
	run "synthetic/1" "$INFER_URL/v1" synthetic 1 4 64
	run "synthetic/16" "$INFER_URL/v1" synthetic 16 32 64
done

# Cold start: the deployment at zero runners, weights in the host's cache.
COLD=()
for _ in $(seq 1 "$REPEAT"); do
	COLD+=("$("$INFER" bench --model stories-cold --cold --concurrency 1 --requests 1 --max-tokens 16 --json 2>>"$WORK/bench.err" | jq -r '.[0].ttft_p50_ms|round')")
done

# Cold starts by size (issue 16): one request and a burst of 16 at zero,
# each deployment at --parallel 16, weights in the host's cache; the large
# one also from an empty cache. LARGE=0 skips the ~1.16 GB model.
COLDS=()
# With Ollama, each row is followed at once by the same burst against
# Ollama with the model unloaded (keep_alive 0, then /api/ps empty), so the
# two see the same machine; OLLAMA_MODEL[model] names its Ollama copy.
declare -A OLLAMA_MODEL
cold_row() { # label model concurrency
	local j o op50=- op99=- ratio=-
	j=$("$INFER" bench --model "$2" --cold --concurrency "$3" --requests "$3" --max-tokens 16 --json 2>>"$WORK/bench.err") || return 0
	if [[ -n $OLLAMA_URL && -n ${OLLAMA_MODEL[$2]:-} ]]; then
		o=${OLLAMA_MODEL[$2]}
		ollama_unload "$o"
		if j2=$(bench_json "$OLLAMA_URL/v1" "$o" "$3" "$3" 16 --api-key ollama); then
			op50=$(jq -r '.[0].ttft_p50_ms|round' <<<"$j2")
			op99=$(jq -r '.[0].ttft_p99_ms|round' <<<"$j2")
			ratio=$(echo "scale=2; $(jq -r '.[0].ttft_p99_ms' <<<"$j") / $(jq -r '.[0].ttft_p99_ms' <<<"$j2")" | bc)
		fi
	fi
	COLDS+=("$(jq -r --arg l "$1" --arg c "$3" --arg o50 "$op50" --arg o99 "$op99" --arg r "$ratio" '.[0] | "| \($l) | \($c) | \(.ttft_p50_ms|round) | \(.ttft_p99_ms|round) | \($o50) | \($o99) | \($r) | \(.phases_ms.process // 0|round) | \(.phases_ms.fetch // 0|round) | \(.phases_ms.load // 0|round) | \(.phases_ms.ready // 0|round) | \(.phases_ms.first_token // 0|round) | \(.errors) |"' <<<"$j")")
}
# ollama_unload makes Ollama forget a model, as at zero: the next request
# loads it again (its weights stay in the page cache, as infer's do).
ollama_unload() { # model
	curl -fsS "$OLLAMA_URL/api/generate" -d "{\"model\":\"$1\",\"keep_alive\":0}" >/dev/null || true
	for _ in $(seq 1 100); do
		[[ $(curl -fsS "$OLLAMA_URL/api/ps" | jq '.models|length') == 0 ]] && return 0
		sleep 0.1
	done
}
# ollama_model creates an Ollama copy of a GGUF with the same context as
# infer's deployment (NUM_PARALLEL 16 as infer's --parallel 16).
ollama_model() { # infer-name gguf ctx
	[[ -z $OLLAMA_URL ]] && return 0
	printf 'FROM %s\nTEMPLATE {{ .Prompt }}\nPARAMETER num_ctx %s\n' "$2" "$3" >"$WORK/Modelfile.$1"
	OLLAMA_HOST=${OLLAMA_URL#http://} ollama create "o-$1" -f "$WORK/Modelfile.$1" >/dev/null 2>&1 && OLLAMA_MODEL[$1]=o-$1
}
ollama_model stories-cold "$MODEL" 512
ollama_model medium-cold "$MEDIUM" 2048
"$INFER" deploy medium-cold --weights "$MEDIUM" --parallel 16 --idle-timeout 2s >/dev/null
bench_json "$INFER_URL/v1" medium-cold 1 1 16 >/dev/null # fetch into the cache, measure threads
cold_row stories260K stories-cold 1
cold_row stories260K stories-cold 16
cold_row ~95M-F16 medium-cold 1
cold_row ~95M-F16 medium-cold 16
if [[ "${LARGE:-1}" != 0 ]]; then
	LARGEM=$($GO run ./scripts/ggufgen -preset large 2>/dev/null)
	"$INFER" deploy large-cold --weights "$LARGEM" --parallel 16 --idle-timeout 2s >/dev/null
	cold_row "~1.16GB-F16, empty cache" large-cold 1
	ollama_model large-cold "$LARGEM" 2048
	cold_row ~1.16GB-F16 large-cold 1
	cold_row ~1.16GB-F16 large-cold 16
fi

echo "stories260K, $REQUESTS requests per level, $MAX_TOKENS tokens each; synthetic: $(basename "$MEDIUM"), 64 tokens;"
echo "median of $REPEAT rounds (tokens/s range in brackets); same client, same run"
echo
echo '| server | model | streams | tokens/s | (range) | TTFT p50 ms | TTFT p99 ms | ITL ms | e2e p50 ms | errors |'
echo '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |'
row() { # key server model streams
	local lines=${R[$1]:-}
	[[ -z $lines ]] && return
	local col med
	printf '| %s | %s | %s | %s | %s |' "$2" "$3" "$4" \
		"$(cut -d' ' -f1 <<<"$lines" | grep . | median)" "$(cut -d' ' -f1 <<<"$lines" | grep . | spread)"
	for col in 2 3 4 5; do printf ' %s |' "$(cut -d' ' -f$col <<<"$lines" | grep . | median)"; done
	printf ' %s |\n' "$(cut -d' ' -f6 <<<"$lines" | grep . | paste -sd+ | bc)"
}
for c in 1 4 16; do row "infer/$c" infer stories260K "$c"; done
for th in 1 2; do
	row "ollama-t$th/1" "ollama num_thread=$th" stories260K 1
	row "ollama-t$th/16" "ollama num_thread=$th" stories260K 16
done
row synthetic/1 infer synthetic-95M 1
row synthetic/16 infer synthetic-95M 16
[[ -z $OLLAMA_URL ]] && echo && echo "ollama: not on PATH (or SKIP_OLLAMA=1), not compared"

echo
tps() { cut -d' ' -f1 <<<"${R[$1]:-}" | grep . | median; }
echo "cold start to first token, infer (ms): ${COLD[*]}"
if ((${#COLDS[@]})); then
	echo
	echo "cold starts at zero, --parallel 16, 16 tokens (phases of the first runner, ms):"
	echo
	echo '| model | burst | TTFT p50 ms | TTFT p99 ms | ollama p50 ms | ollama p99 ms | p99 infer ÷ ollama | process | fetch | load | ready | first token | errors |'
	echo '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |'
	printf '%s\n' "${COLDS[@]}"
fi
[[ -n $OLLAMA_URL ]] && echo "cold load to first token, ollama (ms, num_thread 1 and 2 alternating): ${OLLAMA_COLD[*]}"
if [[ -n $OLLAMA_URL && "${SKIP_WARM:-}" != 1 ]]; then
	best=$(printf '%s\n' "$(tps ollama-t1/16)" "$(tps ollama-t2/16)" | sort -n | tail -1)
	echo "16 streams, infer ÷ best ollama: $(echo "scale=2; $(tps infer/16) / $best" | bc) (target ≥ 1.5)"
fi
[[ "${SKIP_WARM:-}" != 1 ]] && echo "synthetic, 16 streams ÷ 1 stream: $(echo "scale=2; $(tps synthetic/16) / $(tps synthetic/1)" | bc) (target ≥ 2.5)"

# ---------------------------------------------------------------- idle
section "idle"
# Zero runner processes once the deployments' idle timeouts passed.
IDLE_DEPS=(synthetic stories-cold medium-cold)
[[ "${LARGE:-1}" != 0 ]] && IDLE_DEPS+=(large-cold)
for d in "${IDLE_DEPS[@]}"; do
	for _ in $(seq 1 120); do
		[[ $(curl -fsS -H "Authorization: Bearer $INFER_API_KEY" "$INFER_URL/v1/deployments/$d" | jq '.runners|length') == 0 ]] && break
		sleep 1
	done
done
sleep 1
# What is left are the spare runners of --warm-runners (default 1), which
# wait for a deployment and use no CPU.
echo "runner processes of infer dev with every deployment idle: $(pgrep -c -P "$DEVPID" || true), of which spares (--warm-runners): $(pgrep -c -P "$DEVPID" -f -- '--standby' || true)"
echo "infer dev (activator + control plane + NATS) VmRSS idle: $(( $(rss_kib "$DEVPID") / 1024 )) MiB"
kill "$DEVPID"; wait "$DEVPID" 2>/dev/null || true

# The activator on its own, against its own NATS server, as in production.
NPORT=$(port) APORT=$(port)
nats-server -a 127.0.0.1 -p "$NPORT" -js -sd "$WORK/nats" >"$WORK/nats.log" 2>&1 &
PIDS+=($!)
sleep 0.5
"$ACTIVATOR" activator --nats "nats://127.0.0.1:$NPORT" --addr "127.0.0.1:$APORT" --metrics-addr "127.0.0.1:$(port)" --home "$WORK/ahome" >"$WORK/activator.log" 2>&1 &
APID=$!
PIDS+=("$APID")
waitfor "http://127.0.0.1:$APORT/healthz" 60
for _ in 1 2 3; do curl -fsS -H "Authorization: Bearer $INFER_API_KEY" "http://127.0.0.1:$APORT/v1/models" >/dev/null; done
sleep 5
echo "infer-activator (standalone) VmRSS idle: $(( $(rss_kib "$APID") / 1024 )) MiB (target < 64);" \
	"anonymous $(( $(awk '/^RssAnon/ {print $2}' "/proc/$APID/status") / 1024 )) MiB," \
	"file-backed (the $(( $(stat -c %s "$ACTIVATOR") / 1048576 )) MiB executable) $(( $(awk '/^RssFile/ {print $2}' "/proc/$APID/status") / 1024 )) MiB"

# Creating deployments and what their queues cost NATS (issue 17;
# docs/performance.md "Many deployments").
section "deployments: PUT rate and queue layout (go test -bench ./activator/ ./internal/queue/)"
go test -run '^$' -bench 'BenchmarkPutDeployment(Concurrent|Row)?$' -benchtime 1000x ./activator/
go test -run '^$' -bench 'BenchmarkPutDeploymentsBatch' -benchtime 20x ./activator/
go test -run '^$' -bench 'BenchmarkEnsure$' -benchtime 300x ./internal/queue/
go test -run '^$' -bench 'BenchmarkQueueLayout' -benchtime 1x -timeout 15m ./internal/queue/

# 10,000 idle deployments on one infer dev with its embedded NATS (issue
# 17): idle CPU and memory against one deployment's, cold start against a
# few deployments', creation through PUT /v1/deployments. ~2 minutes.
if [[ "${SKIP_SCALE:-}" != 1 ]]; then
	section "10,000 idle deployments, one infer dev (go test -bench IdleProcess ./cmd/infer/)"
	$GO test -run '^$' -bench IdleProcess -benchtime 1x -timeout 15m ./cmd/infer/ 2>&1 |
		awk '/^BenchmarkIdleProcess/ { print "| measure | value |"; print "| --- | --- |"; for (i=5;i<NF;i+=2) printf "| %s | %s |\n", $(i+1), $(i) } /cold starts/'
	echo "targets: idle CPU < 5% of a core, < 100 MiB added, cold start within 10% of the few-deployments one"
fi
