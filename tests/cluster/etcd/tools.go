//go:build tools

// Package tools pins the etcd server that the test control plane runs; nothing here is compiled into the project.
package tools

import _ "go.etcd.io/etcd/server/v3"
