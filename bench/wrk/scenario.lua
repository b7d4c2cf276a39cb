-- Requests for one benchmark scenario, and a JSON summary when wrk is done.
-- wrk -s scenario.lua URL -- <scenario> <users> <orders> <run id>

local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

local scenario, users, orders, run
local counter = 0

function init(args)
  scenario = args[1]
  users = tonumber(args[2])
  orders = tonumber(args[3])
  run = args[4]
  math.randomseed(os.time() * 1000 + tid)
end

function request()
  if scenario == "get_user" then
    return wrk.format("GET", "/users/" .. math.random(users))
  elseif scenario == "get_order" then
    return wrk.format("GET", "/orders/" .. math.random(orders))
  elseif scenario == "post_user" then
    counter = counter + 1
    local tag = run .. "-" .. tid .. "-" .. counter
    local body = '{"name":"Load ' .. counter .. '","email":"load-' .. tag .. '@example.com"}'
    return wrk.format("POST", "/users", { ["content-type"] = "application/json" }, body)
  elseif scenario == "post_order" then
    counter = counter + 1
    local body = '{"user_id":' .. math.random(users) .. ',"items":[{"sku":"SKU-' .. counter ..
      '","quantity":1,"unit_price_cents":250}]}'
    return wrk.format("POST", "/orders", { ["content-type"] = "application/json" }, body)
  elseif scenario == "mixed" then
    -- What a real service sees: mostly reads, some sign-ups, some orders.
    local roll = math.random(100)
    if roll <= 80 then
      return wrk.format("GET", "/users/" .. math.random(users))
    end
    counter = counter + 1
    if roll <= 90 then
      local tag = run .. "-" .. tid .. "-" .. counter
      local body = '{"name":"Mixed ' .. counter .. '","email":"mixed-' .. tag .. '@example.com"}'
      return wrk.format("POST", "/users", { ["content-type"] = "application/json" }, body)
    end
    local body = '{"user_id":' .. math.random(users) .. ',"items":[{"sku":"SKU-' .. counter ..
      '","quantity":' .. math.random(3) .. ',"unit_price_cents":250},' ..
      '{"sku":"GIFT-WRAP","quantity":1,"unit_price_cents":99}]}'
    return wrk.format("POST", "/orders", { ["content-type"] = "application/json" }, body)
  elseif scenario == "wasi_http" then
    return wrk.format("GET", "/http/hello")
  else
    return wrk.format("GET", "/empty")
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"socket_errors":%d,"http_errors":%d,"mean_us":%.1f,"p50_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency.mean, latency:percentile(50), latency:percentile(99), latency.max))
end
