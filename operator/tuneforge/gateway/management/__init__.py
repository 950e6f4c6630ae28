"""The management API under /api/v1/fine-tuning: the platform-style REST surface that
dashboards use (camelCase JSON, offset pagination, X-API-Key), over the same resources
as the OpenAI routes. docs/management-api.md documents it."""

from fastapi import APIRouter

from tuneforge.gateway.management import caller, deployments, jobs, observe, offerings

PREFIX = "/api/v1/fine-tuning"

router = APIRouter(prefix=PREFIX, tags=["management"])
for _module in (jobs, observe, offerings, deployments, caller):
    router.include_router(_module.router)
