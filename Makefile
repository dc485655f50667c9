# One entry point for people and CI. Every target sets up what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup binaries node-assets lint test chaos demo demo-node bench bench-scale manifests package clean

# The runtime dependencies are the image's: requirements.lock, hashes checked. The test tools are not in the
# lock; they are installed beside it with the lock's pins as constraints, so that none of them moves a runtime
# dependency (a conflict fails here instead).
$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --require-hashes -r requirements.lock
	sed -n 's/^\([A-Za-z0-9_.-]*==[^ ]*\).*/\1/p' requirements.lock > $(VENV)/constraints.txt
	$(BIN)/pip install --quiet -c $(VENV)/constraints.txt -e '.[test]'
	$(BIN)/pip check
	touch $(STAMP)

## setup: a virtualenv with the project, its runtime dependencies as locked, and its test tools
setup: $(STAMP)

## binaries: etcd, kube-apiserver, kubectl, helm, promtool for the tests (cached in ~/.cache/nodeipam; ~10 min cold, promtool up to 20 more)
binaries: $(STAMP)
	$(BIN)/python -m localcluster.binaries etcd kube-apiserver kubectl helm promtool

## node-assets: what the real-Node suite adds: kube-scheduler, kubelet, flanneld, flannel's CNI plugin, the sandbox image, the image base (cold: ~30 min on 2 cores)
node-assets: $(STAMP)
	$(BIN)/python -m e2e.node.assets

## lint: ruff, mypy (strict), import-linter layering contracts
lint: $(STAMP)
	$(BIN)/ruff check controller localcluster tests e2e bench
	$(BIN)/ruff format --check controller localcluster tests e2e bench
	$(BIN)/mypy
	$(BIN)/lint-imports

## test: set up, build or find the control plane, lint, run every test against a real API server
test: binaries lint
	$(BIN)/pytest -rs

## chaos: the chaos suite at full size (2,000-Node bursts, 5,000 create/delete cycles, 200 stateful steps); see RELIABILITY.md
chaos: binaries
	NODEIPAM_CHAOS=full $(BIN)/pytest -rs e2e/chaos

## demo: start a local control plane, run the controller, register Nodes, show their podCIDRs (Ctrl-C stops)
demo: $(STAMP)
	$(BIN)/python -m localcluster.demo

## demo-node: as root, a real Node (containerd, kubelet, flannel) and the chart's Pod from the built image; ends with a pod's IP in its Node's podCIDR
demo-node: $(STAMP)
	$(BIN)/python -m e2e.node.demo

## bench: side-by-side figures against kube-controller-manager on the same API server
bench: binaries
	$(BIN)/python -m localcluster.binaries kube-controller-manager
	$(BIN)/python -m bench

## bench-scale: bursts of 2,000 to 100,000 Nodes and restarts at 60,000 and 100,000 (about an hour here), then the plot
bench-scale: binaries
	$(BIN)/pip install --quiet -c $(VENV)/constraints.txt -e '.[bench]'
	$(BIN)/python -m localcluster.binaries kube-controller-manager
	$(BIN)/python -m bench --profile scale --json bench/results/scale.json
	$(BIN)/python -m bench.plot bench/results/scale.json -o docs/bench-scale.png --memory-limit-mb 814 --memory-limit-label "chart limit, sizing.nodes=100000"

## manifests: re-render manifests/nodeipam.yaml from the Helm chart
manifests: binaries
	PYTHON=$(BIN)/python bash manifests/render.sh

## package: the chart as dist/nodeipam-<version>.tgz, its version and appVersion the package's (pyproject.toml)
VERSION = $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
package: binaries
	"$$($(BIN)/python -c 'from localcluster.binaries import ensure_binaries; print(ensure_binaries(("helm",))["helm"])')" \
		package manifests/charts/nodeipam -d dist --version $(VERSION) --app-version $(VERSION)

clean:
	rm -rf $(VENV) dist .pytest_cache .mypy_cache .ruff_cache .hypothesis
