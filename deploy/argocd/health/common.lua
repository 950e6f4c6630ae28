-- The opening every tuneforge.io health check shares (hack/chartgen.py puts it in front of
-- each kind's script: Argo CD gives health scripts no includes). No status yet, or a status
-- older than the spec (status.observedGeneration < metadata.generation), is Progressing,
-- never Healthy, so Argo CD waits for the operator after every change.
local hs = {}
local status = obj.status
if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the tuneforge operator to observe this " .. tostring(obj.kind)
  return hs
end
local generation = obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "The operator has not observed generation " .. tostring(generation) .. " yet"
  return hs
end
