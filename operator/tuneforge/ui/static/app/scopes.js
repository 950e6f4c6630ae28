// What the signed-in key may do, from GET /api/v1/fine-tuning/key: pages hide the buttons
// it may not use (the gateway refuses them anyway).

export function can(caller, scope) {
  return caller.scopes.includes(scope);
}
