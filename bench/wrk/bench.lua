-- wrk script of the gateway benchmark.
-- BENCH_METHOD (default GET) and BENCH_BODY_BYTES (default 0) shape the request; done() prints
-- one line "BENCHJSON {...}" with the counts and latency percentiles the harness reads.

local method = os.getenv("BENCH_METHOD") or "GET"
local body_bytes = tonumber(os.getenv("BENCH_BODY_BYTES") or "0")

wrk.method = method
if body_bytes > 0 then
  wrk.body = string.rep("x", body_bytes)
  wrk.headers["Content-Type"] = "application/octet-stream"
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"connect_errors":%d,"read_errors":%d,"write_errors":%d,"status_errors":%d,"timeouts":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
