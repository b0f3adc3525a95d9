"""A long-running peer that drives the real channels_redis for the Rust interop tests.

Protocol: one JSON command per line on stdin, one JSON reply per line on stdout.
The first command must be {"op": "init", "hosts": [...], ...}: every key except "op" is passed
to channels_redis.core.RedisChannelLayer(**cfg). Then:

    send {channel, message}            -> {"ok": true}
    receive {channel, timeout}         -> {"ok": true, "message": ...} | {"ok": false, "error": "Timeout"}
    new_channel {prefix?}              -> {"ok": true, "channel": name}
    group_add {group, channel}         -> {"ok": true}
    group_discard {group, channel}     -> {"ok": true}
    group_send {group, message}        -> {"ok": true, "logs": [channels_redis log lines]}
    flush                              -> {"ok": true}
    ping                               -> {"ok": true, "client_prefix": ...}
    close | exit                       -> {"ok": true}, then the process exits

Errors: {"ok": false, "error": "<ExceptionClassName>", "detail": "..."}.

Messages (both directions) are plain JSON, except bytes as {"$bytes": "<standard base64>"} and
non-finite floats as {"$float": "nan" | "inf" | "-inf"}.

Everything runs on one asyncio event loop for the life of the process: channels_redis keeps
its process-channel receive buffers and connection pools per layer object and loop.
"""

import asyncio
import base64
import json
import logging
import math
import sys
import traceback

# The protocol owns the real stdout; anything else printing goes to stderr.
PROTO_OUT = sys.stdout
sys.stdout = sys.stderr


class LogCapture(logging.Handler):
    """Keeps channels_redis's log records (e.g. "1 of 1 channels over capacity in group g")."""

    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record.getMessage())

    def take(self):
        taken, self.records = self.records, []
        return taken


CAPTURE = LogCapture()
_logger = logging.getLogger("channels_redis")
_logger.addHandler(CAPTURE)
_logger.setLevel(logging.DEBUG)


def to_json(value):
    """A message value -> the JSON convention."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if math.isnan(value):
            return {"$float": "nan"}
        if math.isinf(value):
            return {"$float": "inf" if value > 0 else "-inf"}
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"map key {k!r} is not a str")
            out[k] = to_json(v)
        return out
    raise TypeError(f"cannot express {type(value).__name__} in the JSON convention")


_FLOATS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def from_json(value):
    """The JSON convention -> a message value."""
    if isinstance(value, list):
        return [from_json(v) for v in value]
    if isinstance(value, dict):
        if len(value) == 1 and "$bytes" in value and isinstance(value["$bytes"], str):
            return base64.b64decode(value["$bytes"], validate=True)
        if len(value) == 1 and "$float" in value and value["$float"] in _FLOATS:
            return _FLOATS[value["$float"]]
        return {k: from_json(v) for k, v in value.items()}
    return value


def reply(obj):
    PROTO_OUT.write(json.dumps(obj, allow_nan=False) + "\n")
    PROTO_OUT.flush()


def error_reply(exc):
    detail = str(exc) or repr(exc)
    return {"ok": False, "error": type(exc).__name__, "detail": detail}


async def read_line(loop):
    # Read stdin off the loop, so channels_redis's background tasks (in-flight cleaners)
    # keep running between commands.
    return await loop.run_in_executor(None, sys.stdin.readline)


def make_layer(cmd):
    from channels_redis.core import RedisChannelLayer

    cfg = {k: v for k, v in cmd.items() if k != "op"}
    if "hosts" not in cfg:
        raise ValueError("init needs hosts")
    return RedisChannelLayer(**cfg)


async def handle(layer, cmd):
    op = cmd.get("op")
    if op == "send":
        await layer.send(cmd["channel"], from_json(cmd["message"]))
        return {"ok": True}
    if op == "receive":
        timeout = float(cmd.get("timeout", 5.0))
        try:
            message = await asyncio.wait_for(layer.receive(cmd["channel"]), timeout)
        except asyncio.TimeoutError:
            return {"ok": False, "error": "Timeout", "detail": f"nothing within {timeout} s"}
        return {"ok": True, "message": to_json(message)}
    if op == "new_channel":
        name = await layer.new_channel(cmd.get("prefix", "specific"))
        return {"ok": True, "channel": name}
    if op == "group_add":
        await layer.group_add(cmd["group"], cmd["channel"])
        return {"ok": True}
    if op == "group_discard":
        await layer.group_discard(cmd["group"], cmd["channel"])
        return {"ok": True}
    if op == "group_send":
        CAPTURE.take()
        await layer.group_send(cmd["group"], from_json(cmd["message"]))
        return {"ok": True, "logs": CAPTURE.take()}
    if op == "flush":
        await layer.flush()
        return {"ok": True}
    if op == "ping":
        return {"ok": True, "client_prefix": layer.client_prefix}
    return {"ok": False, "error": "UnknownOp", "detail": f"unknown op {op!r}"}


async def main():
    loop = asyncio.get_running_loop()
    layer = None
    while True:
        line = await read_line(loop)
        if not line:
            break  # stdin closed: the test is gone
        line = line.strip()
        if not line:
            continue
        try:
            cmd = json.loads(line)
            op = cmd.get("op")
            if op in ("close", "exit"):
                if layer is not None:
                    await layer.close_pools()
                reply({"ok": True})
                return
            if op == "init":
                layer = make_layer(cmd)
                reply({"ok": True, "client_prefix": layer.client_prefix})
                continue
            if layer is None:
                reply({"ok": False, "error": "NotInitialized", "detail": "send init first"})
                continue
            reply(await handle(layer, cmd))
        except Exception as exc:  # noqa: BLE001 - every failure is a reply
            traceback.print_exc(file=sys.stderr)
            reply(error_reply(exc))
    if layer is not None:
        await layer.close_pools()


if __name__ == "__main__":
    asyncio.run(main())
