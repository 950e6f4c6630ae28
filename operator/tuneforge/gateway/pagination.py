"""Cursor pagination of the OpenAI lists: one rule for every `after`/`limit` list, so a
stale or foreign cursor is the same 400 everywhere, and one order for the lists of
custom resources (jobs, batches), whose ids are their resource names."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from operator import attrgetter
from typing import Any

from tuneforge.gateway.errors import bad_request
from tuneforge.gateway.openai_protocol import CursorPage


def page(items: Sequence[Any], *, after: str | None, limit: int, ident: Callable[[Any], str] = attrgetter("id"),
         after_param: str = "after") -> CursorPage:
    """One page of an already ordered list: the items after the `after` id, at most `limit`.

    An `after` id that is not in the list is the caller's mistake (a stale or foreign
    cursor), reported as 400 rather than silently restarting from the top.
    """
    start = 0
    if after:
        for index, item in enumerate(items):
            if ident(item) == after:
                start = index + 1
                break
        else:
            raise bad_request(f"No object with id '{after}' to continue after.", param=after_param,
                              code="invalid_cursor")
    data = list(items[start : start + limit])
    return CursorPage(
        data=data,
        has_more=start + limit < len(items),
        first_id=ident(data[0]) if data else None,
        last_id=ident(data[-1]) if data else None,
    )


def resource_name(resource: Mapping[str, Any]) -> str:
    """A custom resource's id in the OpenAI API (`ident` for `page`)."""
    return resource["metadata"]["name"]


def newest_first(resources: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Creation order, newest first; ids (time-ordered, gateway.ids) break ties within a second."""
    return sorted(resources, key=lambda r: (r["metadata"]["creationTimestamp"], resource_name(r)), reverse=True)
