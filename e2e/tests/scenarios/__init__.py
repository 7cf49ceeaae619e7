"""The e2e scenarios: a package, so that the package-scoped cluster and mesh fixtures end with it."""
