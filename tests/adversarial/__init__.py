"""Grammar-based adversarial testing of markd's fail-closed rule (issue 12): generator, oracle, drivers."""
