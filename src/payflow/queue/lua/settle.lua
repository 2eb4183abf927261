-- Record the outcomes of a batch in one atomic step.
-- KEYS: 1 processing list, 2 delayed ZSET, 3 dead list, 4 forward queue (the other queue).
-- ARGV[1]: the most entries the dead list keeps (its oldest, at the right end, are trimmed).
-- ARGV[2…]: a flat list of operations:
--   'ack',   raw          remove one copy of raw from the processing list
--   'push',  raw          LPUSH raw onto the forward queue (e.g. a webhook job)
--   'delay', raw, ms      ZADD raw into delayed, due ms from now by Redis' clock
--   'dead',  entry        LPUSH a dead-letter entry
-- Returns {operations applied, dead-letter entries trimmed}.
local max_dead = tonumber(ARGV[1])
if not max_dead or max_dead < 1 then
  return redis.error_reply('settle: the dead list limit must be at least 1')
end
local now = nil  -- Redis' clock in ms, read only when a retry needs it
local dead_len = nil  -- the dead list's length after the last LPUSH, when there was one
local i, n = 2, 0
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
    dead_len = redis.call('LPUSH', KEYS[3], ARGV[i + 1]); i = i + 2
  else
    return redis.error_reply('settle: unknown operation ' .. tostring(op))
  end
  n = n + 1
end
local trimmed = 0
if dead_len and dead_len > max_dead then
  redis.call('LTRIM', KEYS[3], 0, max_dead - 1)
  trimmed = dead_len - max_dead
end
return {n, trimmed}
