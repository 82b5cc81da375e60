//go:build tools

// Wrapper module that pins Knative's queue-proxy (knative.dev/serving/cmd/queue) for the
// sidecar's overhead benchmark: `go build knative.dev/serving/cmd/queue` from this folder builds
// it with exactly these dependency versions. A main package cannot be imported, so this file is
// only seen by `go mod tidy` (the usual tools.go pattern).
package tools

import _ "knative.dev/serving/cmd/queue"
