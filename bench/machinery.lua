-- wrk script of bench/machinery.py.
--   wrk ... -s bench/machinery.lua URL -- ITEMS_FILE MEAN_DELAY_MS
-- ITEMS_FILE: one request per line, "PATH" or "PATH<TAB>BEARER TOKEN"; the requests walk
-- the list round-robin from a random offset. MEAN_DELAY_MS > 0 paces each connection with
-- exponentially distributed pauses between requests (Poisson-like arrivals); 0 is a closed
-- loop at full speed. Every status but 200 is counted; done() prints one line
-- "WRK_RESULT {json}" with requests, duration, latency percentiles (us) and errors.

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  items = {}
  for line in io.lines(args[1]) do
    local target, token = line:match("^([^\t]+)\t?(.*)$")
    local headers = {}
    if token ~= nil and token ~= "" then
      headers["Authorization"] = "Bearer " .. token
    end
    items[#items + 1] = wrk.format("GET", target, headers)
  end
  mean_delay = tonumber(args[2] or "0")
  math.randomseed(os.time() + math.floor(os.clock() * 1e6))
  position = math.random(#items)
  bad = 0
  first_bad = 0
end

function request()
  position = position % #items + 1
  return items[position]
end

function delay()
  if mean_delay > 0 then
    return -math.log(1 - math.random()) * mean_delay
  end
  return 0
end

function response(status, headers, body)
  if status ~= 200 then
    bad = bad + 1
    if first_bad == 0 then
      first_bad = status
    end
  end
end

function done(summary, latency, requests)
  local bad_total, first = 0, 0
  for _, thread in ipairs(threads) do
    bad_total = bad_total + thread:get("bad")
    if first == 0 then
      first = thread:get("first_bad")
    end
  end
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p95_us": %d, ' ..
    '"p99_us": %d, "mean_us": %.1f, "max_us": %d, "non_200": %d, "first_non_200": %d, ' ..
    '"connect_errors": %d, "read_errors": %d, "write_errors": %d, "timeouts": %d, ' ..
    '"wrk_status_errors": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(95),
    latency:percentile(99), latency.mean, latency.max, bad_total, first,
    e.connect, e.read, e.write, e.timeout, e.status))
end
