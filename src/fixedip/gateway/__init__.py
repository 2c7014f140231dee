"""fixedip.gateway."""
