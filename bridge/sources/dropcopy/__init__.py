"""The exchange's DropCopy gRPC stream: one source per configured stream."""
