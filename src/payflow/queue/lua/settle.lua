-- Record the outcomes of a batch in one atomic step.
-- KEYS: 1 processing list, 2 delayed ZSET, 3 dead list, 4 forward queue (the other queue).
-- ARGV: a flat list of operations:
--   'ack',   raw          remove one copy of raw from the processing list
--   'push',  raw          LPUSH raw onto the forward queue (e.g. a webhook job)
--   'delay', raw, ms      ZADD raw into delayed, due ms from now by Redis' clock
--   'dead',  entry        LPUSH a dead-letter entry
-- Returns the number of operations applied.
local now = nil  -- Redis' clock in ms, read only when a retry needs it
local i, n = 1, 0
while i <= #ARGV do
  local op = ARGV[i]
  if op == 'ack' then
    redis.call('LREM', KEYS[1], 1, ARGV[i + 1]); i = i + 2
  elseif op == 'push' then
    redis.call('LPUSH', KEYS[4], ARGV[i + 1]); i = i + 2
  elseif op == 'delay' then
    if not now then
      local t = redis.call('TIME')
      now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    end
    redis.call('ZADD', KEYS[2], now + tonumber(ARGV[i + 2]), ARGV[i + 1]); i = i + 3
  elseif op == 'dead' then
    redis.call('LPUSH', KEYS[3], ARGV[i + 1]); i = i + 2
  else
    return redis.error_reply('settle: unknown operation ' .. tostring(op))
  end
  n = n + 1
end
return n
