"""fixedip: a fixed, allowlistable egress IP for code that has none.

This module imports nothing, so `import fixedip.client` stays standard-library only.
"""

__version__ = "0.1.0"
