"""fixedip.identity."""
