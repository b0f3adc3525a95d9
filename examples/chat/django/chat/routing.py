"""Websocket routes: /ws/chat/<room>/, as in the Rust gateway."""
from django.urls import re_path

from chat.consumers import ChatConsumer

websocket_urlpatterns = [
    re_path(r"^ws/chat/(?P<room_name>[A-Za-z0-9._-]+)/$", ChatConsumer.as_asgi()),
]
