"""REST clients of the upstreams' history APIs (gap filling): see `http`, `exchange`, `predexon`."""
