//go:build tools

// Package kube pins the Kubernetes API server, kubectl and etcd that `make test-k8s` builds from the Go module
// proxy, so `go build` resolves their exact versions from this module's go.mod/go.sum.
package kube

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
