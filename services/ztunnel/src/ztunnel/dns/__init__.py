"""The per-pod DNS proxy (behaviour.md §8): answers A/AAAA for mesh services, forwards everything else."""
