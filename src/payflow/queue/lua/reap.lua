-- Recover the processing list of a dead consumer (KEYS[1]) into its queue (KEYS[2]).
-- A job reaped more than ARGV[1] times (counted in the hash KEYS[4] by the job's SHA-1, which
-- expires ARGV[4] seconds after the last reap) is poison: it goes to the dead list KEYS[3].
-- ARGV: 1 max redeliveries, 2 now (ISO-8601), 3 the dead consumer's id, 4 counter TTL seconds,
-- 5 the queue's name, 6… the SHA-1 of each job of the list as the caller read it (newest
-- first; computed by the caller, as not every Redis-protocol server has redis.sha1hex).
-- Returns {requeued, dead}, or an error when the list changed since the caller read it.
local jobs = redis.call('LRANGE', KEYS[1], 0, -1)  -- newest first
if #jobs ~= #ARGV - 5 then
  return redis.error_reply('reap: the processing list changed; read it again')
end
local requeued, dead = 0, 0
for i = 1, #jobs do
  local job = jobs[i]
  local sha = ARGV[5 + i]
  local n = redis.call('HINCRBY', KEYS[4], sha, 1)
  if n > tonumber(ARGV[1]) then
    redis.call('HDEL', KEYS[4], sha)
    redis.call('LPUSH', KEYS[3], cjson.encode({
      queue = ARGV[5], job = job, failed_at = ARGV[2], consumer = ARGV[3],
      reason = 'poison: in flight each of the ' .. n .. ' times its consumer died ' ..
               '(max_redeliveries ' .. ARGV[1] .. ')'}))
    dead = dead + 1
  else
    redis.call('RPUSH', KEYS[2], job)  -- the oldest ends up at the consuming end
    requeued = requeued + 1
  end
end
redis.call('DEL', KEYS[1])
if #jobs > 0 then
  redis.call('EXPIRE', KEYS[4], tonumber(ARGV[4]))
end
return {requeued, dead}
