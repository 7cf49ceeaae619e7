"""The ``istio-cni`` CNI plugin (CNI spec 1.0), chained last after the node's primary plugin.

In ambient mode it configures nothing itself: on ADD it decides whether the pod belongs in the mesh and,
if so, asks the node agent (HTTP over the unix socket ``<cni_agent_run_dir>/pluginevent.sock``) to enrol it
before the runtime starts any container. It always returns ``prevResult`` unchanged. Run as
``python -m istio_cni.plugin`` (the node agent installs a launcher called ``istio-cni`` into the CNI bin dir
that does exactly that).

Only the standard library and :mod:`istio_cni.enrolment` are imported here: the runtime starts the plugin once
per sandbox, so start-up time matters.
"""
