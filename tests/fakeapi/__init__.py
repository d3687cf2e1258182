"""A fake Kubernetes API server, kubelet and runner on virtual time, for invariant tests.

Faked at the `Kube` client interface, not over HTTP: `FakeKube` is the operator's own `Kube`
with its transport (`request`, `watch`, attach's `ws_connect`) answered in memory by `FakeApi`.
That keeps the real client's path, patch and delete-option building under test, lets faults
target one replica (a partition) and, above all, lets everything run on one event loop with
virtual time (vtime): no sockets means the loop can jump to its next timer whenever it would
wait, so leases, backoffs and deadlines of minutes run in milliseconds. The operator's rooms
(claim, pool, preattach, deliver, collect, lifecycle, controller, lease) run unmodified; they
read time only through `codeexec.clock`, which the virtual loop drives.

server.py (store, versions, conflicts, patches, finalizers, watch, faults) - client.py
(FakeKube) - kubelet.py (pods, attach, the one-request runner, the ground-truth start log) -
operator.py (a replica wired like handlers.py) - vtime.py (the loop and clock).
"""
