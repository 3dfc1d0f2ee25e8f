"""The bridge <-> learner gRPC API: `lwd_fleet.proto` (package lwd.fleet.v1) and the standard health service.

Importing this package builds the stubs if they are missing or stale (see `build_stubs.py`) and exposes:
  fleet_pb2, fleet_pb2_grpc    messages and Fleet service stubs/servicer base
  health_pb2, health_pb2_grpc  grpc.health.v1 (from grpcio-health-checking when installed, else ours)

Why the health fallback: the standard messages may be registered only once per process; if the official
`grpc_health` package is present we use it so both can be imported side by side.
"""

from __future__ import annotations

import importlib

from robot_bridge.protos import build_stubs

build_stubs.build()

fleet_pb2 = importlib.import_module("robot_bridge.protos._generated.lwd_fleet_pb2")
fleet_pb2_grpc = importlib.import_module("robot_bridge.protos._generated.lwd_fleet_pb2_grpc")

try:  # pragma: no cover - depends on the environment
    from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-not-found]
except ImportError:
    health_pb2 = importlib.import_module("robot_bridge.protos._generated.health_pb2")
    health_pb2_grpc = importlib.import_module("robot_bridge.protos._generated.health_pb2_grpc")

FLEET_SERVICE_NAME = fleet_pb2.DESCRIPTOR.services_by_name["Fleet"].full_name  # "lwd.fleet.v1.Fleet"
HEALTH_SERVICE_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name  # "grpc.health.v1.Health"

__all__ = [
    "FLEET_SERVICE_NAME",
    "HEALTH_SERVICE_NAME",
    "fleet_pb2",
    "fleet_pb2_grpc",
    "health_pb2",
    "health_pb2_grpc",
]
