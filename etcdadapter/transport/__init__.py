"""Bytes on the wire: one port sniffed into HTTP/2 (gRPC, and JSON over h2) or HTTP/1.1."""
