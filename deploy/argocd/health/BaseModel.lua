-- Argo CD health of a tuneforge.io BaseModel (a catalog entry).
-- Runs after common.lua (hs, status). Pending: Progressing; Ready: Healthy; Failed: Degraded.
local reason = ""
if status.conditions ~= nil then
  for _, condition in ipairs(status.conditions) do
    if condition.type == "Ready" and condition.message ~= nil and condition.message ~= "" then
      reason = ": " .. condition.message
    end
  end
end
if status.phase == "Ready" then
  hs.status = "Healthy"
elseif status.phase == "Failed" then
  hs.status = "Degraded"
else
  hs.status = "Progressing"
end
hs.message = status.phase .. reason
return hs
