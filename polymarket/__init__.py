"""Generated Polymarket exchange wire contract (`polymarket.v1`)."""
