"""The Redis limiter's Lua scripts: one call admits, one settles, one seeds a month.

The rules are ``gateway.admission.limits.policy``'s, written once more in Lua so that checking and taking
happen in one atomic step on the server. Per scope (the tenant, and the key when it has limits)
there are three keys, all under the tenant's ``{hash tag}`` so a Redis Cluster keeps them together:

- ``state`` (hash): ``r``/``r@`` and ``t``/``t@`` (RPM and TPM bucket level and when it was set, µs),
  ``h:<lease>`` = "tokens cost" held by a live lease, ``rt``/``rc`` the sum of those holds;
- ``leases`` (sorted set): lease id scored by its expiry (µs), so a crashed replica's leases lapse;
- ``month`` (hash, one per UTC month): ``tokens``/``cost`` settled so far.

Time is the Redis server's ``TIME`` unless the caller passes ``now`` (tests): every replica then
refills buckets on one clock, so a replica whose clock runs ahead cannot refill them early.
Budgets stay exact although Lua numbers are doubles (exact only below 2^53 picodollars, about
9,000 dollars): counters change only by ``HINCRBY`` with the decimal strings the caller sent, and
budget checks compare two-limb numbers (``big``: billions and the rest, each exact in a double).
"""

from __future__ import annotations

_BIG = """
local B = 1000000000
local function big(s)
  s = s or '0'
  if #s <= 9 then return {0, tonumber(s)} end
  return {tonumber(string.sub(s, 1, -10)), tonumber(string.sub(s, -9))}
end

local function less(a, b)
  return a[1] < b[1] or (a[1] == b[1] and a[2] < b[2])
end

local function plus(a, b)
  local low = a[2] + b[2]
  if low >= B then return {a[1] + b[1] + 1, low - B} end
  return {a[1] + b[1], low}
end

-- Admit while something is left and this request's estimate fits in what is left (policy._budget_fits).
local function fits(used, held, need, budget)
  local taken = plus(big(used), big(held))
  return less(taken, budget) and not less(budget, plus(taken, big(need)))
end
"""

_COMMON = """
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- A bucket's level now, from its stored level and when that was set (policy.refill).
local function level(value, at, limit)
  if not value then return limit end
  return math.min(limit, tonumber(value) + math.max(0, now - tonumber(at)) * limit / 60000000)
end

local function add(key, field, amount)
  if amount ~= '0' and amount ~= '-0' then redis.call('HINCRBY', key, field, amount) end
end

local function release(state, leases, lease)
  local held = redis.call('HGET', state, 'h:' .. lease)
  if held then
    local tokens, cost = string.match(held, '^(%d+) (%d+)$')
    add(state, 'rt', '-' .. tokens)
    add(state, 'rc', '-' .. cost)
    redis.call('HDEL', state, 'h:' .. lease)
  end
  redis.call('ZREM', leases, lease)
end

local function keep(state, debt_ms)
  redis.call('PEXPIRE', state, math.ceil(tonumber(ARGV[3]) / 1000 + 60000 + debt_ms))
end
"""

