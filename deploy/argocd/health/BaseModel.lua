-- Argo CD health of a tuneforge.io BaseModel (a catalog entry).
-- Pending: Progressing; Ready: Healthy; Failed: Degraded. A status older than the spec
-- (status.observedGeneration < metadata.generation) is Progressing, never Healthy.
local hs = {}
local status = obj.status
if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the tuneforge operator to observe this BaseModel"
  return hs
end
local generation = obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "The operator has not observed generation " .. tostring(generation) .. " yet"
  return hs
end
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
