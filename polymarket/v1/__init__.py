"""Python modules generated from `proto/polymarket/v1` (see tools/gen_proto.py)."""
