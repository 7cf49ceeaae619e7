"""Waypoints in istiod: deploy them from Gateways and build their L7 config (issue #9).

* :mod:`istiod.waypoint.deployment` — GatewayClass ``istio-waypoint``; Gateway → ServiceAccount, Deployment,
  Service; Gateway/GatewayClass status (pure functions).
* :mod:`istiod.waypoint.l7` — objects → one ``ambient.waypoint.v1.WaypointConfig`` per waypoint plus status
  updates (pure), with :mod:`~istiod.waypoint.routes` (HTTPRoute, GRPCRoute, TCPRoute),
  :mod:`~istiod.waypoint.virtualservice`, :mod:`~istiod.waypoint.clusters` (endpoints + DestinationRule),
  :mod:`~istiod.waypoint.policy` (AuthorizationPolicy, RequestAuthentication) and
  :mod:`~istiod.waypoint.meshconfig` (CUSTOM providers).
* :mod:`istiod.waypoint.publish` — registers the type URL with the xDS resource cache and publishes configs.
* :mod:`istiod.waypoint.controller` — the controller: informer events in, Kubernetes writes and pushes out.
"""
