-- Recover the processing list of a dead consumer (KEYS[1]) into its queue (KEYS[2]).
-- A job reaped more than ARGV[1] times (counted in the hash KEYS[4] by the job's SHA-1; the
-- hash expires ARGV[2] seconds after the last reap) is poison: its dead-letter entry goes to
-- KEYS[3]. ARGV[3…] are pairs (SHA-1 of the job, its dead-letter entry), one per job of the
-- list as the caller read it, newest first (the caller builds them: not every Redis-protocol
-- server has redis.sha1hex, or a cjson that takes any bytes).
-- Returns {requeued, dead}, or an error when the list changed since the caller read it.
local jobs = redis.call('LRANGE', KEYS[1], 0, -1)  -- newest first
if #jobs * 2 ~= #ARGV - 2 then
  return redis.error_reply('reap: the processing list changed; read it again')
end
local max = tonumber(ARGV[1])
local requeued, dead = 0, 0
for i = 1, #jobs do
  local sha = ARGV[1 + 2 * i]
  if redis.call('HINCRBY', KEYS[4], sha, 1) > max then
    redis.call('HDEL', KEYS[4], sha)
    redis.call('LPUSH', KEYS[3], ARGV[2 + 2 * i])
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
return {requeued, dead}
