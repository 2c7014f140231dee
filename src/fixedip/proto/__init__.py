"""Sans-IO protocol code: parsers and state machines that take bytes and return events."""
