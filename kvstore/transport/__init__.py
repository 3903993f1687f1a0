"""Listeners: the client-URL multiplexer (gRPC and HTTP/1.1 on one port), the HTTP endpoints, and the
settings of gRPC's core they run with."""
