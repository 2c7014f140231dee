"""The webhook relay: receive on the static IP, spool durably, deliver at least once."""
