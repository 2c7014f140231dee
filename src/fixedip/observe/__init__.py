"""fixedip.observe."""
