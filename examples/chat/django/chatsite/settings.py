"""Settings of the chat project: the Django half of the chat gateway example.

Its rooms live in the channel layer (channels_redis), so the Rust gateway
(`cargo run --example chat --features redis -- --url redis://...`) on the same Redis serves
the same rooms. CHAT_REDIS_URL names the Redis (default redis://127.0.0.1:6379/0); both
halves use the default key prefix, "asgi".
"""
import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

# An example project: the key only signs sessions, which it does not use.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "chat-example-not-a-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"]

INSTALLED_APPS = [
    "daphne",  # `manage.py runserver` serves ASGI (websockets included)
    "channels",
    "chat",
]
MIDDLEWARE = []
ROOT_URLCONF = "chatsite.urls"
ASGI_APPLICATION = "chatsite.asgi.application"
DATABASES = {}
USE_TZ = True

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            "hosts": [os.environ.get("CHAT_REDIS_URL", "redis://127.0.0.1:6379/0")],
        },
    },
}
