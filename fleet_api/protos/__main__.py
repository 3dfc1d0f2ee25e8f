"""`python -m fleet_api.protos [--force]`: (re)builds the gRPC stubs into `_generated/` and prints the path."""

import sys

from fleet_api.protos import build_stubs

print(build_stubs.build(force="--force" in sys.argv[1:]))
