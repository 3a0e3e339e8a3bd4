"""Settings of the reports site: Django's usual ones, plus `UNDERWAY`."""

from __future__ import annotations

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-a-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "underway.django",  # the jobs API, the dashboard, `manage.py underway`
    "reports",  # its tasks.py declares the `report` task
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
ROOT_URLCONF = "reportsite.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
            ]
        },
    }
]
WSGI_APPLICATION = "reportsite.wsgi.application"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("REPORTS_DB", str(BASE_DIR / "db.sqlite3")),
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "index"
LOGOUT_REDIRECT_URL = "login"

UNDERWAY = {
    "STORE": os.environ.get("REPORTS_STORE", f"sqlite:///{BASE_DIR / 'jobs.db'}"),
    "WORKERS": 2,
    # Jobs run inside the web process (from its first request on); for dedicated
    # workers instead, set False and run `python manage.py underway worker`.
    "START_WORKERS": os.environ.get("REPORTS_WORKERS", "embedded") == "embedded",
}

# Seconds each row of a report takes (the test makes it short).
REPORT_ROW_SECONDS = float(os.environ.get("REPORT_ROW_SECONDS", "0.5"))
