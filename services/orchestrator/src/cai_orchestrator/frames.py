"""`messages` events stored once per message, rebuilt byte for byte when the log is read.

A streamed token's event is `[<AIMessageChunk>, <metadata>]`: a few bytes of text in ~1.1 KB, of
which ~850 are the same on every token of the message (its id, and LangGraph's metadata of the
model call: run, thread, assistant, step, node, checkpoint namespace, model, versions). The log
keeps what repeats once per message:

* a **head** entry (event `h`) is a message's first token event: its content, its message id and
  its metadata (`<content>\\n<id>\\n<metadata>`, all JSON, so none holds a raw newline);
* a **token** entry (event `t`) is one that follows: its content only;
* a **message** entry (event `m`) is any other `messages` event whose metadata is its head's (the
  finish and usage chunks of the same model call): the message JSON only.

Each `t` and `m` entry belongs to the nearest head before it in the log. One writer writes one
attempt's entries in order and starts every attempt with a head of its own, so that head is the
one it meant. `LogReader` turns entries back into `messages` events whose data is exactly what
the writer would have stored in full: clients see the same bytes, under the same event ids.
"""

from __future__ import annotations

import logging
from bisect import bisect_left, insort

import orjson

from cai_common.runs import METADATA, RETRY

log = logging.getLogger(__name__)

MESSAGES = b"messages"
HEAD = b"h"
TOKEN = b"t"
MESSAGE = b"m"
COMPACT_EVENTS = frozenset({HEAD, TOKEN, MESSAGE})
# Where the search for a head may stop: an attempt's first events (its heads come after them).
ATTEMPT_STARTS = frozenset({METADATA.encode(), RETRY.encode()})

_CHUNK_START = b'[{"content":'
_CHUNK_ID = (
    b',"additional_kwargs":{},"response_metadata":{},"type":"AIMessageChunk","name":null,"id":'
)
_CHUNK_END = (
    b',"tool_calls":[],"invalid_tool_calls":[],"usage_metadata":null,"tool_call_chunks":[]},'
)


def token_frame(content: str, message_id: str, meta: bytes) -> bytes:
    """The full `messages` event of content-only deltas of an AI message (LangChain's
    AIMessageChunk as LangGraph streams it, with the metadata of its model call)."""
    return chunk_frame(orjson.dumps(content), orjson.dumps(message_id), meta)


def chunk_frame(content: bytes, message_id: bytes, meta: bytes) -> bytes:
    """`token_frame` from its parts already in JSON."""
    return _CHUNK_START + content + _CHUNK_ID + message_id + _CHUNK_END + meta + b"]"


def message_frame(message: bytes, meta: bytes) -> bytes:
    """A `messages` event: `[<message>, <metadata>]`, both JSON."""
    return b"[" + message + b"," + meta + b"]"


class Head:
    """What a head entry gives the entries after it."""

    __slots__ = ("message_id", "meta", "tail")

    def __init__(self, message_id: bytes, meta: bytes) -> None:
        self.message_id = message_id
        self.meta = meta
        self.tail = _CHUNK_ID + message_id + _CHUNK_END + meta + b"]"  # after a token's content


def head_data(content: bytes, message_id: bytes, meta: bytes) -> bytes:
    """The stored data of a head entry."""
    return content + b"\n" + message_id + b"\n" + meta


def parse_head(data: bytes) -> tuple[bytes, Head]:
    """A head entry's content and what it gives the entries after it."""
    content, message_id, meta = data.split(b"\n", 2)
    return content, Head(message_id, meta)


class TokenEncoder:
    """One attempt's side of the format: whether each `messages` event can go without its head.

    Used by one `EventWriter`, which calls it in the order its entries reach the log. With
    `compact` off every event is stored in full (the first rollout of readers that understand
    the format, while replicas that do not may still read the logs).
    """

    def __init__(self, compact: bool = True) -> None:
        self.compact = compact
        self._message_id = b""
        self._meta: bytes | None = None  # of the last head written; None before the first

    def tokens(self, content: str, message_id: str, meta: bytes) -> tuple[bytes, bytes]:
        """(event, data) of content-only deltas of an AI message."""
        text = orjson.dumps(content)
        mid = orjson.dumps(message_id)
        if not self.compact:
            return MESSAGES, chunk_frame(text, mid, meta)
        if mid == self._message_id and meta == self._meta:
            return TOKEN, text
        self._message_id, self._meta = mid, meta
        return HEAD, head_data(text, mid, meta)

    def message(self, message: bytes, meta: bytes) -> tuple[bytes, bytes]:
        """(event, data) of any other `messages` event: compact when its metadata is the
        last head's (the same model call's finish and usage chunks)."""
        if self.compact and meta == self._meta:
            return MESSAGE, message
        return MESSAGES, message_frame(message, meta)


class LogReader:
    """Rebuilds `messages` events from one log's entries, read in order from any position.

    Knows the heads of the entries it has read, and those `find_head` looked up for a read that
    starts mid-log; several readers of one log at different positions share it.
    """

    def __init__(self) -> None:
        self._ids: list[tuple[int, int]] = []  # of known heads, ascending
        self._heads: dict[tuple[int, int], Head] = {}

    def add_head(self, entry_id: tuple[int, int], head: Head) -> None:
        """Know a head (found before a resumed read's position)."""
        if entry_id not in self._heads:
            self._heads[entry_id] = head
            insort(self._ids, entry_id)

    def head_before(self, entry_id: tuple[int, int]) -> Head | None:
        """The nearest known head before an entry."""
        i = bisect_left(self._ids, entry_id)
        return self._heads[self._ids[i - 1]] if i else None

    def decode(
        self, entry_id: tuple[int, int], event: bytes, data: bytes
    ) -> tuple[bytes, bytes] | None:
        """(event, data) as clients see them (entries other than h/t/m as they are); None for
        an entry whose head is unknown."""
        if event not in COMPACT_EVENTS:
            return event, data
        if event == HEAD:
            content, head = parse_head(data)
            self.add_head(entry_id, head)
            return MESSAGES, _CHUNK_START + content + head.tail
        found = self.head_before(entry_id)
        if found is None:  # not written by any writer of this format: nothing to rebuild from
            log.warning("a token event without its message's head was dropped")
            return None
        if event == TOKEN:
            return MESSAGES, _CHUNK_START + data + found.tail
        return MESSAGES, message_frame(data, found.meta)
