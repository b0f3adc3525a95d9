"""The chat consumer of the Channels tutorial, in substance.

Each connection joins the group chat_<room> on its own channel; a line a client sends,
{"message": ...}, goes to the whole group as {"type": "chat.message", "message": ...}, and
chat_message hands each such event to the client as {"message": ...}. The Rust gateway
(examples/chat/main.rs) speaks exactly this, so the two share rooms.
"""
import json

from channels.generic.websocket import AsyncWebsocketConsumer


class ChatConsumer(AsyncWebsocketConsumer):
    async def connect(self):
        room = self.scope["url_route"]["kwargs"]["room_name"]
        self.room_group_name = f"chat_{room}"
        await self.channel_layer.group_add(self.room_group_name, self.channel_name)
        await self.accept()

    async def disconnect(self, close_code):
        await self.channel_layer.group_discard(self.room_group_name, self.channel_name)

    async def receive(self, text_data=None, bytes_data=None):
        try:
            line = json.loads(text_data or "")["message"]
        except (ValueError, KeyError, TypeError):
            await self.send(text_data=json.dumps({"error": 'expected {"message": <text>}'}))
            return
        await self.channel_layer.group_send(
            self.room_group_name, {"type": "chat.message", "message": line}
        )

    async def chat_message(self, event):
        await self.send(text_data=json.dumps({"message": event["message"]}))
