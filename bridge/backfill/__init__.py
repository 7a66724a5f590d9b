"""Filling gaps from the upstreams' REST history (see `docs/design.md`, section 4)."""
