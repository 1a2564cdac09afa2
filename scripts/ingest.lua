-- wrk script of scripts/bench-ingest: sends pre-signed Standard Webhooks deliveries, each once.
--
--   wrk ... -s scripts/ingest.lua URL -- <deliveries file> <threads>
--
-- The file holds one delivery a line: webhook-id TAB webhook-timestamp TAB webhook-signature TAB
-- body. Thread i of n sends lines i, i+n, i+2n, ... in order, so no two requests repeat while the
-- file lasts; past its end a thread starts over (counted, and reported by done() as `wrapped`).

local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  local file, nthreads = args[1], tonumber(args[2])
  local path = wrk.path
  queue = {}
  local index = 0
  for line in io.lines(file) do
    if index % nthreads == id then
      local msg_id, timestamp, signature, body = line:match("^([^\t]+)\t([^\t]+)\t([^\t]+)\t(.+)$")
      queue[#queue + 1] = wrk.format("POST", path, {
        ["Content-Type"] = "application/json",
        ["webhook-id"] = msg_id,
        ["webhook-timestamp"] = timestamp,
        ["webhook-signature"] = signature,
      }, body)
    end
    index = index + 1
  end
  available = #queue
  sent = 0
end

function request()
  sent = sent + 1
  return queue[(sent - 1) % available + 1]
end

function done(summary, latency, requests)
  local sent_total, available_total, wrapped = 0, 0, 0
  for _, thread in ipairs(threads) do
    local thread_sent, thread_available = thread:get("sent"), thread:get("available")
    sent_total = sent_total + thread_sent
    available_total = available_total + thread_available
    if thread_sent > thread_available then
      wrapped = wrapped + thread_sent - thread_available
    end
  end
  local errors = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests": %d, "duration_us": %d, "non_2xx": %d, "connect_errors": %d, '
      .. '"read_errors": %d, "write_errors": %d, "timeouts": %d, "p50_us": %d, "p99_us": %d, '
      .. '"max_us": %d, "sent": %d, "available": %d, "wrapped": %d}\n',
    summary.requests, summary.duration, errors.status, errors.connect, errors.read,
    errors.write, errors.timeout, latency:percentile(50), latency:percentile(99), latency.max,
    sent_total, available_total, wrapped))
end
