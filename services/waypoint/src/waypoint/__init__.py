"""waypoint: the optional L7 proxy (HTTP routing, splitting, L7 authorization, request telemetry)."""
