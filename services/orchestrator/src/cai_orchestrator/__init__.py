"""cai_orchestrator."""
