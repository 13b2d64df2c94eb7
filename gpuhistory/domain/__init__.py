"""Domain types and pure policy: readings, states, thresholds, classification. No I/O."""
