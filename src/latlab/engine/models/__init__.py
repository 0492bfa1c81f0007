"""Model implementations the engine can run (Llama family)."""
