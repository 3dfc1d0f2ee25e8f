"""`python -m robot_bridge.protos [--force]`: (re)builds the gRPC stubs into `_generated/` and prints the path."""

import sys

from robot_bridge.protos import build_stubs

print(build_stubs.build(force="--force" in sys.argv[1:]))
