"""The API's view of a Django caller: staff read every owner's jobs."""

from __future__ import annotations

from dataclasses import dataclass

from ..http.handlers import Api, ApiRequest


@dataclass(frozen=True, kw_only=True)
class DjangoApiRequest(ApiRequest):
    """An API request; `sees_all` when its caller may read every owner's jobs."""

    sees_all: bool = False


class DjangoApi(Api):
    """`Api` whose owner filter is lifted for callers that see all jobs (staff)."""

    def owner(self, request: ApiRequest) -> str | None:
        if isinstance(request, DjangoApiRequest) and request.sees_all:
            return None
        return request.principal


__all__ = ["DjangoApi", "DjangoApiRequest"]
