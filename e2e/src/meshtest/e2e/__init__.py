"""The e2e suite's helpers: where the charts and tools are, which cluster provider runs the suite (``kind`` or
``local``), installing the mesh with ``helm install ambient`` as a user would, test apps, traffic, packet
captures and the failure dump (logs, ztunnel ``/config_dump``, Events)."""
