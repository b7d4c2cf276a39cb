-- No requests of its own: wrk sends GET for the URL it is given, built once.
-- Only a JSON summary when wrk is done, with the mean latency as well.
-- wrk -s summary.lua http://ADDR/PATH

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"socket_errors":%d,"http_errors":%d,' ..
    '"mean_us":%.1f,"p50_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency.mean, latency:percentile(50), latency:percentile(99), latency.max))
end
