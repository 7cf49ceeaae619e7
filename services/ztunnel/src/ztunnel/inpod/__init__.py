"""In-pod mode: the ZDS client and the per-pod proxy instances (listeners inside each pod's netns)."""
