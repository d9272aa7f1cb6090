# Container images and Kubernetes deployment; included by GNUmakefile.
#
#   make docker-build [REGISTRY=…] [TAG=…]  images from images/*/Dockerfile
#   make docker-push  [REGISTRY=…] [TAG=…]  build, then push both images
#   make k8s-deploy   [REGISTRY=…] [TAG=…]  kubectl apply -k manifests
#   make k8s-undeploy                       kubectl delete -k manifests
#
# The defaults are the image names in manifests/: with them k8s-deploy is
# exactly `kubectl apply -k manifests`; with others, scripts/deploy.sh sets
# the images through a kustomize overlay.

REGISTRY ?= ghcr.io/ebpf-monitor
TAG      ?= latest
DOCKER   ?= docker
KUBECTL  ?= kubectl
VERSION  ?= 0.0.0-dev

AGENT_IMAGE      := $(REGISTRY)/ebpf-monitor:$(TAG)
AGGREGATOR_IMAGE := $(REGISTRY)/ebpf-aggregator:$(TAG)

.PHONY: docker-build docker-push k8s-deploy k8s-undeploy

docker-build:
	$(DOCKER) build -f images/agent/Dockerfile --build-arg VERSION=$(VERSION) -t $(AGENT_IMAGE) .
	$(DOCKER) build -f images/aggregator/Dockerfile --build-arg VERSION=$(VERSION) -t $(AGGREGATOR_IMAGE) .

docker-push: docker-build
	$(DOCKER) push $(AGENT_IMAGE)
	$(DOCKER) push $(AGGREGATOR_IMAGE)

k8s-deploy:
	KUBECTL=$(KUBECTL) scripts/deploy.sh deploy --registry $(REGISTRY) --tag $(TAG)

k8s-undeploy:
	KUBECTL=$(KUBECTL) scripts/deploy.sh undeploy
