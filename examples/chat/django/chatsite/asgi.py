"""The ASGI application: Django's views over HTTP, the chat consumer over websockets.

Run with `daphne -b 127.0.0.1 -p 8001 chatsite.asgi:application` from this folder.
"""
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
# Set Django up before anything imports a model or the consumers.
http_application = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from chat.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": http_application,
        # A page on another site must not open a room's socket in a visitor's browser: the
        # socket's Origin has to be one of ALLOWED_HOSTS.
        "websocket": AllowedHostsOriginValidator(URLRouter(websocket_urlpatterns)),
    }
)
