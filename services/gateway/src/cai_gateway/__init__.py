"""cai_gateway."""
