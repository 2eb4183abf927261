-- Move everything in a processing list (KEYS[1]) back to the consuming end of its queue
-- (KEYS[2]), oldest fetched job consumed first again. Returns how many moved.
local n = 0
while redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT') do
  n = n + 1
end
return n
