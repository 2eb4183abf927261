-- Recover the processing list of a dead consumer (KEYS[1]) into its queue (KEYS[2]).
-- A job reaped more than ARGV[1] times (counted in the hash KEYS[4] by the job's SHA-1; the
-- hash expires ARGV[2] seconds after the last reap) is poison: its dead-letter entry goes to
-- KEYS[3], which then keeps at most ARGV[3] entries (its oldest, at the right end, are
-- trimmed). ARGV[4…] are pairs (SHA-1 of the job, its dead-letter entry), one per job of the
-- list as the caller read it, newest first (the caller builds them: not every Redis-protocol
-- server has redis.sha1hex, or a cjson that takes any bytes).
-- Returns {requeued, dead, trimmed}, or an error when the list changed since the caller read it.
local jobs = redis.call('LRANGE', KEYS[1], 0, -1)  -- newest first
if #jobs * 2 ~= #ARGV - 3 then
  return redis.error_reply('reap: the processing list changed; read it again')
end
local max = tonumber(ARGV[1])
local max_dead = tonumber(ARGV[3])
if not max_dead or max_dead < 1 then
  return redis.error_reply('reap: the dead list limit must be at least 1')
end
local requeued, dead, dead_len = 0, 0, nil
for i = 1, #jobs do
  local sha = ARGV[2 + 2 * i]
  if redis.call('HINCRBY', KEYS[4], sha, 1) > max then
    redis.call('HDEL', KEYS[4], sha)
    dead_len = redis.call('LPUSH', KEYS[3], ARGV[3 + 2 * i])
    dead = dead + 1
  else
    redis.call('RPUSH', KEYS[2], jobs[i])  -- the oldest ends up at the consuming end
    requeued = requeued + 1
  end
end
redis.call('DEL', KEYS[1])
if #jobs > 0 then
  redis.call('EXPIRE', KEYS[4], tonumber(ARGV[2]))
end
local trimmed = 0
if dead_len and dead_len > max_dead then
  redis.call('LTRIM', KEYS[3], 0, max_dead - 1)
  trimmed = dead_len - max_dead
end
return {requeued, dead, trimmed}
