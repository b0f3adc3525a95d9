"""The two pages, shared with the Rust gateway (examples/chat/index.html and room.html)."""
import re
from functools import lru_cache
from pathlib import Path

from django.http import Http404, HttpResponse

PAGES = Path(__file__).resolve().parent.parent.parent
SERVER = "Django Channels (daphne)"
ROOM = re.compile(r"^[A-Za-z0-9._-]{1,90}$")


@lru_cache(maxsize=None)
def _page(name):
    return (PAGES / name).read_text(encoding="utf-8").replace("{{ server }}", SERVER)


def index(request):
    return HttpResponse(_page("index.html"), headers={"Cache-Control": "no-store"})


def room(request, room_name):
    if not ROOM.match(room_name):
        raise Http404("no such room")
    return HttpResponse(_page("room.html"), headers={"Cache-Control": "no-store"})
