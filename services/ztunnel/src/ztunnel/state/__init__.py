"""ztunnel's view of the mesh: immutable records in stores with explicit indexes, changed by one updater."""
