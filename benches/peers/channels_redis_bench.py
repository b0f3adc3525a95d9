#!/usr/bin/env python3
"""The Python side of benches/redis_ratios.rs: channels_redis's RedisChannelLayer measured on
the same scenarios as the Rust layer, against the Redis server the bench started.

Usage: channels_redis_bench.py SCENARIO REDIS_URL COUNT
  p2p     COUNT messages {type, n, payload: 64 bytes} from one task to another; prints msgs_per_s
  fanout  COUNT group sends to 100 members of this process, all drained; prints deliveries_per_s
  rpc     COUNT request/response round trips, a fresh reply channel each; prints p50_us, p99_us

One JSON object is printed on the last line of standard output.
"""
import asyncio
import json
import sys
import time

from channels.exceptions import ChannelFull
from channels_redis.core import RedisChannelLayer

PAYLOAD = "x" * 64
MEMBERS = 100


def message(n):
    return {"type": "bench.msg", "n": n, "payload": PAYLOAD}


async def send_waiting(layer, channel, msg):
    # The Rust producers wait for room; so does this one (it never spins).
    while True:
        try:
            return await layer.send(channel, msg)
        except ChannelFull:
            await asyncio.sleep(0.001)


async def p2p(layer, count):
    async def consume():
        for _ in range(count):
            await layer.receive("bench.p2p")

    consumer = asyncio.ensure_future(consume())
    start = time.perf_counter()
    for i in range(count):
        await send_waiting(layer, "bench.p2p", message(i))
    await consumer
    return {"msgs_per_s": count / (time.perf_counter() - start)}


async def fanout(layer, count):
    members = [await layer.new_channel("member") for _ in range(MEMBERS)]
    for m in members:
        await layer.group_add("bench.room", m)
    start = time.perf_counter()
    for g in range(count):
        await layer.group_send("bench.room", message(g))
        for m in members:
            await layer.receive(m)
    return {"deliveries_per_s": count * MEMBERS / (time.perf_counter() - start)}


async def rpc(layer, count):
    async def serve():
        while True:
            req = await layer.receive("svc.request")
            if "reply_channel" not in req:
                return
            await layer.send(req["reply_channel"], {"type": "svc.reply", "n": req["n"]})

    server = asyncio.ensure_future(serve())
    times = []
    for i in range(count + 100):
        start = time.perf_counter()
        reply_to = await layer.new_channel("reply")
        msg = message(i)
        msg["reply_channel"] = reply_to
        await layer.send("svc.request", msg)
        await layer.receive(reply_to)
        if i >= 100:
            times.append((time.perf_counter() - start) * 1e6)
    await layer.send("svc.request", {"type": "stop"})
    await server
    times.sort()
    return {
        "p50_us": times[len(times) // 2],
        "p99_us": times[min(len(times) - 1, int(len(times) * 0.99))],
    }


async def main():
    scenario, url, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    layer = RedisChannelLayer(
        hosts=[url], prefix=f"py{scenario}{time.time_ns()}", capacity=1_000_000
    )
    result = await {"p2p": p2p, "fanout": fanout, "rpc": rpc}[scenario](layer, count)
    await layer.flush()
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main())
