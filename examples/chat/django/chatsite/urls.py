"""HTTP routes: the same two pages as the Rust gateway serves."""
from django.urls import path

from chat import views

urlpatterns = [
    path("", views.index),
    path("chat/<str:room_name>/", views.room),
]
