-- wrk's script for scripts/bench_serve.py (wrk --script bench_serve_wrk.lua URL -- REQUESTS_DIR LIMIT).
-- Cycles through the requests the benchmark wrote to REQUESTS_DIR (index.tsv: METHOD, PATH, CONTENT-TYPE and the
-- body's file, tab-separated, one request a line), counts the answers by status, and after LIMIT answers stops and
-- prints "LIMIT REACHED" (wrk itself would sleep out --duration: the benchmark interrupts it on that line). At the
-- end it prints one line "WRK_RESULT {json}": elapsed seconds, answers by status, connection errors and latency
-- percentiles in ms. Run with --threads 1: the limit is counted per thread.

local requests, next_request, answered, limit = {}, 0, 0, math.huge
statuses = {}  -- global: done() reads it from each thread with thread:get
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  local dir = args[1]
  limit = tonumber(args[2])
  for line in io.lines(dir .. "/index.tsv") do
    local method, path, content_type, file = line:match("^([^\t]+)\t([^\t]+)\t([^\t]+)\t([^\t]+)$")
    local f = assert(io.open(dir .. "/" .. file, "rb"))
    table.insert(requests, wrk.format(method, path, {["Content-Type"] = content_type}, f:read("*a")))
    f:close()
  end
end

function request()
  next_request = next_request % #requests + 1
  return requests[next_request]
end

function response(status)
  if answered == limit then
    return  -- answers of the other connections read in the same pass of wrk's event loop as the last one: not counted
  end
  statuses[status] = (statuses[status] or 0) + 1
  answered = answered + 1
  if answered == limit then
    io.write("LIMIT REACHED\n")
    io.stdout:flush()
    wrk.thread:stop()
  end
end

function done(summary, latency)
  local counts, parts = {}, {}
  for _, thread in ipairs(threads) do
    for code, n in pairs(thread:get("statuses")) do
      counts[code] = (counts[code] or 0) + n
    end
  end
  for code, n in pairs(counts) do
    table.insert(parts, string.format('"%d": %d', code, n))
  end
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"elapsed_s": %.6f, "statuses": {%s}, "connection_errors": %d, "percentiles_ms": {"50": %.3f, "95": %.3f, "99": %.3f}}\n',
    summary.duration / 1e6, table.concat(parts, ", "), e.connect + e.read + e.write + e.timeout,
    latency:percentile(50) / 1e3, latency:percentile(95) / 1e3, latency:percentile(99) / 1e3))
end
