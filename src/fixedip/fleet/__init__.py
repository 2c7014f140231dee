"""Fleet: several gateways sharing quarantine, limits, canaries and floating IPs through Redis."""
