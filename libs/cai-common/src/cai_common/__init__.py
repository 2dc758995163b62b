"""Shared helpers for Cai services: logging, settings, gRPC server runner."""
