"""What a client channel of this process knows of its servers right now, from gRPC's channelz:
each subchannel's address and connectivity state (READY, IDLE, CONNECTING, TRANSIENT_FAILURE).
grpcio reads channelz in-process only through grpc._cython.cygrpc (the grpcio-channelz package
serves the same data over gRPC); a test that uses it sees what the load balancer sees."""

from __future__ import annotations

import json

from grpc._cython import cygrpc


def subchannel_states(target: str) -> dict[str, str]:
    """{"ipv4:10.203.0.12:50051": "READY", ...} for the subchannels of this process's channels
    to `target` (as given to grpc.insecure_channel)."""
    return {data["target"]: data["state"]["state"] for data in _subchannels(target)}


def _top_channels() -> list[dict]:
    channels, start = [], 0
    while True:
        page = json.loads(cygrpc.channelz_get_top_channels(start))
        channels += page.get("channel", [])
        if page.get("end", True) or not page.get("channel"):
            return channels
        start = int(page["channel"][-1]["ref"]["channelId"]) + 1


def subchannel_events(target: str) -> list[str]:
    """The trace of every subchannel of this process's channels to `target` (state changes:
    "Subchannel connectivity state changed to READY", ...), oldest first."""
    return [event["description"] for data in _subchannels(target)
            for event in data.get("trace", {}).get("events", [])]


def keepalives_sent(target: str) -> int:
    """Keepalive pings sent on the open connections of this process's channels to `target`."""
    sent = 0
    for channel in _top_channels():
        if channel["data"].get("target") != target:
            continue
        for ref in channel.get("subchannelRef", []):
            subchannel = json.loads(cygrpc.channelz_get_subchannel(int(ref["subchannelId"])))
            for socket_ref in subchannel["subchannel"].get("socketRef", []):
                socket = json.loads(cygrpc.channelz_get_socket(int(socket_ref["socketId"])))
                sent += int(socket["socket"]["data"].get("keepAlivesSent", 0))
    return sent


def failed_attempts(target: str) -> dict[str, int]:
    """Per server, the tries that failed on the newest of this process's channels to `target`
    (a subchannel counts tries, its channel calls: a failed try that the call survived was
    retried on another)."""
    channels = [c for c in _top_channels() if c["data"].get("target") == target]
    if not channels:
        return {}
    newest = max(channels, key=lambda c: int(c["ref"]["channelId"]))
    return {data["target"]: int(data.get("callsFailed", 0)) for data in _subchannels_of(newest)}


def _subchannels(target: str) -> list[dict]:
    return [data for channel in _top_channels() if channel["data"].get("target") == target
            for data in _subchannels_of(channel)]


def _subchannels_of(channel: dict) -> list[dict]:
    return [json.loads(cygrpc.channelz_get_subchannel(int(ref["subchannelId"])))
            ["subchannel"]["data"] for ref in channel.get("subchannelRef", [])]
