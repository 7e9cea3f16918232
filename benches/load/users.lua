-- A different user per request, from x-user-id or a bearer JWT (tokens.txt).
local tokens = {}
local f = io.open(os.getenv("TOKENS") or "", "r")
if f then
  for line in f:lines() do tokens[#tokens + 1] = line end
  f:close()
end
local n = 0
request = function()
  n = n + 1
  if #tokens > 0 then
    local t = tokens[(n % #tokens) + 1]
    return wrk.format("GET", "/rest/v1/items?select=*", { ["authorization"] = "Bearer " .. t, ["x-user-id"] = "" })
  end
  return wrk.format("GET", "/rest/v1/items?select=*", { ["x-user-id"] = "user-" .. (n % 100000) })
end
