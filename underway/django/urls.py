"""`path("jobs/", include("underway.django.urls"))`: the API, the dashboard and its files.

- `jobs/`: the dashboard (logged-in users; staff see all jobs);
- `jobs/v1/...`: the HTTP API (README, "The HTTP API");
- `jobs/healthz`, `jobs/metrics`: liveness, Prometheus;
- `jobs/static/underway/<name>`: the dashboard's files and `underway-job.js`.
"""

from __future__ import annotations

from django.urls import path, re_path

from . import views

app_name = "underway"

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("static/underway/<str:name>", views.asset, name="asset"),
    re_path(r"^(?P<rest>v1(?:/.*)?|healthz|metrics)$", views.api, name="api"),
]
