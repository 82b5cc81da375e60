-- Argo CD health of an AsyncWorkerPool (asyncpool.dev), read from the conditions the operator
-- writes. Degraded: the operator cannot make progress without a change from you (Stalled: invalid
-- spec, objects that are not the pool's, crash-looping or refused workers). Suspended: spec.paused.
-- Progressing: workers are starting or rolling out, or the operator has not seen this spec yet.
local health = { status = "Progressing", message = "Waiting for the asyncpool operator to report" }
if obj.status == nil or obj.status.conditions == nil then
  return health
end
local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  health.message = "Waiting for the asyncpool operator to observe the latest spec"
  return health
end
local conditions = {}
for _, condition in ipairs(obj.status.conditions) do
  conditions[condition.type] = condition
end
local function holds(type)
  return conditions[type] ~= nil and conditions[type].status == "True"
end
if holds("Stalled") then
  return { status = "Degraded", message = conditions.Stalled.message }
end
if holds("Degraded") then
  return { status = "Degraded", message = conditions.Degraded.message }
end
if holds("Paused") then
  return { status = "Suspended", message = conditions.Paused.message }
end
if holds("Reconciling") then
  return { status = "Progressing", message = conditions.Reconciling.message }
end
if holds("Ready") then
  return { status = "Healthy", message = conditions.Ready.message }
end
if conditions.Ready ~= nil then
  health.message = conditions.Ready.message
end
return health
