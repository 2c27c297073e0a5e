"""The stage interface: one coroutine that owns its loop over the inbox.

A stage reads items until the inbox ends and sends what it produces to the outbox;
markers it does not consume are passed on so that later stages (and metrics) see them.
Owning the loop lets a stage batch across streams or hold frames back for a lookahead.
The pipeline closes the outbox when ``run`` returns.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from streamer.channels import Channel


@runtime_checkable
class Stage(Protocol):
    """A named processing step between two channels."""

    name: str

    async def run(self, inbox: Channel[Any], outbox: Channel[Any]) -> None: ...
