-- wrk script of benchmarks/pipeline.py's intake measurement: POST /v1/payments with a JSON body
-- and the API key from $PAYFLOW_BENCH_API_KEY; at the end it prints one line
-- "answered <n> non202 <m>" (answers counted over all threads; any status but 202 is non202).
--   PAYFLOW_BENCH_API_KEY=… wrk -t2 -c50 -d15s --latency -s benchmarks/post_payment.lua \
--     http://127.0.0.1:8080/v1/payments

wrk.method = "POST"
wrk.body = '{"amount": 1999, "currency": "INR", "method": "upi", "upi": {"vpa": "bench@okbank"},'
  .. ' "metadata": {"order_id": "bench"}}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("PAYFLOW_BENCH_API_KEY") or "")

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  answered = 0
  non202 = 0
end

function response(status, headers, body)
  answered = answered + 1
  if status ~= 202 then
    non202 = non202 + 1
  end
end

function done(summary, latency, requests)
  local total, bad = 0, 0
  for _, thread in ipairs(threads) do
    total = total + thread:get("answered")
    bad = bad + thread:get("non202")
  end
  io.write(string.format("answered %d non202 %d\n", total, bad))
end
