"""Fuzzing, fail-closed oracle and load helpers shared by tests/test_fuzz*, test_oracle*, test_load* and run_long."""
