"""`fixedip check` (how the egress looks to the internet) and flow-log analysis."""
