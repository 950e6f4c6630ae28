-- Argo CD health of a tuneforge.io BatchJob.
-- Validating, InProgress, Finalizing, Cancelling: Progressing; Completed: Healthy; Failed,
-- Expired: Degraded; Cancelled (spec.cancel): Suspended, stopped on purpose.
-- Runs after common.lua (hs, status).
local phase = status.phase
local counts = ""
if status.requestCounts ~= nil and status.requestCounts.total ~= nil then
  local rc = status.requestCounts
  counts = ": " .. tostring(rc.completed or 0) .. " completed, " .. tostring(rc.failed or 0) .. " failed of " .. tostring(rc.total)
end
if phase == "Completed" then
  hs.status = "Healthy"
  hs.message = phase .. counts
elseif phase == "Failed" or phase == "Expired" then
  hs.status = "Degraded"
  hs.message = phase .. counts
  if status.errors ~= nil and status.errors[1] ~= nil and status.errors[1].message ~= nil then
    hs.message = phase .. " (" .. tostring(status.errors[1].code) .. "): " .. status.errors[1].message
  end
elseif phase == "Cancelled" then
  hs.status = "Suspended"
  hs.message = phase .. counts
else
  hs.status = "Progressing"
  hs.message = phase .. counts
end
return hs
