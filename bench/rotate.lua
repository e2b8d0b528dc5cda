-- wrk script: every request carries the next user's bearer token, and every response that is
-- not a success is counted (a fast error is not throughput).
--   wrk ... -s bench/rotate.lua URL -- TOKENS_FILE METHOD PATH [BODY] [CHECK_GRAPHQL_ERRORS]
-- TOKENS_FILE holds one token per line. BODY (JSON) is sent with Content-Type: application/json.
-- With CHECK_GRAPHQL_ERRORS = 1, a 2xx body containing "errors" counts as a GraphQL error.
-- done() prints one line, "BENCH_JSON {...}", which bench/wrk.py parses.

local threads = {}

function setup(thread)
  thread:set("thread_number", #threads)
  table.insert(threads, thread)
end

function init(args)
  local tokens_file, method, path, body = args[1], args[2], args[3], args[4]
  check_graphql = args[5] == "1"
  prepared = {}
  for token in io.lines(tokens_file) do
    local headers = { ["Authorization"] = "Bearer " .. token }
    local request_body = nil
    if body ~= nil and body ~= "" then
      headers["Content-Type"] = "application/json"
      request_body = body
    end
    prepared[#prepared + 1] = wrk.format(method, path, headers, request_body)
  end
  -- Threads start at different users so that they do not march in step.
  next_index = (thread_number or 0) * 97 % #prepared
  non2xx = 0
  graphql_errors = 0
  statuses = {}
end

function request()
  next_index = next_index % #prepared + 1
  return prepared[next_index]
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
    statuses[tostring(status)] = (statuses[tostring(status)] or 0) + 1
  elseif check_graphql and body ~= nil and string.find(body, '"errors"', 1, true) then
    graphql_errors = graphql_errors + 1
  end
end

function done(summary, latency, requests)
  local total_non2xx, total_graphql_errors, by_status = 0, 0, {}
  for _, thread in ipairs(threads) do
    total_non2xx = total_non2xx + thread:get("non2xx")
    total_graphql_errors = total_graphql_errors + thread:get("graphql_errors")
    for status, count in pairs(thread:get("statuses")) do
      by_status[status] = (by_status[status] or 0) + count
    end
  end
  local status_parts = {}
  for status, count in pairs(by_status) do
    status_parts[#status_parts + 1] = string.format('"%s": %d', status, count)
  end
  local percentiles = {}
  for _, p in ipairs({ 50, 75, 90, 99, 99.9 }) do
    percentiles[#percentiles + 1] = string.format('"%s": %d', tostring(p), latency:percentile(p))
  end
  io.write(string.format(
    'BENCH_JSON {"duration_us": %d, "requests": %d, "bytes": %d, "non2xx": %d, "graphql_errors": %d, ' ..
    '"statuses": {%s}, "errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"min": %d, "mean": %.1f, "max": %d, "stdev": %.1f, "percentiles": {%s}}}\n',
    summary.duration, summary.requests, summary.bytes, total_non2xx, total_graphql_errors,
    table.concat(status_parts, ", "),
    summary.errors.connect, summary.errors.read, summary.errors.write, summary.errors.status,
    summary.errors.timeout,
    latency.min, latency.mean, latency.max, latency.stdev, table.concat(percentiles, ", ")))
end
