from django.urls import include, path

urlpatterns = [path("jobs/", include("underway.django.urls"))]
