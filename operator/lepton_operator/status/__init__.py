"""Pure status computation: spec and observed children in, status and conditions out.

No kopf, no kubernetes client, no clock (callers pass ``now``): import-linter
forbids the first two, and the handlers in ``controllers`` only call these
functions and patch what they return.
"""
