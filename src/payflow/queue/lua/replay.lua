-- Replay one dead-letter entry: if ARGV[1] (the entry, byte for byte) is still in the dead list
-- KEYS[1], remove it and LPUSH ARGV[2] (the job) onto the queue KEYS[2]. Returns 1, or 0 when
-- the entry was gone (replayed or purged by someone else).
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
  redis.call('LPUSH', KEYS[2], ARGV[2])
  return 1
end
return 0
