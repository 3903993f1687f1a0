"""Listeners: the client-URL multiplexer (gRPC and HTTP/1.1 on one port) and the HTTP endpoints."""
