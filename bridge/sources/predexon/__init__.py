"""Predexon WebSocket: one connection manager per process, a source per subscription."""
