"""fmnist-serve client: `python client/predict.py --help`.

Modules: ``predict`` (the command line), ``inputs`` (files and folders -> images), ``address``
(--server -> what grpc dials), ``channel`` (the channel: TLS, token, trace context, retries),
``balancing`` (the settings for several replicas: round_robin, health checking, a retry policy,
keepalive; the fleet harness uses them too), ``classify`` (images -> requests within the
server's limits -> answers), ``models`` (the served models: listing, the default choice),
``output`` (text for people), ``rpc_errors`` (a failed call in one line). Only ``channel``,
``classify`` and ``models`` import grpc and the generated stubs (and ``retries``, which
``channel`` uses).
"""


class ClientError(Exception):
    """A problem to report in one line (exit_code 1: server/RPC, 2: arguments/files)."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code
