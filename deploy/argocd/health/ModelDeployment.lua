-- Argo CD health of a tuneforge.io ModelDeployment.
-- Pending, Deploying: Progressing (Suspended when scaled to zero replicas); Ready: Healthy;
-- Degraded, Failed: Degraded. Runs after common.lua (hs, status).
local reason = ""
if status.conditions ~= nil then
  for _, condition in ipairs(status.conditions) do
    if condition.type == "Available" and condition.message ~= nil and condition.message ~= "" then
      reason = ": " .. condition.message
    end
  end
end
local phase = status.phase
if phase == "Ready" then
  hs.status = "Healthy"
elseif phase == "Degraded" or phase == "Failed" then
  hs.status = "Degraded"
elseif phase == "Pending" and obj.spec ~= nil and obj.spec.replicas == 0 then
  hs.status = "Suspended"
  reason = ": scaled to zero replicas"
else
  hs.status = "Progressing"
end
hs.message = phase .. reason
return hs
