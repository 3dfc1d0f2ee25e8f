"""The bridge <-> learner contract, imported by both sides and importing neither: the episode schema a robot
records (`schema`), the gRPC API (`protos`), and its codec and metadata keys (`wire`).

Why its own package: a robot installs the bridge and this contract; the learner installs the library and
this contract; neither has to import the other to agree on what an episode is on the wire.
"""
