"""A local Kubernetes control plane for pgshard's e2e tests (test infrastructure, not shipped).

``cluster`` starts/stops etcd, kube-apiserver, kube-controller-manager, kube-scheduler
(all built by ``scripts/kube-build``) and the process-based node agent in ``agent``.
``scripts/kube-up``/``kube-down`` and the e2e pytest fixture both use ``cluster``.
"""
