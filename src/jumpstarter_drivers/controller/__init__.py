"""The lab controller: exporters register with it, clients lease boards from it.

It speaks ``jumpstarter.v1.ControllerService``, ``jumpstarter.v1.RouterService`` and
``jumpstarter.client.v1.ClientService`` (jumpstarter-protocol 0.9.0) and keeps all of its state
in etcd, so several replicas can serve one lab. Modules: :mod:`.store` (etcd, in the lab's
terms), :mod:`.selector` (label selectors), :mod:`.tokens`, :mod:`.scheduler`, :mod:`.services`,
:mod:`.router`, :mod:`.server`; :mod:`.exporter` and :mod:`.client` are the two other ends.
"""

#: Kinds of callers, as the ``jumpstarter-kind`` metadata spells them, and the default namespace.
CLIENT = "Client"
EXPORTER = "Exporter"
DEFAULT_NAMESPACE = "default"
