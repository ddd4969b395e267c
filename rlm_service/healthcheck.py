"""Container health probe: ``python -m rlm_service.healthcheck``.

Calls ``grpc.health.v1.Health/Check`` on the local server and exits 0 only
when it answers SERVING, 1 otherwise. Docker's HEALTHCHECK runs it; Cloud Run
uses its own built-in gRPC probe against the same service instead.

Kept free of the service's heavy imports so each probe starts quickly.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check(address: str, service: str = "", timeout: float = 3.0) -> tuple[bool, str]:
    """``(serving, status name or error)`` for one Check call."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            return False, code.name if code is not None else str(exc)
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, str(status)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--address",
        default=None,
        help="host:port of the gRPC server (default: localhost:$PORT, PORT defaulting to 8080)",
    )
    parser.add_argument("--service", default="", help='health service name (default: "" = server)')
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds (default: 3)")
    args = parser.parse_args(argv)
    address = args.address or f"localhost:{os.environ.get('PORT', '8080')}"
    serving, status = check(address, args.service, args.timeout)
    print(f"{address} {args.service or '<server>'}: {status}", file=sys.stderr)
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main())
