from django.contrib.auth import views as auth_views
from django.urls import include, path
from reports import views

urlpatterns = [
    path("", views.index, name="index"),
    path("reports/", views.start_report, name="start_report"),
    path("reports/<str:job_id>/", views.report, name="report"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("jobs/", include("underway.django.urls")),  # the API and the dashboard
]
