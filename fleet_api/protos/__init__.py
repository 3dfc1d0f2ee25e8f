"""The bridge <-> learner gRPC API: `lwd_fleet.proto` (package lwd.fleet.v1) and the standard health service.

Importing this package builds the stubs if they are missing or stale (see `build_stubs.py`) and exposes:
  fleet_pb2, fleet_pb2_grpc    messages and Fleet service stubs/servicer base
The standard health service (grpc.health.v1) is grpcio-health-checking's `grpc_health.v1`, imported as is.
"""

from __future__ import annotations

import importlib

from fleet_api.protos import build_stubs

build_stubs.build()

fleet_pb2 = importlib.import_module("fleet_api.protos._generated.lwd_fleet_pb2")
fleet_pb2_grpc = importlib.import_module("fleet_api.protos._generated.lwd_fleet_pb2_grpc")

FLEET_SERVICE_NAME = fleet_pb2.DESCRIPTOR.services_by_name["Fleet"].full_name  # "lwd.fleet.v1.Fleet"

__all__ = [
    "FLEET_SERVICE_NAME",
    "fleet_pb2",
    "fleet_pb2_grpc",
]
