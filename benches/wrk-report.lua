-- wrk script for the sidecar benchmarks: prints one machine-readable RESULT line per run.
-- WRK_DELAY_MS > 0 makes each connection pause that long between requests, which turns wrk's
-- closed loop into a steady, moderate rate (connections × 1000 / delay per second), so that
-- latency is measured without queueing in the load generator or the servers.
local delay_ms = tonumber(os.getenv("WRK_DELAY_MS") or "0")
if delay_ms > 0 then
    function delay()
        return delay_ms
    end
end

function done(summary, latency, requests)
    local e = summary.errors
    io.write(string.format(
        "RESULT requests=%d duration_us=%d errors=%d p50_us=%.1f p90_us=%.1f p99_us=%.1f\n",
        summary.requests, summary.duration, e.connect + e.read + e.write + e.status + e.timeout,
        latency:percentile(50), latency:percentile(90), latency:percentile(99)))
end
