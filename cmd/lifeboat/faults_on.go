//go:build faultinject

package main

import (
	"log/slog"
	"os"
	"strconv"

	"lifeboat/internal/faultinject"
	"lifeboat/pipeline"
)

// installFaults reads the fault-injection variables of this test build
// (go build -tags faultinject, as the e2e tests build lifeboat); the
// released binary has none (faults_off.go).
//
//	LIFEBOAT_FAULT_CORRUPT_SEGMENTS=N  flip a byte in the first N segments received
func installFaults(srv *pipeline.Server) error {
	const env = "LIFEBOAT_FAULT_CORRUPT_SEGMENTS"
	v := os.Getenv(env)
	if v == "" {
		return nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return usageError("%s=%q: want a count", env, v)
	}
	slog.Warn("fault injection for tests: the first segments received will be corrupted", "count", n)
	srv.Middleware = faultinject.CorruptSegments(n)
	return nil
}
