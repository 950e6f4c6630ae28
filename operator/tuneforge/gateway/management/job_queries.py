"""The job list's query: status and base-model filters, search, sort and offset pages,
plus the counts by status. Parsed and applied here, apart from the route, so every rule
is unit-tested on plain dicts."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, get_args

from tuneforge.gateway.errors import bad_request
from tuneforge.gateway.management.job_status import STATUSES, job_status
from tuneforge.gateway.management.job_views import job_name, updated_at
from tuneforge.gateway.management.protocol import JobStats, SortField

SORT_FIELDS: tuple[SortField, ...] = get_args(SortField)
DEFAULT_SORT = "createdAt:desc"


@dataclass(frozen=True)
class ListQuery:
    statuses: frozenset[str] | None = None
    base_model: str | None = None
    search: str | None = None
    sort_field: SortField = "createdAt"
    descending: bool = True
    limit: int = 20
    offset: int = 0


def parse_sort(value: str) -> tuple[SortField, bool]:
    """`field` or `field:asc|desc` -> (field, descending); anything else is a 400."""
    field, separator, direction = value.strip().partition(":")
    if field not in SORT_FIELDS or direction not in (("asc", "desc") if separator else ("",)):
        raise bad_request(f"sort must be <field>[:asc|:desc] with field one of {', '.join(SORT_FIELDS)}; got "
                          f"'{value}'.", param="sort", code="invalid_sort")
    return field, direction != "asc"


def parse_statuses(value: str) -> frozenset[str]:
    """One status or several, comma-separated; unknown ones are a 400."""
    wanted = frozenset(part.strip() for part in value.split(",") if part.strip())
    unknown = sorted(wanted - set(STATUSES))
    if unknown or not wanted:
        raise bad_request(f"status must be one or more of {', '.join(STATUSES)}; got '{value}'.", param="status",
                          code="invalid_status")
    return wanted


def _sort_key(resource: Mapping[str, Any], field: SortField) -> tuple:
    value = {
        "createdAt": lambda: resource["metadata"]["creationTimestamp"],
        "updatedAt": lambda: updated_at(resource),
        "name": lambda: job_name(resource).casefold(),
        "status": lambda: job_status(resource),
    }[field]()
    return value, resource["metadata"]["creationTimestamp"], resource["metadata"]["name"]


def select_jobs(resources: Iterable[Mapping[str, Any]], query: ListQuery) -> tuple[int, list[Mapping[str, Any]]]:
    """(how many match, the page of them) after filters, search and sort. Ties sort by
    creation time and id so pages never overlap."""
    needle = query.search.casefold() if query.search else None
    matched = [
        r for r in resources
        if (query.statuses is None or job_status(r) in query.statuses)
        and (query.base_model is None or r["spec"]["baseModel"] == query.base_model)
        and (needle is None or needle in job_name(r).casefold() or needle in (r["spec"].get("description") or "").casefold())
    ]
    matched.sort(key=lambda r: _sort_key(r, query.sort_field), reverse=query.descending)
    return len(matched), matched[query.offset : query.offset + query.limit]


def stats(resources: Iterable[Mapping[str, Any]]) -> JobStats:
    counts = dict.fromkeys(STATUSES, 0)
    for resource in resources:
        counts[job_status(resource)] += 1
    return JobStats(total=sum(counts.values()), **counts)
