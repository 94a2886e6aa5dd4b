"""A client that pings every second (client/balancing.py: a dead link is found within 2 s)
keeps its connection while idle: the server takes a ping every half second without counting a
strike, where at 10 s it answered the third idle ping with GOAWAY ENHANCE_YOUR_CALM
"too_many_pings" and the client reconnected with its keepalive doubled. The client's health
Watch keeps a call open, so it pings while no Classify runs. Read from the client's channelz."""

from __future__ import annotations

import grpc
from fmnist.v1 import classifier_pb2_grpc as pb_grpc

from client.balancing import Balancing, channel_options, target
from harness.channelz import keepalives_sent, subchannel_events
from harness.load import raw_request
from harness.wait import until
from server.app import create_server
from tests.serving_fixtures import models_dir  # noqa: F401 - fixture


def test_an_idle_client_pinging_every_second_keeps_its_connection(models_dir):  # noqa: F811
    server, port = create_server(models_dir, port=0, device="cpu")
    server.start()
    to = target([f"127.0.0.1:{port}"])
    options = channel_options(Balancing(keepalive_s=1.0)) + [("grpc.use_local_subchannel_pool", 1)]
    try:
        with grpc.insecure_channel(to, options=options) as channel:
            assert pb_grpc.ClassifierStub(channel).Classify(raw_request(), timeout=30).model
            until(lambda: keepalives_sent(to) >= 5 or len(connected(to)) > 1, 30,
                  "5 keepalive pings on an idle connection")
            assert len(connected(to)) == 1, subchannel_events(to)
            assert keepalives_sent(to) >= 5
    finally:
        server.stop(0)


def connected(to: str) -> list[str]:
    return [e for e in subchannel_events(to) if e.endswith("changed to READY")]
