"""A page that starts a report job, and a page that follows it live."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from underway.django import get_app, job_owner
from underway.errors import JobNotFound

from .tasks import report as report_task


@login_required
def index(request: HttpRequest) -> HttpResponse:
    jobs = get_app().list_jobs(task="report", owner=job_owner(request), limit=10).jobs
    return render(request, "reports/index.html", {"jobs": jobs})


@login_required
@require_POST
def start_report(request: HttpRequest) -> HttpResponse:
    try:
        rows = min(max(int(request.POST.get("rows", "4")), 1), 50)
    except ValueError:
        rows = 4
    # The job belongs to the user: the API shows it to them (and to staff) only.
    job = report_task.submit(rows=rows, owner=job_owner(request))
    return redirect("report", job_id=job.id)


@login_required
def report(request: HttpRequest, job_id: str) -> HttpResponse:
    try:
        job = get_app().get(job_id, owner=job_owner(request))
    except JobNotFound:
        raise Http404("no such report") from None
    return render(request, "reports/report.html", {"job": job})
