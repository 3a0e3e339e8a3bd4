"""The site's tasks: imported by underway.django when the project starts."""

from __future__ import annotations

from typing import Any

from django.conf import settings

from underway import Job
from underway.django import task

REGIONS = ["North", "South", "East", "West", "Centre", "Islands"]


@task(timeout="10m", keep_for="1d")
def report(job: Job, rows: int = 4) -> dict[str, Any]:
    """A sales report, one region a row: each row is output as soon as it is ready."""
    total = 0
    for i in range(rows):
        if job.wait_cancelled(settings.REPORT_ROW_SECONDS):  # the slow query
            job.check_cancelled()
        region = REGIONS[i % len(REGIONS)]
        sales = 1000 + (i * 7919) % 500
        total += sales
        job.emit({"region": region, "sales": sales})
        job.progress(i + 1, total=rows, message=f"{region} done")
    return {"rows": rows, "total": total}
