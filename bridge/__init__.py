"""polybridge: Polymarket trading data (exchange DropCopy, Predexon WebSocket) into Kafka."""

__version__ = "0.1.0"