# KEYS: per scope state, leases, month. ARGV: now µs or '', lease id, lease ttl µs, tokens, cost,
# then per scope "rpm tpm max_concurrent monthly_tokens monthly_cost" ('-' = none).
# Returns one string (cheaper to parse than an array): "admitted now_us", then per scope "rpm_level
# tpm_level leases used_tokens reserved_tokens used_cost reserved_cost", as the scope was before.
ADMIT = (
    _BIG
    + _COMMON
    + """
local lease, tokens = ARGV[2], tonumber(ARGV[4])
local out, admitted, scopes = {}, true, {}
for i = 1, #ARGV - 5 do
  local s = {state = KEYS[3 * i - 2], leases = KEYS[3 * i - 1], month = KEYS[3 * i]}
  local rpm, tpm, conc, mtok, mcost = string.match(ARGV[5 + i], '^(%S+) (%S+) (%S+) (%S+) (%S+)$')
  s.rpm, s.tpm, s.conc = tonumber(rpm), tonumber(tpm), tonumber(conc)
  s.lease = s.conc or mtok ~= '-' or mcost ~= '-'
  local live = 0
  if s.lease then
    for _, id in ipairs(redis.call('ZRANGEBYSCORE', s.leases, '-inf', now, 'LIMIT', 0, 100)) do
      release(s.state, s.leases, id)
    end
    live = redis.call('ZCOUNT', s.leases, string.format('(%.17g', now), '+inf')  -- beyond the 100 swept
  end
  local v = redis.call('HMGET', s.state, 'r', 'r@', 't', 't@', 'rt', 'rc')
  s.r = s.rpm and level(v[1], v[2], s.rpm) or 0
  s.t = s.tpm and level(v[3], v[4], s.tpm) or 0
  local used = redis.call('HMGET', s.month, 'tokens', 'cost')
  local ut, uc, ht, hc = used[1] or '0', used[2] or '0', v[5] or '0', v[6] or '0'
  if (s.conc and live >= s.conc) or (s.rpm and s.r < 1) or (s.tpm and s.t < tokens)
    or (mtok ~= '-' and not fits(ut, ht, ARGV[4], big(mtok)))
    or (mcost ~= '-' and not fits(uc, hc, ARGV[5], big(mcost))) then
    admitted = false
  end
  scopes[i] = s
  out[i] = string.format('%.17g %.17g %d %s %s %s %s', s.r, s.t, live, ut, ht, uc, hc)
end
if admitted then
  for _, s in ipairs(scopes) do
    if s.rpm then redis.call('HSET', s.state, 'r', s.r - 1, 'r@', now) end
    local debt_ms = 0
    if s.tpm then
      redis.call('HSET', s.state, 't', s.t - tokens, 't@', now)
      if s.t < tokens and s.tpm > 0 then debt_ms = (tokens - s.t) * 60000 / s.tpm end
    end
    if s.lease then
      redis.call('ZADD', s.leases, now + tonumber(ARGV[3]), lease)
      redis.call('HSET', s.state, 'h:' .. lease, ARGV[4] .. ' ' .. ARGV[5])
      add(s.state, 'rt', ARGV[4])
      add(s.state, 'rc', ARGV[5])
      redis.call('PEXPIRE', s.leases, math.ceil(tonumber(ARGV[3]) / 1000 + 60000))
    end
    keep(s.state, debt_ms)
  end
end
return (admitted and '1 ' or '0 ') .. string.format('%.17g ', now) .. table.concat(out, ' ')
"""
)

# KEYS: per scope state, leases, month (of admission). ARGV: now µs or '', lease id, lease ttl µs,
# reserved tokens, used tokens, used cost, month ttl ms, then per scope "tpm lease monthly"
# (tpm '-' = no bucket; lease and monthly '1' or '0').
SETTLE = (
    _COMMON
    + """
local refund = tonumber(ARGV[4]) - tonumber(ARGV[5])
for i = 1, #ARGV - 7 do
  local state, leases, month = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local tpm, lease, monthly = string.match(ARGV[7 + i], '^(%S+) (%S+) (%S+)$')
  tpm = tonumber(tpm)
  local debt_ms = 0
  if tpm then
    local v = redis.call('HMGET', state, 't', 't@')
    local t = math.min(tpm, level(v[1], v[2], tpm) + refund)
    redis.call('HSET', state, 't', t, 't@', now)
    if t < 0 and tpm > 0 then debt_ms = -t * 60000 / tpm end
  end
  if lease == '1' then release(state, leases, ARGV[2]) end
  if redis.call('EXISTS', state) == 1 then keep(state, debt_ms) end
  if monthly == '1' then
    add(month, 'tokens', ARGV[5])
    add(month, 'cost', ARGV[6])
    redis.call('PEXPIRE', month, ARGV[7])
  end
end
return 1
"""
)

# KEYS: month. ARGV: tokens, cost, month ttl ms. Raises each counter to at least the given value,
# so replicas seeding from the same ledger never count it twice, and usage counted before the seed
# (or since Redis lost its data) is not dropped.
SEED = (
    _BIG
    + """
local used = redis.call('HMGET', KEYS[1], 'tokens', 'cost')
if less(big(used[1]), big(ARGV[1])) then redis.call('HSET', KEYS[1], 'tokens', ARGV[1]) end
if less(big(used[2]), big(ARGV[2])) then redis.call('HSET', KEYS[1], 'cost', ARGV[2]) end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""
)
