from django.urls import path

from . import views

urlpatterns = [
    path("sleep/<str:seconds>", views.sleep),
    path("together", views.together),
    path("pid", views.backend_pid),
    path("lookup", views.lookup),
    path("items", views.items),
    path("atomic/<str:name>/<str:seconds>", views.atomic_then_fail),
    path("count/<str:name>", views.count),
    path("commit/<str:name>", views.commit),
    path("fail", views.fail),
    path("async", views.async_view),
    path("async-sync-orm", views.async_view_sync_orm),
    path("stream", views.stream),
    path("astream", views.astream),
    path("file", views.file),
    path("echo", views.echo),
    path("stats", views.stats),
]
